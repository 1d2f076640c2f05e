"""Where a demo model's errors are: next to the surface or not, by region, scheduler or decoder.

For every subject of one or more demo-cohort folders (``imagesTr/<case>_0000.nii.gz``,
``labelsTr/<case>.nii.gz``) this segments the T1 with ``ossnet_deploy.Segmenter`` twice, with
the ``adaptive`` scheduler (what users get) and ``dense`` (every voxel of the region decoded:
the decoder alone), and reports on the subject's own grid:

* Dice of both, and how many voxels the two disagree on (the scheduler's share of the errors);
* the adaptive result's false positives and negatives by their distance to the label's surface
  (6-neighbour rings: 1 = a surface voxel, 2 = one voxel in, ...; on either side), so "65 % of
  errors next to the surface" style statements come from a committed script;
* the errors by third of the brain along the superior axis (inferior / middle / superior;
  the cerebellum and brain stem sit in the inferior third) and by depth (superficial: within
  8 mm of the brain's outer surface, where sulci and thin gyral white matter are; deep: the
  rest); the brain is ``robustness_transforms.brain_mask`` of the image, as in the robustness
  benchmark;
* the best Dice any single intensity threshold reaches inside the brain on the image corrected
  with the bias-field settings the model declares (``ossnet_train.baselines.threshold_ceiling``),
  the ceiling of a model that does not use context.

Usage::

    python benchmarks/analyse_errors.py --model ~/ossnet-models/default-v2 --data ~/ossnet-data/test-6000 \\
        --out benchmarks/results/errors_default-v2.json [--threads 2] [--no-dense]

Writes the JSON and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import robustness_transforms as rt

from ossnet_deploy.bias_field import correct_bias
from ossnet_deploy.metrics import dice
from ossnet_deploy.morphology import erode, face_dilate
from ossnet_deploy.segmenter import Segmenter
from ossnet_train.baselines import threshold_ceiling

RINGS = 4  # distance rings reported: 1, 2, 3 and ">= 4"
SUPERFICIAL_MM = 8.0


def surface_rings(truth: np.ndarray, rings: int = RINGS) -> np.ndarray:
    """``(X, Y, Z)`` uint8: 1 on voxels whose 6-neighbourhood crosses the label's surface, 2 one
    voxel further (either side), ... ``rings`` for everything at that distance or more."""
    out = np.full(truth.shape, rings, dtype=np.uint8)
    boundary = face_dilate(truth) & face_dilate(~truth)  # voxels with a neighbour of the other class
    reached = boundary
    out[reached] = 1
    for ring in range(2, rings):
        grown = face_dilate(reached)
        out[grown & ~reached] = ring
        reached = grown
    return out


def superior_axis(affine: np.ndarray) -> int:
    """Voxel axis closest to world +S (RAS+)."""
    return int(np.argmax(np.abs(affine[2, :3])))


def analyse(seg_adaptive: Segmenter, seg_dense: Segmenter | None, image_path: Path, label_path: Path) -> dict[str, Any]:
    img = nib.load(image_path)
    truth = np.asanyarray(nib.load(label_path).dataobj) > 0
    started = time.perf_counter()
    pred = np.asarray(seg_adaptive.segment(image_path).dataobj) > 0
    adaptive_s = time.perf_counter() - started
    row: dict[str, Any] = {"case_id": label_path.name.split(".")[0], "dice_adaptive": dice(pred, truth),
                           "adaptive_seconds": adaptive_s, "true_voxels": int(truth.sum())}
    if seg_dense is not None:
        started = time.perf_counter()
        dense = np.asarray(seg_dense.segment(image_path).dataobj) > 0
        row.update(dice_dense=dice(dense, truth), dense_seconds=time.perf_counter() - started,
                   adaptive_vs_dense_voxels=int((dense != pred).sum()))
    fp, fn = pred & ~truth, ~pred & truth
    errors = fp | fn
    n_err = int(errors.sum())
    row.update(false_positives=int(fp.sum()), false_negatives=int(fn.sum()), errors=n_err)
    rings = surface_rings(truth)
    row["errors_by_surface_distance"] = {
        (f">={RINGS}" if r == RINGS else str(r)): {
            "errors": int((errors & (rings == r)).sum()),
            "fraction_of_errors": float((errors & (rings == r)).sum() / max(n_err, 1)),
            "voxels_in_ring": int((rings == r).sum()),
        } for r in range(1, RINGS + 1)}
    raw = np.asarray(img.dataobj, dtype=np.float32)
    brain = rt.brain_mask(raw, img.affine)
    axis = superior_axis(img.affine)
    coords = np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    lo, hi = int(coords.min()), int(coords.max()) + 1
    cuts = np.linspace(lo, hi, 4).round().astype(int)
    flip = img.affine[2, axis] < 0  # voxel index grows towards inferior
    names = ["inferior", "middle", "superior"][::-1] if flip else ["inferior", "middle", "superior"]
    regions: dict[str, Any] = {}
    for k, name in enumerate(names):
        sl = [slice(None)] * 3
        sl[axis] = slice(cuts[k], cuts[k + 1])
        t, p = truth[tuple(sl)], pred[tuple(sl)]
        regions[name] = {"dice": dice(p, t), "errors": int((p != t).sum()),
                         "fraction_of_errors": float((p != t).sum() / max(n_err, 1))}
    spacing = np.asarray(img.header.get_zooms()[:3], dtype=float)
    inner = erode(brain, max(1, round(SUPERFICIAL_MM / float(spacing.min()))))
    for name, mask in (("superficial", brain & ~inner), ("deep", inner)):
        regions[name] = {"dice": dice(pred & mask, truth & mask), "errors": int((errors & mask).sum()),
                         "fraction_of_errors": float((errors & mask).sum() / max(n_err, 1))}
    row["regions"] = regions
    pre = seg_adaptive.preprocess
    data = raw
    if pre.bias_correction != "none":
        data = correct_bias(raw[None], spacing, grid_mm=pre.bias_grid_mm, sigma_mm=pre.bias_sigma_mm,
                            iterations=pre.bias_iterations, tolerance=pre.bias_tolerance)[0]
    row["threshold_ceiling_dice"], _ = threshold_ceiling(data, truth, brain)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    has_dense = "dice_dense" in rows[0]
    head = ["case", "Dice adaptive"] + (["Dice dense", "adaptive != dense voxels"] if has_dense else []) + [
        "threshold ceiling", "errors (FP/FN)", "at surface (ring 1)", "ring 2", "ring 3", ">= 4",
        "inferior / middle / superior Dice", "superficial / deep Dice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ring = r["errors_by_surface_distance"]
        cells = [r["case_id"], f"{r['dice_adaptive']:.4f}"]
        if has_dense:
            cells += [f"{r['dice_dense']:.4f}", str(r["adaptive_vs_dense_voxels"])]
        g = r["regions"]
        cells += [f"{r['threshold_ceiling_dice']:.4f}", f"{r['errors']} ({r['false_positives']}/{r['false_negatives']})"]
        cells += [f"{ring[k]['fraction_of_errors']:.0%}" for k in ("1", "2", "3", f">={RINGS}")]
        cells += [" / ".join(f"{g[k]['dice']:.3f}" for k in ("inferior", "middle", "superior")),
                  " / ".join(f"{g[k]['dice']:.3f}" for k in ("superficial", "deep"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--data", type=Path, action="append", required=True, help="demo-cohort folder (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="JSON output")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense decoding (about 4x slower)")
    args = parser.parse_args()
    adaptive = Segmenter.from_dir(args.model, device=args.device, threads=args.threads)
    dense = None if args.no_dense else Segmenter(adaptive.pair, mode="dense")
    rows = []
    for folder in args.data:
        for label_path in sorted((folder.expanduser() / "labelsTr").glob("*.nii.gz")):
            case = label_path.name[: -len(".nii.gz")]
            image_path = folder.expanduser() / "imagesTr" / f"{case}_0000.nii.gz"
            row = analyse(adaptive, dense, image_path, label_path)
            print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)
            rows.append(row)
    result = {"command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "model": str(args.model or "bundled"), "pair_id": adaptive.pair.encoder_meta.pair_id,
              "preprocess": dataclasses.asdict(adaptive.preprocess), "subjects": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=list))
    tmp.replace(args.out)
    print(markdown(rows))


if __name__ == "__main__":
    main()
