"""Write the default model's card (``MODEL_CARD.md``) from its evaluation JSON.

Every number in the card comes from the JSON that ``scripts/evaluate_demo_model.py`` wrote
(held-out scores, baselines, timing) and from the graphs' own metadata (sizes, hashes), so the
card cannot drift from the measurements.

Usage::

    python scripts/write_model_card.py ossnet_deploy/models/mni-wm-demo
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path
from typing import Any

from ossnet_deploy.onnx_metadata import read_graph_metadata
from ossnet_train.demo_cohort import MNI_NOTICE

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _foreground_text(pre: dict) -> str:
    """How the model's preprocessing finds the foreground, in words."""
    if pre.get("foreground", "threshold") == "tissue":
        return ("the tissue found from the image's own histogram, the same with a zero or a noisy "
                "background and any field of view")
    return f"voxels > {pre['foreground_threshold']}"


def _bias_text(pre: dict[str, Any], training: dict[str, Any] | None) -> str:
    """The card's words for the bias-field correction step, or "" when the model has none.

    Says so when the training run's own preprocessing (``evaluation.json``) did not correct.
    """
    if pre.get("bias_correction", "none") == "none":
        return ""
    text = (f"bias-field correction (`{pre['bias_correction']}`: `ossnet_deploy.bias_field`, "
            f"{pre['bias_grid_mm']:g} mm blocks, {pre['bias_sigma_mm']:g} mm smoothing, ")
    tolerance = float(pre.get("bias_tolerance", 0.0))
    text += (f"up to {pre['bias_iterations']} rounds, stopping once a round changes the log field by under "
             f"{tolerance:g} RMS" if tolerance > 0 else f"{pre['bias_iterations']} rounds")
    trained = (training or {}).get("preprocess")
    if trained is not None and trained.get("bias_correction", "none") == "none":
        text += ("; added when the model was packaged: its training run saw uncorrected images, see "
                 "docs/training.md")
    elif trained is not None and (trained.get("bias_iterations"), float(trained.get("bias_tolerance", 0.0))) != (
            pre["bias_iterations"], tolerance):
        text += ("; the stopping rule was set when the model was packaged: its training run used "
                 f"{trained.get('bias_iterations')} rounds"
                 + (f" with tolerance {trained['bias_tolerance']:g}" if trained.get("bias_tolerance") else "")
                 + ", see docs/training.md")
    return text + "), "


def _margin(evaluation: dict[str, Any]) -> str:
    """", interpolation margin M logits" when the evaluation recorded its scheduler settings."""
    scheduler = evaluation.get("scheduler") or {}
    if evaluation["mode"] != "adaptive" or "interpolation_margin" not in scheduler:
        return ""
    return f", interpolation margin {scheduler['interpolation_margin']:g} logits"


def _results(evaluation: dict[str, Any]) -> str:
    rows = []
    for s in evaluation["subjects"]:
        rows.append([s["case"], f"{s['dice']:.4f}", f"{s['iou']:.4f}", f"{s['otsu_dice']:.4f}",
                     f"{s['template_dice']:.4f}", f"{s['dice'] - s['otsu_dice']:+.4f}", f"{s['seconds']:.1f}",
                     f"{s['queries']:,}", f"{s['peak_rss_bytes'] / 2**20:.0f}"])
    m = evaluation["summary"]
    rows.append(["**mean**", f"**{m['dice']:.4f}**", f"**{m['iou']:.4f}**", f"{m['otsu_dice']:.4f}",
                 f"{m['template_dice']:.4f}", "", f"{m['seconds']:.1f}", "", ""])
    return _table(["subject", "Dice", "IoU", "Otsu Dice", "template Dice", "Dice - Otsu", "seconds", "queries",
                   "peak RSS (MiB)"], rows)


def _training(training: dict[str, Any]) -> str:
    o = training["options"]
    hours = (training["step_seconds_total"] + training["validation_seconds_total"]) / 60
    plan = training["plan"]
    stopped = (f" (the run ended there; it was set up for {o['steps']}, so its LR schedule was not completed)"
               if training["steps"] < o["steps"] else "")
    lines = [
        f"- Data: {len(training['train_cases'])} training subjects ({training['train_cases'][0]} ... "
        f"{training['train_cases'][-1]}), {len(training['val_cases'])} validation subjects "
        f"({', '.join(training['val_cases'])}); the held-out subjects below come from a third, disjoint seed range.",
        f"- {training['steps']} optimiser steps{stopped} of {plan['batch']} volumes x {o['points']} query points "
        f"({o['sampling']} sampling), {_schedule_text(o)}; {_freeze_text(o)}; seed {o['seed']}.",
        f"- Time: {hours:.0f} minutes of training and validation ({training['step_seconds_total'] / 60:.0f} min of "
        f"steps) on {training.get('hardware') or str(training['threads']) + ' CPU threads'}, torch {training['torch']}"
        f"{', fp32' if str(training.get('device', 'cpu')).startswith('cuda') and not o.get('amp', True) else ''}.",
    ]
    if training.get("note"):
        lines.append(f"- {training['note']}")
    if training.get("shipped") == "last":
        lines.append(f"- Shipped weights: the run's last step (`last.pt`, step {training['steps']}).")
    elif training.get("best_step") is not None:
        lines.append(f"- Shipped weights: the run's best validation checkpoint (`best.pt`, step {training['best_step']}).")
    if training["validation"]:
        history = ", ".join(f"step {v['step']}: {v['dice']:.4f}" for v in training["validation"])
        lines.append(f"- Validation Dice (reference scheduler, eval mode) during the run: {history}.")
    return "\n".join(lines)


def _schedule_text(o: dict[str, Any]) -> str:
    """The run's learning rates and schedule in words; runs older than --lr-schedule used the step schedule."""
    pau = o["pau_lr"] if o.get("pau_lr") else "the same"
    if o.get("lr_schedule", "step") == "cosine":
        return f"learning rate {o['lr']} (PAU {pau}) annealed by a cosine to 1 % at the last step"
    return (f"learning rate {o['lr']} (PAU {pau}) dropping x0.1 at "
            f"{', '.join(str(f) for f in o['lr_milestones'])} of the run")


def _freeze_text(o: dict[str, Any]) -> str:
    if float(o.get("freeze_bn_after", 1.0)) >= 1.0:
        return "BatchNorm trained with batch statistics throughout"
    if float(o["freeze_bn_after"]) <= 0.0:
        return "BatchNorm frozen to its running statistics (as the exported graphs use them) for the whole run"
    return (f"BatchNorm frozen to its running statistics (as the exported graphs use them) from "
            f"{o['freeze_bn_after']} of the run")


def _command(training: dict[str, Any]) -> str:
    o = training["options"]
    parts = [f"ossnet-train fit --data-kind {o['data_kind']} --data {o['data']} --val-data {o['val_data']}",
             f"--variant {o['variant']} --preset {o['preset']} --out {o['out']}",
             f"--steps {o['steps']} --points {o['points']} --batch {o['batch']} --sampling {o['sampling']}",
             ("--lr-schedule cosine" if o.get("lr_schedule", "step") == "cosine" else
              f"--lr-schedule step --lr-milestones {','.join(str(f) for f in o['lr_milestones'])}")
             + f" --freeze-bn-after {o['freeze_bn_after']}",
             f"--val-every {o['val_every']} --threads {o['threads']} --workers {o['workers']} --seed {o['seed']}"
             f" --device {o.get('device', 'auto')}{'' if o.get('amp', True) else ' --no-amp'}"]
    extra = [f"--augment-override {k}={json.dumps(v)}" for k, v in o.get("augment_overrides") or []]
    extra += [f"--preprocess-override {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in o.get("preprocess_overrides") or []]
    if o.get("init_from"):
        extra.append(f"--init-from {o['init_from']}")
    if extra:
        parts.append(" ".join(extra))
    return " \\\n    ".join(parts)


def _robustness(model_dir: Path, pair_id: str) -> str:
    """The card's robustness section from ``benchmarks/results/robustness_<folder>.json`` when that
    file measured this very pair (same pair id); "" otherwise."""
    path = RESULTS / f"robustness_{model_dir.name}.json"
    if not path.is_file():
        return ""
    bench = json.loads(path.read_text())
    if bench.get("model", {}).get("pair_id") != pair_id:
        return ""
    rows = ["| condition | mean Dice | lowest subject | empty | warned |", "|---|---|---|---|---|"]
    for condition in bench["conditions"]:
        done = [r for r in bench["rows"] if r["condition"] == condition and r.get("error") is None]
        if not done:
            continue
        dices = [r["dice"] for r in done]
        empty = sum(r["pred_voxels"] == 0 for r in done)
        warned = sum(bool(r["warnings"]) for r in done)
        rows.append(f"| `{condition}` | {statistics.mean(dices):.3f} | {min(dices):.3f} | {empty}/{len(done)} "
                    f"| {warned}/{len(done)} |")
    return ("\n## Robustness to how the input is written\n"
            f"Held-out subjects (seeds {', '.join(str(s['seed']) for s in bench['subjects'])}) turned into each condition by file-level transforms "
            "written independently of the training augmentation (zero background, field of view cropped to "
            "the brain, resampled, re-stored, a stronger bias field); Dice on each condition's own grid. "
            f"Source: `benchmarks/results/{path.name}` (`{bench['command']}`).\n\n" + "\n".join(rows) + "\n")


def card(model_dir: Path) -> str:
    """The card's markdown text for the model folder ``model_dir`` (holding ``evaluation.json``)."""
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    encoder = read_graph_metadata(model_dir / "encoder.onnx")
    training = evaluation["training"]
    m = evaluation["summary"]
    sizes = {name: (model_dir / name).stat().st_size for name in ("encoder.onnx", "decoder.onnx")}
    sample = evaluation.get("sample")
    seconds = [s["seconds"] for s in evaluation["subjects"]]
    sample_text = (f"The bundled sample (`{sample['image']}`, the held-out subject stored as uint8 with a scale "
                   f"factor) scores Dice {sample['dice']:.4f} (IoU {sample['iou']:.4f}) with "
                   f"{sample['queries']:,} decoder queries ({sample['queries'] / sample['dense_queries']:.1%} of dense) "
                   f"in {sample['seconds']:.1f} s, peak RSS {sample['peak_rss_bytes'] / 2**20:.0f} MiB."
                   if sample else "")
    pre = encoder.preprocess
    goal = 0.95
    status = (f"It meets the project's accuracy goal (held-out mean Dice >= {goal})." if m["dice"] >= goal else
              f"**It is below the project's accuracy goal** (held-out mean Dice {m['dice']:.3f}, goal >= {goal}): "
              "treat it as a working demonstration of the pipeline, not of the method's accuracy.")
    return f"""# mni-wm-demo: OSS-Net C, white matter on 1 mm T1 MRI (demo model)

{status}

**Not for clinical use.** This model exists so that a new user can run ossnet end to end, offline,
on a CPU. Every training subject is a random warp of **one average brain** (the MNI ICBM152 2009a
nonlinear symmetric template): it has never seen a real individual scan, another scanner, a
lesion, a skull or a child's brain, and nothing here says how it does on such data.

## What it does
- Input: one T1-weighted volume (`t1`), any orientation, about 1 mm voxels (other spacings are
  resampled to {pre['spacing_mm']} mm), skull-stripped like the template, whose foreground
  ({_foreground_text(pre)}) fits in {pre['shape']} voxels at 1 mm.
- Output: uint8 labels on the input's grid, `1` = white matter (`{json.dumps(encoder.labels)}`).
- Preprocessing (in the graphs' metadata, applied by `ossnet_deploy`): reorientation to the
  canonical axis order, {_bias_text(pre, training)}{pre['intensity']} intensity normalisation, placement into the
  {pre['shape']} grid, a {pre['global_downsample']}x mean-pooled global volume for the encoder,
  7^3 patches per query.
- Architecture: OSS-Net variant C (skip encoder {encoder.model_config['encoder_channels']}, latent
  {encoder.model_config['latent_shape']}, decoder {encoder.model_config['decoder_blocks']} blocks of width
  {encoder.model_config['decoder_width']}, auxiliary coarse head), `demo` preset. Graphs: encoder.onnx
  {sizes['encoder.onnx'] / 1e6:.1f} MB, decoder.onnx {sizes['decoder.onnx'] / 1e6:.1f} MB (fp32), pair id
  `{encoder.pair_id[:16]}...`.

## Training
{_training(training)}

```
{_command(training)}
```

The weights-only checkpoint is `models/mni-wm-demo.pt` in the source repository (re-export with
`python scripts/package_demo_model.py models/mni-wm-demo.pt --overwrite`).

## Held-out results
Whole-volume Dice and IoU over every voxel of each subject's own grid, through the shipped graphs
(`ossnet_deploy.Segmenter`, CPU, `{evaluation['mode']}` scheduler{_margin(evaluation)}), next to two baselines: the
unwarped template's white-matter mask (assume every subject is the template) and 3-class Otsu
thresholding of the T1 (brightest class = white matter).

{_results(evaluation)}

Lowest subject Dice {m['min_dice']:.4f}; smallest margin over Otsu {m['min_margin_over_otsu']:+.4f}. Time
per subject (read, segment, write; 2 CPU threads): median {statistics.median(seconds):.1f} s.
{sample_text}

Source: `evaluation.json` beside this card, written by

```
{evaluation['command']}
```

on {evaluation['machine']['platform']} (Python {evaluation['machine']['python']}).
{_robustness(model_dir, encoder.pair_id)}
## Licence and notice
The model's training data derive from the MNI ICBM152 template; its notice travels with the model
(`MNI_NOTICE.txt`):

> {MNI_NOTICE}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="model folder holding the graphs and evaluation.json")
    args = parser.parse_args()
    out = args.model_dir / "MODEL_CARD.md"
    out.write_text(card(args.model_dir))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
