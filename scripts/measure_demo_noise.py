"""The demo cohort's own noise level in normalised (z) units: the reason for the augmentation's noise sigma.

For each seed it generates the subject twice (``ossnet_train.demo_cohort``): as the cohort makes it
and with the noise switched off (``noise_range=(0, 0)``; every other random draw is the same, each
comes from its own seeded stream), so ``noisy - clean`` is exactly the noise the generator added.
Both are z-scored the way ``prepare_volume`` does (``zscore_foreground``: mean and standard
deviation over a foreground), with two foregrounds, because the rule decides the unit:

* ``brain``: the voxels where the noise-free image is above 0 (inside the warped template brain);
  what a foreground rule that ignores background noise selects, and all of a zero-background image;
* ``raw > 0``: every voxel above 0, the rule of ``foreground_threshold=0``; with Rician noise
  everywhere that is the whole field of view.

It prints, per seed and rule, the noise standard deviation inside the brain in z units (the
generator's Rician noise there is close to Gaussian: the signal is far above sigma), and the median z
of white matter (the label) and of the one-voxel shell of grey matter around it, for scale.

Usage::

    python scripts/measure_demo_noise.py 1000 1001 3004 [--variety acquisition]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from ossnet_deploy.morphology import max_filter
from ossnet_train.acquisition import draw_acquisition
from ossnet_train.demo_cohort import DemoParams, make_demo_subject


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seeds", type=int, nargs="+", help="demo seeds, e.g. 1000 1001")
    parser.add_argument("--variety", choices=("none", "acquisition"), default="none",
                        help="the cohort's variety (make-demo-data --variety)")
    args = parser.parse_args()
    print("| seed | variety | foreground | noise sigma (z) | WM median (z) | shell median (z) |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        acq = draw_acquisition(seed) if args.variety == "acquisition" else None
        noisy = make_demo_subject(seed, acquisition=acq)
        clean = make_demo_subject(seed, DemoParams(noise_range=(0.0, 0.0)),
                                  acquisition=dataclasses.replace(acq, noise_fraction=0.0) if acq else None)
        # The storage quantises both; its step is far below the noise (docs/data.md).
        label = noisy.label.astype(bool)
        brain = clean.image > 0
        shell = max_filter(label, 3) & ~label & brain
        noise = (noisy.image - clean.image)[brain & label]
        for name, fg in (("brain", brain), ("raw > 0", noisy.image > 0)):
            mean, std = float(noisy.image[fg].mean()), float(noisy.image[fg].std())
            z = (noisy.image - mean) / std
            print(f"| {seed} | {args.variety} | {name} | {noise.std() / std:.4f} | {np.median(z[label]):.2f} "
                  f"| {np.median(z[shell]):.2f} |")


if __name__ == "__main__":
    main()
