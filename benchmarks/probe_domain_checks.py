"""How the runtime's input checks treat inputs made differently from the training data.

    ossnet-train make-demo-data /tmp/dom-acq --subjects 6 --seed-start 1000 --variety acquisition
    python benchmarks/bench_robustness.py --threads 1          # writes the held-out conditions once
    python benchmarks/probe_domain_checks.py /tmp/dom-acq [--data ~/ossnet-data/robustness]

Measures a :class:`~ossnet_deploy.domain.ModelDomain` on the training-like cohort (as training
does, ``ossnet_train.training_domain.measure_domain``, demo preset), then prepares every held-out
input of the robustness benchmark's conditions and prints each one ``check_input`` flags, and
how many it flagged. A flagged input that the model segments well is a false warning; the
foreign inputs the checks must flag are tested in tests/deploy/test_domain.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from ossnet_deploy.domain import check_input
from ossnet_deploy.preprocess import prepare_volume, preprocess_preset
from ossnet_train.datasets import make_dataset
from ossnet_train.training_domain import measure_domain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cohort", type=Path, help="a demo cohort folder (the domain's training cases)")
    parser.add_argument("--data", type=Path, default=Path.home() / "ossnet-data" / "robustness",
                        help="bench_robustness.py's data folder (imagesTr and conditions/<name>/imagesTr)")
    parser.add_argument("--preset", default="demo")
    args = parser.parse_args(argv)
    config = preprocess_preset(args.preset)
    domain = measure_domain(make_dataset("demo", args.cohort), config)
    print(f"domain of {domain.cases} case(s): rim {domain.rim_low} .. {domain.rim_high}; "
          f"quantiles {domain.quantiles_low} .. {domain.quantiles_high}")
    folders = [("as_generated", args.data / "imagesTr")]
    folders += sorted((p.name, p / "imagesTr") for p in (args.data / "conditions").iterdir() if (p / "imagesTr").is_dir())
    flagged = total = 0
    for condition, folder in folders:
        for path in sorted(folder.glob("*_0000.nii.gz")):
            image = nib.load(path)
            prepared = prepare_volume(np.asarray(image.dataobj, dtype=np.float32)[None], image.affine, config,
                                      fit="downsample", source=path)
            findings = [] if prepared.profile is None else check_input(prepared.profile, domain)
            total += 1
            if findings:
                flagged += 1
                print(f"{condition} {path.name}: {' / '.join(findings)}")
    print(f"flagged {flagged} of {total} held-out inputs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
