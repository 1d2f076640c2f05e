"""The benchmark workloads: synthetic data, briefly trained models, and the manifest the benchmarks read.

Workloads (fixed by the benchmark issue):

* ``a``: a held-out 1 mm demo subject (``data/demo-test``, written by ``ossnet-train
  make-demo-data``) with the bundled default model (``ossnet_deploy/models/mni-wm-demo``; its
  checkpoint ``models/mni-wm-demo.pt`` for the PyTorch-eager comparison). Nothing to build here.
* ``b``: a 4 x 240 x 240 x 155 BraTS-like case (:func:`phantoms.brain_tumour_case`: whole tumour of
  50-150 cm^3 in 2-4 blobs) with the ``brats`` C preset, trained briefly on such cases.
* ``c``: a 1 x 512^3 CT-like case (:func:`phantoms.ct_liver_case`: liver of 4-5 % of the grid) with
  the ``lits`` C preset, trained likewise.
* ``scaling``: inputs of 128^3 .. 512^3 voxels for the memory-scaling study: crops/pads of the
  demo subject for sizes the ``demo`` grid (224 x 256 x 192) holds, CT phantoms (``lits`` preset,
  which resamples any size to its 512^3 grid) for larger ones.

Steps (each one alone, or ``all``); everything goes under ``--root`` (default ``data/bench``,
ignored by git)::

    python benchmarks/workloads.py data      # synthetic training + held-out cases (BraTS / LiTS layouts)
    python benchmarks/workloads.py train     # ossnet-train fit (brats C, lits C), then evaluate
    python benchmarks/workloads.py export    # ossnet-export -> <root>/models/{brats-c,lits-c}/
    python benchmarks/workloads.py scaling   # inputs of the memory-scaling study
    python benchmarks/workloads.py manifest  # <root>/workloads.json (every step rewrites it)
    python benchmarks/workloads.py all

``--tiny`` shrinks shapes, models and steps so the whole pipeline runs in seconds (for testing
the scripts only; such results mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from phantoms import BRATS_SHAPE, LITS_SHAPE, brain_tumour_case, ct_liver_case

__all__ = ["PRESET_RUNS", "Workload", "load_manifest", "main"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "data" / "bench"
DEFAULT_DEMO_SUBJECT = REPO / "data" / "demo-test" / "imagesTr" / "demo_3000_0000.nii.gz"
DEFAULT_DEMO_MODEL = REPO / "ossnet_deploy" / "models" / "mni-wm-demo"
DEFAULT_DEMO_CHECKPOINT = REPO / "models" / "mni-wm-demo.pt"
MANIFEST = "workloads.json"
#: seed of the held-out benchmark case of each synthetic workload (training cases use 1..N).
HELD_OUT_SEED = 900
BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
#: inputs of the memory-scaling study, SIZE:PRESET (the demo grid 224x256x192 holds up to 192^3).
FULL_SIZES = "128:demo,192:demo,256:lits,384:lits,512:lits"
TINY_SIZES = "40:lits,56:lits"


@dataclass(frozen=True)
class PresetRun:
    """How one synthetic workload is made and trained: dataset layout, preset, tiny overrides."""

    name: str
    preset: str
    data_kind: str
    shape: tuple[int, int, int]
    train_cases: int
    tiny_shape: tuple[int, int, int]
    tiny_overrides: tuple[str, ...]
    # The lits decoder (width 512, latent 512) differs from PyTorch by up to 1.8e-5 in logits of
    # about 0.006 (ORT vs PyTorch summation order), over the default atol 1e-5: verified at 5e-5.
    export_args: tuple[str, ...] = ()


PRESET_RUNS: dict[str, PresetRun] = {
    "b": PresetRun("brats-c", "brats", "brats", BRATS_SHAPE, 8, (48, 48, 32), (
        "--model-override", "global_shape=[32,32,24]", "--model-override", "encoder_channels=[4,8,16]",
        "--model-override", "decoder_width=32", "--preprocess-override", "shape=[64,64,48]",
        "--preprocess-override", "max_shift=0")),
    "c": PresetRun("lits-c", "lits", "lits", LITS_SHAPE, 4, (64, 64, 64), (
        "--model-override", "global_shape=[16,16,16]", "--model-override", "encoder_channels=[1,8,16]",
        "--model-override", "decoder_width=32", "--preprocess-override", "shape=[32,32,32]"),
        export_args=("--atol", "5e-5")),
}


@dataclass(frozen=True)
class Workload:
    """One input volume and the model(s) that segment it; paths relative to the repository root
    when inside it.

    name: ``a``, ``b``, ``c`` or ``scaling-<size>``. input: a NIfTI file or a BraTS case folder.
    model_dir: exported ONNX pair (Segmenter). checkpoint: the same model's PyTorch checkpoint
    (eager comparison; may be missing). preset: the preprocessing preset (peers normalise with it).
    voxels: spatial voxels of the input. notes: free text for the tables. facts: how the case was
    made (seed, tumour volume, ...). label: its ground-truth label file ("" if none; foreground = > 0).
    """

    name: str
    input: str
    model_dir: str
    checkpoint: str
    preset: str
    voxels: int
    notes: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def path(self, attribute: str) -> Path:
        """``input``, ``model_dir``, ``checkpoint`` or ``label`` as an absolute path."""
        value = Path(getattr(self, attribute))
        return value if value.is_absolute() else REPO / value


def _rel(path: Path) -> str:
    path = path.resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def load_manifest(path: str | os.PathLike[str]) -> dict[str, list[Workload]]:
    """``{"workloads": [...], "scaling": [...]}`` from a manifest written by this script."""
    data = json.loads(Path(path).read_text())
    return {key: [Workload(**w) for w in data.get(key, [])] for key in ("workloads", "scaling")}


# --------------------------------------------------------------------------------- data


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _brats_case(folder: Path, case_id: str, seed: int, shape: Sequence[int]) -> dict[str, Any]:
    case = brain_tumour_case(seed, shape)
    for c, modality in enumerate(BRATS_MODALITIES):
        _save(case.channels[c], case.affine, folder / case_id / f"{case_id}_{modality}.nii.gz")
    _save(case.label, case.affine, folder / case_id / f"{case_id}_seg.nii.gz")
    return {"case": case_id, "seed": seed, "tumour_cm3": case.tumour_voxels / 1000.0, "blobs": case.blobs}


def _lits_case(folder: Path, number: int, seed: int, shape: Sequence[int], suffix: str) -> dict[str, Any]:
    case = ct_liver_case(seed, shape)
    _save(case.hu, case.affine, folder / f"volume-{number}{suffix}")
    _save(case.label, case.affine, folder / f"segmentation-{number}{suffix}")
    return {"case": f"volume-{number}", "seed": seed, "liver_fraction": case.liver_fraction}


def make_data(args: argparse.Namespace) -> None:
    """Write the training cases and the held-out case of workloads b and c."""
    root: Path = args.root
    facts: dict[str, Any] = _read_json(root / "cases.json")
    for key in args.which:
        run = PRESET_RUNS[key]
        shape = run.tiny_shape if args.tiny else run.shape
        cases = args.train_cases or (2 if args.tiny else run.train_cases)
        train, test = root / f"{run.preset}-train", root / f"{run.preset}-test"
        if (train.exists() or test.exists()) and not args.overwrite:
            print(f"{run.name}: {train} exists, kept (--overwrite replaces it)")
            continue
        started = time.perf_counter()
        written = []
        for n in range(1, cases + 1):
            if run.data_kind == "brats":
                written.append(_brats_case(train, f"BraTS20_Training_{n:03d}", args.seed + n, shape))
            else:
                written.append(_lits_case(train, n, args.seed + n, shape, args.lits_suffix))
            print(f"{run.name}: training case {n}/{cases}: {written[-1]}", flush=True)
        if run.data_kind == "brats":
            held_out = _brats_case(test, f"BraTS20_Training_{HELD_OUT_SEED}", args.seed + HELD_OUT_SEED, shape)
        else:
            held_out = _lits_case(test, HELD_OUT_SEED, args.seed + HELD_OUT_SEED, shape, args.lits_suffix)
        print(f"{run.name}: held-out case: {held_out} ({time.perf_counter() - started:.0f} s in all)")
        facts[key] = {"shape": list(shape), "train": written, "held_out": held_out, "tiny": bool(args.tiny)}
    _write_json(root / "cases.json", facts)


# -------------------------------------------------------------------------------- train


def _run(command: list[str]) -> None:
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def train(args: argparse.Namespace) -> None:
    """``ossnet-train fit`` for each preset run, then ``ossnet-train evaluate`` on the held-out case."""
    root: Path = args.root
    for key in args.which:
        run = PRESET_RUNS[key]
        out = root / "runs" / run.name
        command = [sys.executable, "-m", "ossnet_train.cli", "fit", "--data-kind", run.data_kind,
                   "--data", str(root / f"{run.preset}-train"), "--preset", run.preset, "--variant", "c",
                   "--out", str(out), "--overwrite", "--steps", str(2 if args.tiny else args.steps),
                   "--points", str(256 if args.tiny else args.points), "--batch", str(args.batch),
                   "--threads", str(args.threads), "--sampling", args.sampling,
                   "--freeze-bn-after", str(args.freeze_bn_after), "--seed", str(args.seed), "--no-progress"]
        if args.tiny:
            command += list(run.tiny_overrides)
        command += list(args.fit_arg)
        _run(command)
        if args.evaluate:
            _run([sys.executable, "-m", "ossnet_train.cli", "evaluate", str(out / "last.pt"), "--data-kind",
                  run.data_kind, "--data", str(root / f"{run.preset}-test"), "--mode", "adaptive",
                  "--device", "cpu", "--json", str(out / "evaluate_held_out.json"), "--overwrite"])


def export(args: argparse.Namespace) -> None:
    """``ossnet-export`` of each trained run into ``<root>/models/<name>/``."""
    root: Path = args.root
    for key in args.which:
        run = PRESET_RUNS[key]
        _run([sys.executable, "-m", "ossnet_export.cli", "export", str(root / "runs" / run.name / "last.pt"),
              "-o", str(root / "models" / run.name), "--overwrite", "--quiet", *run.export_args])


# ------------------------------------------------------------------------------ scaling


def _parse_sizes(text: str) -> list[tuple[int, str]]:
    """``"128:demo,256:lits"`` -> ``[(128, "demo"), (256, "lits")]``."""
    out = []
    for item in text.split(","):
        size, _, preset = item.partition(":")
        if preset not in ("demo", "lits"):
            raise SystemExit(f"--sizes: {item!r}: expected SIZE:demo or SIZE:lits")
        out.append((int(size), preset))
    return out


def _crop_or_pad(data: np.ndarray, size: int) -> np.ndarray:
    """Centre crop / zero pad of a 3D array to ``size^3``."""
    out = np.zeros((size, size, size), dtype=data.dtype)
    src, dst = [], []
    for n in data.shape:
        if n >= size:
            start = (n - size) // 2
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            start = (size - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = data[tuple(src)]
    return out


def make_scaling(args: argparse.Namespace) -> None:
    """Inputs of the memory-scaling study: ``<root>/scaling/<preset>-<size>.nii[.gz]``."""
    folder: Path = args.root / "scaling"
    for size, preset in _parse_sizes(args.sizes):
        if preset == "demo":
            path = folder / f"demo-{size}.nii.gz"
            if path.exists() and not args.overwrite:
                continue
            source = nib.load(args.demo_subject)
            data = _crop_or_pad(np.asarray(source.dataobj), size)
            _save(data, source.affine, path)
        else:
            path = folder / f"lits-{size}{args.lits_suffix}"
            if path.exists() and not args.overwrite:
                continue
            case = ct_liver_case(args.seed + HELD_OUT_SEED + size, (size, size, size))
            _save(case.hu, case.affine, path)
        print(f"scaling input: {path}", flush=True)


# ----------------------------------------------------------------------------- manifest


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _voxels(path: Path, fallback: Sequence[int]) -> int:
    """Spatial voxels of a NIfTI file or of a BraTS case folder's first channel."""
    try:
        if path.is_dir():
            path = sorted(path.glob("*_flair.nii*"))[0]
        shape = nib.load(path).shape[:3]
    except (OSError, IndexError, nib.filebasedimages.ImageFileError):
        shape = tuple(fallback)
    return int(np.prod(shape))


def write_manifest(args: argparse.Namespace) -> Path:
    """``<root>/workloads.json``: workloads a, b, c and the scaling inputs (existing files only for
    scaling; a, b, c are listed even before their files exist, the benchmark checks)."""
    root: Path = args.root
    facts = _read_json(root / "cases.json")
    demo_subject = Path(args.demo_subject)
    # nnU-Net layout: imagesTr/<case>_0000.nii.gz -> labelsTr/<case>.nii.gz
    demo_label = demo_subject.parent.parent / "labelsTr" / demo_subject.name.replace("_0000.nii", ".nii")
    entries = [Workload("a", _rel(demo_subject), _rel(Path(args.demo_model)), _rel(Path(args.demo_checkpoint)),
                        "demo", _voxels(demo_subject, (197, 233, 189)),
                        "held-out 1 mm demo subject, default model (demo C)",
                        label=_rel(demo_label) if demo_label.exists() else "")]
    case_b = f"BraTS20_Training_{HELD_OUT_SEED}"
    inputs = {"b": root / "brats-test" / case_b, "c": root / "lits-test" / f"volume-{HELD_OUT_SEED}{args.lits_suffix}"}
    labels = {"b": inputs["b"] / f"{case_b}_seg.nii.gz",
              "c": root / "lits-test" / f"segmentation-{HELD_OUT_SEED}{args.lits_suffix}"}
    notes = {"b": "BraTS-like 4x240x240x155, brats C trained briefly on synthetic cases",
             "c": "CT-like 1x512^3, lits C trained briefly on synthetic cases"}
    for key, run in PRESET_RUNS.items():
        evaluation = _read_json(root / "runs" / run.name / "evaluate_held_out.json")
        case_facts = dict(facts.get(key, {}).get("held_out", {}))
        if evaluation.get("dice") is not None:
            case_facts["held_out_dice_adaptive_torch"] = evaluation["dice"]
        entries.append(Workload(key, _rel(inputs[key]), _rel(root / "models" / run.name),
                                _rel(root / "runs" / run.name / "last.pt"), run.preset,
                                _voxels(inputs[key], run.shape), notes[key], case_facts, _rel(labels[key])))
    scaling = []
    model_of = {"demo": entries[0], "lits": entries[2]}
    for size, preset in _parse_sizes(args.sizes):
        name = f"demo-{size}.nii.gz" if preset == "demo" else f"lits-{size}{args.lits_suffix}"
        path = root / "scaling" / name
        if path.exists():
            model = model_of[preset]
            scaling.append(Workload(f"scaling-{size}", _rel(path), model.model_dir, model.checkpoint, preset,
                                    size**3, f"{size}^3, {preset} preset"))
    manifest = root / MANIFEST
    _write_json(manifest, {"workloads": [asdict(w) for w in entries], "scaling": [asdict(w) for w in scaling],
                           "tiny": bool(args.tiny)})
    print(f"manifest: {manifest}")
    return manifest


# ---------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("data", "train", "export", "scaling", "manifest", "all"))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where everything is written")
    parser.add_argument("--which", default="b,c", help="synthetic workloads to build: b, c or b,c")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, models and steps (script tests only)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (training cases seed+1.., held-out seed+900)")
    parser.add_argument("--overwrite", action="store_true", help="data/scaling: replace existing files")
    parser.add_argument("--train-cases", type=int, default=0, help="training cases per workload (0: b 8, c 4)")
    parser.add_argument("--lits-suffix", default=".nii", help="file suffix of CT volumes (LiTS ships .nii)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--points", type=int, default=4096, help="query points per volume per step (<= 2^12)")
    parser.add_argument("--batch", type=int, default=0, help="volumes per step; 0 = ossnet-train's memory plan")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training (0 = default)")
    parser.add_argument("--sampling", default="border", choices=("uniform", "border"))
    parser.add_argument("--freeze-bn-after", type=float, default=1.0,
                        help="train the last part with running BatchNorm statistics, from at least the first LR "
                             "drop (docs/training.md); 1 = never, ossnet-train's default")
    parser.add_argument("--fit-arg", action="append", default=[], help="extra ossnet-train fit argument (repeat)")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                        help="skip ossnet-train evaluate on the held-out case after training")
    parser.add_argument("--sizes", default=None,
                        help=f"scaling inputs SIZE:PRESET (demo: crops of the demo subject; lits: CT phantoms); "
                             f"default {FULL_SIZES} ({TINY_SIZES} with --tiny)")
    parser.add_argument("--demo-subject", default=str(DEFAULT_DEMO_SUBJECT), help="workload a's input")
    parser.add_argument("--demo-model", default=str(DEFAULT_DEMO_MODEL), help="workload a's exported model")
    parser.add_argument("--demo-checkpoint", default=str(DEFAULT_DEMO_CHECKPOINT),
                        help="workload a's checkpoint (PyTorch eager comparison)")
    args = parser.parse_args(argv)
    args.which = [w for w in args.which.split(",") if w]
    if args.sizes is None:
        args.sizes = TINY_SIZES if args.tiny else FULL_SIZES
    if any(w not in PRESET_RUNS for w in args.which):
        parser.error(f"--which: expected a subset of {sorted(PRESET_RUNS)}")
    steps = {"data": [make_data], "train": [train], "export": [export], "scaling": [make_scaling], "manifest": [],
             "all": [make_data, train, export, make_scaling]}[args.step]
    for step in steps:
        step(args)
    write_manifest(args)


if __name__ == "__main__":
    main()
