"""Robustness of a model folder to how its input file is written: held-out demo subjects under file-level conditions.

For every held-out demo subject (default seeds 5000-5005: never used to train, validate or
evaluate the bundled model, which saw 1000-1015 in training, 2000-2003 in validation and was
evaluated on 3000-3005) and every condition of ``robustness_transforms.CONDITIONS``
(``as_generated``, ``zero_background``, ``cropped``, ``cropped_zero``, ``spacing_1p5mm``,
``spacing_1x1x3mm``, ``uint8``, ``int16_slope``, ``float32``, ``strong_bias``) this

1. makes the condition's files from the generated subject (image, label and brain mask, one
   grid; ``benchmarks/robustness_transforms.py``, written independently of the training
   augmentation and the runtime's preprocessing) under ``<data>/conditions/<condition>/``;
2. segments the image file with ``ossnet_deploy.Segmenter`` (in this process, one loaded model,
   ``--device``/``--threads``/``--mode``) and records Dice against the condition's label on the
   condition's grid (``ossnet_deploy.metrics.dice``), predicted / true volume, decoder queries,
   seconds (read to labels) and every warning the runtime emitted (Python warnings, WARNING log
   records of ``ossnet_deploy``, and ``stats.warnings`` when the statistics carry them);
3. scores the 3-class Otsu baseline (``ossnet_train.baselines.otsu_3class`` over the condition's
   brain mask, brightest class = white matter), the floor a model must beat.

Subjects are generated with the repository's demo cohort generator
(``ossnet_train.demo_cohort``; nilearn's template files needed) into ``--data`` (default
``~/ossnet-data/robustness``, outside the repository), one subject at a time and skipped when
both its files exist with the current generator version, so an interrupted run resumes.

Results: ``benchmarks/results/robustness_<model folder name>[_TAG].{json,md,png}`` (``_quick``
with ``--quick``); the JSON holds every (subject, condition) row, the environment, the model's
``pair_id`` and the command. ``--render FILE.json`` rewrites the markdown and plot from a JSON.

Examples::

    python benchmarks/bench_robustness.py --threads 1                      # 6 subjects x 10 conditions
    python benchmarks/bench_robustness.py --quick                          # 2 subjects x 3 conditions
    python benchmarks/bench_robustness.py --model path/to/model --seeds 5000-5009 --conditions as_generated,uint8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import robustness_transforms as rt
from harness import RESULTS, environment, environment_markdown, table

DEFAULT_DATA = Path("~/ossnet-data/robustness")
#: Held out from the bundled model: it trained on 1000-1015, validated on 2000-2003, was evaluated on 3000-3005.
DEFAULT_SEEDS = "5000-5005"
QUICK_SUBJECTS = 2
QUICK_CONDITIONS = ("as_generated", "zero_background", "cropped")


# ---------------------------------------------------------------------------------- data


def parse_seeds(text: str) -> list[int]:
    """``"5000-5005"``, ``"5000,5003"`` or a mix: sorted unique seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(p) for p in part.split("-", 1))
            if hi < lo:
                raise argparse.ArgumentTypeError(f"empty seed range {part!r}")
            seeds.update(range(lo, hi + 1))
        else:
            seeds.add(int(part))
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"no valid seeds in {text!r}")
    return sorted(seeds)


def subject_paths(root: Path, seed: int) -> tuple[Path, Path]:
    from ossnet_train.demo_cohort import case_id

    case = case_id(seed)
    return root / "imagesTr" / f"{case}_0000.nii.gz", root / "labelsTr" / f"{case}.nii.gz"


def _generated_version(image_path: Path) -> int | None:
    """The generator version in the image header's ``descrip`` (``ossnet demo demo_SSSS vN``)."""
    try:
        text = nib.load(image_path).header["descrip"].item().decode(errors="replace")
        return int(text.rsplit(" v", 1)[1])
    except (OSError, ValueError, IndexError, nib.filebasedimages.ImageFileError):
        return None


def ensure_subjects(root: Path, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Generate every subject whose files are missing or older than the generator; one record per seed."""
    from ossnet_train.demo_cohort import GENERATOR_VERSION, MNI_NOTICE, make_demo_subject, write_subject

    root.mkdir(parents=True, exist_ok=True)
    notice = root / "MNI_NOTICE.txt"
    if not notice.exists():
        notice.write_text("Demo subjects derived from the MNI ICBM152 2009a template (ossnet_train.demo_cohort).\n\n"
                          + MNI_NOTICE + "\n", encoding="utf-8")
    records = []
    for seed in seeds:
        image_path, label_path = subject_paths(root, seed)
        record: dict[str, Any] = {"seed": seed, "image": str(image_path), "label": str(label_path)}
        if image_path.exists() and label_path.exists() and _generated_version(image_path) == GENERATOR_VERSION:
            record["generated_seconds"] = None  # cached
        else:
            started = time.perf_counter()
            subject = make_demo_subject(seed)
            write_subject(subject, root, overwrite=True)
            record["generated_seconds"] = time.perf_counter() - started
            print(f"generated {subject.case_id} in {record['generated_seconds']:.1f} s -> {image_path}", flush=True)
        record["generator_version"] = GENERATOR_VERSION
        records.append(record)
    return records


def _held_out_check(model_dir: Path, seeds: Sequence[int], allow_seen: bool) -> list[str]:
    """Case ids of ``seeds`` that the model folder's evaluation.json lists as trained, validated or evaluated on."""
    from ossnet_train.demo_cohort import case_id

    path = model_dir / "evaluation.json"
    if not path.exists():
        return []
    evaluation = json.loads(path.read_text())
    seen = set((evaluation.get("training") or {}).get("train_cases", []))
    seen |= set((evaluation.get("training") or {}).get("val_cases", []))
    seen |= {s.get("case") for s in evaluation.get("subjects", [])}
    overlap = [case_id(s) for s in seeds if case_id(s) in seen]
    if overlap and not allow_seen:
        raise SystemExit(f"{', '.join(overlap)} trained, validated or evaluated {model_dir.name} "
                         f"({path}); choose other --seeds (default {DEFAULT_SEEDS}) or pass --allow-seen")
    return overlap


# ----------------------------------------------------------------------------- measuring


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"log {record.levelname} {record.name}: {record.getMessage()}")


def segment_case(segmenter: Any, image_path: Path) -> tuple[np.ndarray | None, Any, list[str], str | None]:
    """Segment one file; ``(labels or None, stats or None, warnings, error or None)``."""
    collector = _LogCollector()
    logger = logging.getLogger("ossnet_deploy")
    logger.addHandler(collector)
    caught: list[warnings.WarningMessage] = []
    labels = stats = error = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            output, stats = segmenter.segment_with_stats(str(image_path))
            labels = np.asarray(output.dataobj) > 0
    except Exception as exc:  # a condition the runtime refuses is a result, not a crash
        error = f"{type(exc).__name__}: {exc}"
    finally:
        logger.removeHandler(collector)
    found = [f"{w.category.__name__}: {w.message}" for w in caught]
    found += collector.records
    found += [str(w) for w in (getattr(stats, "warnings", None) or [])] if stats is not None else []
    return labels, stats, found, error


def measure_subject(segmenter: Any, subject: dict[str, Any], conditions: Sequence[str], data: Path) -> list[dict[str, Any]]:
    """Every condition of one subject: transform, write, segment, score."""
    from ossnet_deploy.metrics import dice
    from ossnet_train.baselines import otsu_3class
    from ossnet_train.demo_cohort import case_id

    seed = subject["seed"]
    case_name = case_id(seed)
    started = time.perf_counter()
    base = rt.load_case(subject["image"], subject["label"], seed)
    mask_seconds = time.perf_counter() - started
    label_in_brain = float((base.label.astype(bool) & base.brain).sum() / max(1, int(base.label.sum())))
    rows = []
    for condition in conditions:
        started = time.perf_counter()
        case = rt.transform(base, condition)
        if condition == "as_generated":  # the generator's own files, byte for byte
            image_path, label_path = Path(subject["image"]), Path(subject["label"])
            rt.write_brain(case, data / "conditions" / condition / "brainTr" / f"{case_name}.nii.gz")
        else:
            folder = data / "conditions" / condition
            image_path = folder / "imagesTr" / f"{case_name}_0000.nii.gz"
            label_path = folder / "labelsTr" / f"{case_name}.nii.gz"
            brain_path = folder / "brainTr" / f"{case_name}.nii.gz"
            rt.write_case(case, image_path, label_path, brain_path)
        transform_seconds = time.perf_counter() - started
        stored = nib.load(image_path)
        label = np.asanyarray(nib.load(label_path).dataobj) > 0
        labels, stats, found, error = segment_case(segmenter, image_path)
        values = stored.get_fdata(dtype=np.float32)
        otsu = otsu_3class(values, case.brain).labels == 2
        row: dict[str, Any] = {
            "subject": case_name, "seed": seed, "condition": condition, "image": str(image_path),
            "shape": list(stored.shape), "voxel_mm": [round(float(v), 4) for v in rt.voxel_sizes(stored.affine)],
            "dtype": str(stored.get_data_dtype()),
            "scl_slope": None if stored.dataobj.slope is None else float(stored.dataobj.slope),
            "scl_inter": None if stored.dataobj.inter is None else float(stored.dataobj.inter),
            "value_range": [float(values.min()), float(values.max())],
            "background_zero_fraction": float((values[~case.brain] == 0).mean()) if (~case.brain).any() else None,
            "label_voxels": int(label.sum()), "brain_voxels": int(case.brain.sum()),
            "label_in_brain_fraction": label_in_brain, "brain_mask_seconds": mask_seconds,
            "transform_seconds": transform_seconds,
            "otsu_dice": dice(otsu, label),
            "warnings": found, "error": error,
        }
        if labels is not None:
            row.update({
                "dice": dice(labels, label), "pred_voxels": int(labels.sum()),
                "volume_ratio": float(labels.sum() / label.sum()) if label.any() else None,
                "queries": stats.total_queries, "dense_queries": stats.dense_queries,
                "seconds": stats.total_seconds, "stage_seconds": [list(s) for s in stats.stage_seconds],
            })
        else:
            row.update({"dice": None, "pred_voxels": None, "volume_ratio": None, "queries": None,
                        "dense_queries": None, "seconds": None, "stage_seconds": None})
        rows.append(row)
        shown = "error" if row["dice"] is None else f"Dice {row['dice']:.4f}"
        print(f"{case_name} {condition:<16} {shown} | Otsu {row['otsu_dice']:.4f} | "
              f"vol {row['volume_ratio'] if row['volume_ratio'] is None else round(row['volume_ratio'], 3)} | "
              f"{row['seconds'] or 0:.1f} s | {len(found)} warnings{' | ' + error if error else ''}", flush=True)
    return rows


# ------------------------------------------------------------------------------- results


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    clean = [v for v in values if v is not None]
    if not clean:
        return None, None, None
    return statistics.fmean(clean), min(clean), max(clean)


_PREPROCESS_SHOWN = ("geometry", "intensity", "foreground", "foreground_threshold", "bias_correction", "spacing_mm")


def render_markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    conditions = [c for c in payload["conditions"] if any(r["condition"] == c for r in rows)]
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    by = {(r["subject"], r["condition"]): r for r in rows}
    n = len(subjects)
    header = ["condition", "Dice mean", "min", "max", *subjects, "Otsu mean", "min margin over Otsu",
              "pred/true volume", "empty", "s", "queries", "warned", "failed"]
    body = []
    for c in conditions:
        mine = [by[(s, c)] for s in subjects if (s, c) in by]
        mean, lo, hi = _stats([r["dice"] for r in mine])
        otsu_mean, _, _ = _stats([r["otsu_dice"] for r in mine])
        margins = [r["dice"] - r["otsu_dice"] for r in mine if r["dice"] is not None]
        volume, _, _ = _stats([r["volume_ratio"] for r in mine])
        seconds, _, _ = _stats([r["seconds"] for r in mine])
        queries, _, _ = _stats([r["queries"] for r in mine])
        body.append([f"`{c}`", f"**{_fmt(mean)}**", _fmt(lo), _fmt(hi),
                     *[_fmt(by[(s, c)]["dice"]) if (s, c) in by else "" for s in subjects],
                     _fmt(otsu_mean), _fmt(min(margins) if margins else None, 3), _fmt(volume, 2),
                     f"{sum(1 for r in mine if r['pred_voxels'] == 0)}/{len(mine)}", _fmt(seconds, 1),
                     "n/a" if queries is None else f"{queries:,.0f}",
                     f"{sum(1 for r in mine if r['warnings'])}/{len(mine)}",
                     f"{sum(1 for r in mine if r['error'])}/{len(mine)}"])
    otsu_header = ["condition", *subjects]
    otsu_body = [[f"`{c}`", *[_fmt(by[(s, c)]["otsu_dice"]) if (s, c) in by else "" for s in subjects]]
                 for c in conditions]
    grids = [[f"`{c}`", "x".join(map(str, by[(subjects[0], c)]["shape"])),
              " x ".join(f"{v:g}" for v in by[(subjects[0], c)]["voxel_mm"]), by[(subjects[0], c)]["dtype"],
              _fmt(by[(subjects[0], c)]["scl_slope"], 6), _fmt(by[(subjects[0], c)]["scl_inter"], 4),
              _fmt(by[(subjects[0], c)]["background_zero_fraction"], 3)]
             for c in conditions if (subjects[0], c) in by]
    messages: dict[str, set[str]] = {}
    for r in rows:
        for w in r["warnings"]:
            messages.setdefault(r["condition"], set()).add(w)
        if r["error"]:
            messages.setdefault(r["condition"], set()).add("ERROR " + r["error"])
    model = payload["model"]
    lines = [
        f"# Robustness of `{model['name']}` to how its input is written",
        "",
        environment_markdown(payload["environment"]),
        "",
        f"Model `{model['path']}` (pair_id `{model['pair_id'][:16]}...`, {model['variant']} / {model['preset']}), "
        f"`{payload['settings']['mode']}` scheduler on `{payload['settings']['device']}`. Held-out demo subjects "
        f"seeds {payload['settings']['seeds_text']} ({n} subjects, generator v{payload['subjects'][0]['generator_version']}). "
        f"Command: `{payload['command']}`; {payload['wall_seconds']:.0f} s in total.",
        "",
        "The model's preprocessing (from its metadata): " + ", ".join(
            f"{key} `{model['preprocess'].get(key)}`" for key in _PREPROCESS_SHOWN if key in model["preprocess"])
        + f"; runtime code from `{model.get('runtime_code', 'n/a')}`.",
        "",
        "Dice of the model against each condition's label on that condition's grid; Otsu = 3-class Otsu over the "
        "brain mask, brightest class (the floor). *empty*: subjects with no voxel predicted; *warned*: runs during "
        "which the runtime emitted a warning; *s*: seconds from reading the file to labels in memory.",
        "",
        table(header, body),
        "",
        "## Otsu baseline per subject",
        "",
        table(otsu_header, otsu_body),
        "",
        f"## The inputs (subject {subjects[0]})",
        "",
        table(["condition", "shape", "voxel mm", "stored dtype", "scl_slope", "scl_inter",
               "background voxels exactly 0"], grids),
        "",
        "Brain mask: from the generated image (`robustness_transforms.brain_mask`: 2 mm Gaussian, threshold 10 % "
        "of the way from the background level to the 99th percentile, largest 6-connected component, holes "
        f"filled); it holds {_fmt(min(r['label_in_brain_fraction'] for r in rows), 4)} of the white-matter label "
        "at worst. Conditions: docs/benchmarks.md (\"Robustness to the input file\").",
        "",
        "## Warnings and errors",
        "",
    ]
    if messages:
        for c in conditions:
            for m in sorted(messages.get(c, ())):
                lines.append(f"- `{c}`: {m}")
    else:
        lines.append("None: the runtime emitted no warning and refused no input.")
    return "\n".join(lines) + "\n"


def render_plot(payload: dict[str, Any], path: Path) -> None:
    from pngplot import bar_chart

    rows = payload["rows"]
    conditions = [c for c in payload["conditions"] if any(r["condition"] == c for r in rows)]

    def per(key: str, how: str) -> list[float | None]:
        out = []
        for c in conditions:
            mean, lo, _ = _stats([r[key] for r in rows if r["condition"] == c])
            out.append(mean if how == "mean" else lo)
        return out

    bar_chart(path, conditions, [("model Dice, mean", per("dice", "mean")), ("model Dice, min", per("dice", "min")),
                                 ("Otsu Dice, mean", per("otsu_dice", "mean"))],
              title=f"{payload['model']['name']}: white-matter Dice per input condition "
                    f"({len({r['subject'] for r in rows})} held-out subjects)",
              y_label="Dice", size=(1500, 600))


def write_outputs(payload: dict[str, Any], out: Path, stem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    markdown = render_markdown(payload)
    (out / f"{stem}.md").write_text(markdown)
    render_plot(payload, out / f"{stem}.png")
    print(markdown)
    print(f"written: {path}, {stem}.md, {stem}.png")
    return path


def render(path: Path) -> None:
    payload = json.loads(path.read_text())
    stem = path.name.removesuffix(".json").removesuffix(".partial")
    write_outputs(payload, path.parent, stem)


# ----------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    from ossnet_deploy.model import DEFAULT_MODEL_DIR

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="cache of generated subjects and condition files, outside the repository "
                             f"(default {DEFAULT_DATA})")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS,
                        help=f"held-out demo seeds, e.g. 5000-5005 or 5000,5002 (default {DEFAULT_SEEDS})")
    parser.add_argument("--conditions", default=",".join(rt.CONDITIONS),
                        help=f"comma list (default all: {','.join(rt.CONDITIONS)})")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per graph (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="adaptive", choices=("adaptive", "reference", "dense"))
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SUBJECTS} subjects, conditions {','.join(QUICK_CONDITIONS)}; results named _quick")
    parser.add_argument("--allow-seen", action="store_true",
                        help="allow seeds the model folder's evaluation.json lists as trained, validated or evaluated on")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix of the result names")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only re-write the markdown and plot of this results JSON")
    args = parser.parse_args(argv)
    if args.render is not None:
        render(args.render)
        return
    seeds = parse_seeds(args.seeds)
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = [c for c in conditions if c not in rt.CONDITIONS]
    if unknown:
        parser.error(f"unknown conditions {unknown}; known: {', '.join(rt.CONDITIONS)}")
    if args.quick:
        seeds = seeds[:QUICK_SUBJECTS]
        conditions = [c for c in QUICK_CONDITIONS if c in conditions] or list(QUICK_CONDITIONS)
    model_dir = args.model.expanduser().resolve()
    data = args.data.expanduser().resolve()
    stem = f"robustness_{model_dir.name}" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    overlap = _held_out_check(model_dir, seeds, args.allow_seen)

    started = time.perf_counter()
    subjects = ensure_subjects(data, seeds)
    from ossnet_deploy.segmenter import Segmenter

    segmenter = Segmenter.from_dir(model_dir, device=args.device, threads=args.threads, mode=args.mode)
    meta = segmenter.encoder_meta
    payload: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/bench_robustness.py", *argv]),
        "environment": environment(args.threads, {"device": segmenter.device}),
        "model": {"name": model_dir.name, "path": str(model_dir), "pair_id": meta.pair_id,
                  "variant": meta.variant, "preset": meta.preset,
                  "preprocess": dataclasses.asdict(segmenter.preprocess),
                  "runtime_code": str(Path(sys.modules["ossnet_deploy"].__file__ or "").parent)},
        "settings": {"seeds": seeds, "seeds_text": args.seeds if not args.quick else f"{seeds[0]}-{seeds[-1]}",
                     "conditions": conditions, "device": args.device, "threads": args.threads, "mode": args.mode,
                     "data": str(data), "quick": args.quick, "seen_subjects": overlap,
                     "crop_margin_mm": rt.CROP_MARGIN_MM, "bias_rms": rt.BIAS_RMS},
        "conditions": conditions,
        "subjects": subjects,
        "rows": [],
    }
    partial = args.out / f"{stem}.partial.json"
    args.out.mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        payload["rows"] += measure_subject(segmenter, subject, conditions, data)
        payload["wall_seconds"] = time.perf_counter() - started
        partial.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    payload["wall_seconds"] = time.perf_counter() - started
    write_outputs(payload, args.out, stem)
    partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
