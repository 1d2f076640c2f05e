"""Package the bundled default model from a training run.

1. Re-save the run's checkpoint as the weights-only checkpoint ``models/mni-wm-demo.pt`` (model
   config, preprocessing, weights, provenance with the run's facts and the label name), so the
   model can be re-exported without retraining when a schema changes.
2. Export it with ``ossnet_export`` (verified against PyTorch) into
   ``ossnet_deploy/models/mni-wm-demo/``.
3. Add the MNI notice to that folder.

Usage::

    python scripts/package_demo_model.py runs/demo-c/best.pt [--overwrite]
        [--preprocess-override KEY=VALUE --preprocess-note TEXT]

``--preprocess-override`` (values as JSON) changes the preprocessing the packaged model declares,
e.g. ``bias_correction='"log_field"'`` for a model trained without it; ``--preprocess-note`` then
says why, in the checkpoint's provenance and the model card (required with an override).

Then ``scripts/evaluate_demo_model.py`` writes ``evaluation.json`` into the folder and
``scripts/write_model_card.py`` writes ``MODEL_CARD.md`` from it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ossnet_deploy.preprocess import PreprocessConfig
from ossnet_export.export_onnx import ExportOptions, export_checkpoint
from ossnet_train.checkpoint import load_model, save_checkpoint
from ossnet_train.demo_cohort import MNI_NOTICE

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "mni-wm-demo.pt"
MODEL_DIR = ROOT / "ossnet_deploy" / "models" / "mni-wm-demo"
LABELS = {"1": "white_matter"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_checkpoint", type=Path, help="e.g. runs/demo-c/best.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing packaged model")
    parser.add_argument("--checkpoint-out", type=Path, default=CHECKPOINT, help=f"default: {CHECKPOINT}")
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR, help=f"default: {MODEL_DIR}")
    parser.add_argument("--preprocess-override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a preprocessing field (VALUE as JSON), e.g. bias_correction='\"log_field\"'")
    parser.add_argument("--preprocess-note", default=None, help="why the preprocessing differs from the run's")
    args = parser.parse_args()

    model, stored = load_model(args.run_checkpoint)
    training = dict(stored.provenance.get("training") or {})
    training["source_checkpoint"] = args.run_checkpoint.name
    preprocess = stored.preprocess
    if args.preprocess_override:
        if not args.preprocess_note:
            parser.error("--preprocess-override needs --preprocess-note (why the model declares other preprocessing)")
        changes = {}
        for item in args.preprocess_override:
            key, _, value = item.partition("=")
            changes[key] = json.loads(value)
        preprocess = PreprocessConfig.from_dict({**preprocess, **changes}).to_dict()
        training["preprocess_overrides"] = changes
        training["preprocess_note"] = args.preprocess_note
    # The training domain (what the inputs looked like after normalisation) travels on, so the
    # packaged model warns on foreign inputs (docs/design.md, "Input and output checks").
    domain = stored.provenance.get("domain")
    save_checkpoint(args.checkpoint_out, model, preprocess, training=training, labels=LABELS, overwrite=args.overwrite,
                    domain=domain if isinstance(domain, dict) else None)
    result = export_checkpoint(args.checkpoint_out, args.model_dir, options=ExportOptions(overwrite=args.overwrite))
    print(result)
    (args.model_dir / "MNI_NOTICE.txt").write_text(
        "The training data of this model were generated from the MNI ICBM152 2009 template.\n\n" + MNI_NOTICE + "\n"
    )
    for path in sorted(args.model_dir.iterdir()):
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
