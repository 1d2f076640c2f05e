"""Evaluate the bundled demo model on held-out demo subjects, next to two baselines.

For every subject of a demo-cohort folder this runs the shipped ONNX pair through
``ossnet_deploy.Segmenter`` (CPU, the default ``adaptive`` scheduler) and measures whole-volume
Dice and IoU against the subject's label on the subject's own grid (docs/design.md#measuring),
together with:

* ``template``: the unwarped MNI template's white-matter mask (probability > 0.5), i.e. what
  you get by assuming every subject is the template;
* ``otsu``: 3-class Otsu thresholding of the T1 over the whole volume, brightest class = WM.

The JSON it writes is the source of the numbers in the model card.

Usage::

    python scripts/evaluate_demo_model.py --model ossnet_deploy/models/mni-wm-demo \\
        --data data/demo-test --out ossnet_deploy/models/mni-wm-demo/evaluation.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ossnet_deploy.metrics import dice, iou
from ossnet_deploy.onnx_metadata import sha256_file
from ossnet_deploy.segmenter import Segmenter
from ossnet_train.baselines import otsu_3class, template_mask
from ossnet_train.datasets import demo_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model folder (encoder.onnx, decoder.onnx)")
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="demo-cohort folder(s) of held-out subjects (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="JSON output")
    parser.add_argument("--mode", default="adaptive", choices=["adaptive", "reference", "dense"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--run-config", type=Path, default=None,
                        help="the training run's config.json: its case lists, options and timing go into the JSON, "
                             "and every evaluated subject is checked to be outside them")
    parser.add_argument("--hardware", default=None,
                        help="what the run trained on, for the card (default: from config.json's device and threads)")
    parser.add_argument("--run-note", default=None,
                        help="a sentence for the card on how the run ended (e.g. why it stopped early)")
    parser.add_argument("--shipped", choices=["best", "last"], default="best",
                        help="which of the run's checkpoints was packaged (best.pt or last.pt), for the card")
    parser.add_argument("--sample", type=Path, nargs=2, metavar=("IMAGE", "LABEL"), default=None,
                        help="also score the bundled sample (examples/...) against its label")
    args = parser.parse_args()

    training = _training_facts(args.run_config) if args.run_config else None
    if training is not None:
        training["hardware"] = args.hardware or _hardware(training)
        training["note"] = args.run_note
        training["shipped"] = args.shipped
    seen = set(training["train_cases"] + training["val_cases"]) if training else set()

    segmenter = Segmenter.from_dir(args.model, device="cpu", mode=args.mode, threads=args.threads)
    template = template_mask()
    subjects = []
    for root in args.data:
        dataset = demo_dataset(root)
        for case in dataset.cases:
            if case.case_id in seen:
                raise SystemExit(f"{case.case_id} was used in training or validation; it is not held out")
            image_path = case.channels[0]
            label_img = nib.load(case.label)
            label = np.asanyarray(label_img.dataobj) > 0
            start = time.perf_counter()
            output, stats = segmenter.segment_with_stats(image_path)
            seconds = time.perf_counter() - start
            pred = np.asanyarray(output.dataobj) > 0
            image = nib.load(image_path).get_fdata(dtype=np.float32)
            otsu = otsu_3class(image).labels == 2
            if template.shape != label.shape:
                raise SystemExit(f"{case.case_id}: label grid {label.shape} is not the template grid {template.shape}")
            record = {
                "case": case.case_id,
                "dataset": str(root),
                "dice": dice(pred, label),
                "iou": iou(pred, label),
                "otsu_dice": dice(otsu, label),
                "otsu_iou": iou(otsu, label),
                "template_dice": dice(template, label),
                "template_iou": iou(template, label),
                "queries": stats.total_queries,
                "seconds": seconds,
                "peak_rss_bytes": stats.peak_rss_bytes,
            }
            subjects.append(record)
            print(f"{case.case_id}: Dice {record['dice']:.4f} IoU {record['iou']:.4f} | Otsu {record['otsu_dice']:.4f} "
                  f"| template {record['template_dice']:.4f} | {seconds:.1f} s, {stats.total_queries} queries",
                  flush=True)

    def mean(key: str) -> float:
        return statistics.fmean(s[key] for s in subjects)

    summary = {key: mean(key) for key in ("dice", "iou", "otsu_dice", "otsu_iou", "template_dice", "template_iou",
                                          "seconds")}
    summary["min_dice"] = min(s["dice"] for s in subjects)
    summary["min_margin_over_otsu"] = min(s["dice"] - s["otsu_dice"] for s in subjects)
    sample = None
    if args.sample:
        image_path, label_path = args.sample
        start = time.perf_counter()
        output, stats = segmenter.segment_with_stats(image_path)
        pred = np.asanyarray(output.dataobj) > 0
        label = np.asanyarray(nib.load(label_path).dataobj) > 0
        sample = {"image": image_path.as_posix(), "label": label_path.as_posix(), "dice": dice(pred, label),
                  "iou": iou(pred, label), "queries": stats.total_queries, "dense_queries": stats.dense_queries,
                  "seconds": time.perf_counter() - start, "peak_rss_bytes": stats.peak_rss_bytes}
        print(f"sample {image_path}: Dice {sample['dice']:.4f} IoU {sample['iou']:.4f}", flush=True)
    result = {
        "model": str(args.model),
        "encoder_sha256": sha256_file(args.model / "encoder.onnx"),
        "decoder_sha256": sha256_file(args.model / "decoder.onnx"),
        "mode": args.mode,
        "scheduler": dataclasses.asdict(segmenter.scheduler_config),
        "device": "cpu",
        "command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
        "summary": summary,
        "subjects": subjects,
        "sample": sample,
        "training": training,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _hardware(training: dict[str, object]) -> str:
    if str(training["device"]).startswith("cuda"):
        return f"one CUDA GPU, {training['options']['workers']} data-loader workers"  # type: ignore[index]
    return f"{training['threads']} CPU threads"


def _training_facts(config_path: Path) -> dict[str, object]:
    """What the model card states about training, from the run's ``config.json`` and ``metrics.jsonl``."""
    config = json.loads(config_path.read_text())
    records = [json.loads(line) for line in (config_path.parent / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in records if r["kind"] == "train"]
    vals = [r for r in records if r["kind"] == "val"]
    return {
        "train_cases": list(config["train_cases"]), "val_cases": list(config["val_cases"]),
        "options": config["train"], "plan": config["plan"], "torch": config["torch"], "threads": config["threads"],
        "device": config.get("device", "cpu"), "preprocess": config["preprocess"],
        "steps": steps[-1]["step"] if steps else 0,
        "step_seconds_total": sum(r["step_seconds"] for r in steps),
        "validation_seconds_total": sum(r["seconds"] for r in vals),
        "best_step": vals[-1]["best_step"] if vals else None,
        "validation": [{"step": r["step"], "dice": r["dice"],
                        "subjects": {s["case_id"]: s["dice"] for s in r["subjects"]}} for r in vals],
    }


if __name__ == "__main__":
    main()
