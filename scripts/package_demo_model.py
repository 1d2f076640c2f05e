"""Package the bundled default model from a training run.

1. Re-save the run's checkpoint as the weights-only checkpoint ``models/mni-wm-demo.pt`` (model
   config, preprocessing, weights, provenance with the run's facts and the label name), so the
   model can be re-exported without retraining when a schema changes.
2. Export it with ``ossnet_export`` (verified against PyTorch) into
   ``ossnet_deploy/models/mni-wm-demo/``.
3. Add the model card (``models/mni-wm-demo.card.md``) and the MNI notice to that folder.

Usage::

    python scripts/package_demo_model.py runs/demo-c/best.pt [--overwrite]

The card's numbers come from ``scripts/evaluate_demo_model.py``, which writes
``ossnet_deploy/models/mni-wm-demo/evaluation.json`` afterwards.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ossnet_export.export_onnx import ExportOptions, export_checkpoint
from ossnet_train.checkpoint import load_model, save_checkpoint
from ossnet_train.demo_cohort import MNI_NOTICE

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "mni-wm-demo.pt"
CARD = ROOT / "models" / "mni-wm-demo.card.md"
MODEL_DIR = ROOT / "ossnet_deploy" / "models" / "mni-wm-demo"
LABELS = {"1": "white_matter"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_checkpoint", type=Path, help="e.g. runs/demo-c/best.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing packaged model")
    args = parser.parse_args()

    model, stored = load_model(args.run_checkpoint)
    training = dict(stored.provenance.get("training") or {})
    training["source_checkpoint"] = args.run_checkpoint.name
    save_checkpoint(CHECKPOINT, model, stored.preprocess, training=training, labels=LABELS, overwrite=args.overwrite)
    result = export_checkpoint(CHECKPOINT, MODEL_DIR, options=ExportOptions(overwrite=args.overwrite))
    print(result)
    if CARD.is_file():
        shutil.copy(CARD, MODEL_DIR / "MODEL_CARD.md")
    (MODEL_DIR / "MNI_NOTICE.txt").write_text(
        "The training data of this model were generated from the MNI ICBM152 2009 template.\n\n" + MNI_NOTICE + "\n"
    )
    for path in sorted(MODEL_DIR.iterdir()):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
