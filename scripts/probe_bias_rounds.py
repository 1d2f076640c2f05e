"""How many bias-field rounds a demo subject needs: fixed rounds against the convergence tolerance.

For each case of a demo-cohort folder this estimates the log bias field of the T1
(``ossnet_deploy.bias_field.estimate_log_bias``) with each setting below and reports, on the
corrected image:

* the white matter's brightness ratio between the two halves of the brain along each axis
  (median intensity of the label's voxels beyond its centre over those before it; 1.0 = flat);
* the spread of the white matter's log intensity (std), which a field widens;
* the rounds actually run and the seconds taken.

Usage::

    python scripts/probe_bias_rounds.py ~/ossnet-data/acq-val demo_2000 demo_2001

(docs/training.md, "Bias-field rounds", quotes its output).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np

import ossnet_deploy.bias_field as bias_field

SETTINGS = ((8, 0.0), (40, 0.0), (100, 0.0), (100, 0.01), (100, 0.005), (100, 0.002), (100, 0.001))


def halves(image: np.ndarray, label: np.ndarray) -> tuple[list[float], float]:
    centre = np.argwhere(label).mean(axis=0).astype(int)
    ratios = []
    for axis in range(3):
        before, after = [slice(None)] * 3, [slice(None)] * 3
        before[axis], after[axis] = slice(0, centre[axis]), slice(centre[axis], None)
        ratios.append(float(np.median(image[tuple(after)][label[tuple(after)]])
                            / np.median(image[tuple(before)][label[tuple(before)]])))
    return ratios, float(np.std(np.log(np.maximum(image[label], 1e-6))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="demo-cohort folder")
    parser.add_argument("cases", nargs="+", help="case ids, e.g. demo_2001")
    args = parser.parse_args()
    print("| case | rounds (cap) | tolerance | rounds run | WM ratio between halves (x / y / z) | WM log std | s |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        img = nib.load(args.data / "imagesTr" / f"{case}_0000.nii.gz")
        spacing = img.header.get_zooms()[:3]
        image = img.get_fdata(dtype=np.float32)
        label = np.asanyarray(nib.load(args.data / "labelsTr" / f"{case}.nii.gz").dataobj) > 0
        ratios, spread = halves(image, label)
        print(f"| {case} | uncorrected | | | {' / '.join(f'{r:.3f}' for r in ratios)} | {spread:.4f} | |")
        kmeans = bias_field._kmeans_1d
        for cap, tolerance in SETTINGS:
            rounds = [0]

            def counted(*a, _rounds=rounds, _kmeans=kmeans, **k):  # one k-means per round
                _rounds[0] += 1
                return _kmeans(*a, **k)

            bias_field._kmeans_1d = counted
            try:
                started = time.perf_counter()
                field = bias_field.estimate_log_bias(image, spacing, iterations=cap, tolerance=tolerance)
                seconds = time.perf_counter() - started
            finally:
                bias_field._kmeans_1d = kmeans
            ratios, spread = halves(image * np.exp(-field), label)
            print(f"| {case} | {cap} | {tolerance:g} | {rounds[0]} | {' / '.join(f'{r:.3f}' for r in ratios)} "
                  f"| {spread:.4f} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
