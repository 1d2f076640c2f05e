"""Write the bundled sample (``examples/``) from one held-out demo subject.

The sample must stay under 5 MB, so the image is stored as uint8 with a scale factor
(``scl_slope``; nibabel applies it on read) on the subject's own grid and affine: no crop, so
the model's placement and intensity statistics see the subject exactly as generated (up to the
8-bit quantisation, about 0.2 % of the intensity range), gzip level 9. The label is stored as
uint8 0/1.

Usage (after ``ossnet-train make-demo-data data/demo-test --subjects 6 --seed-start 3000``)::

    python scripts/make_sample.py data/demo-test demo_3000 examples
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import Opener


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="demo cohort folder (imagesTr/, labelsTr/)")
    parser.add_argument("case", help="case id, e.g. demo_3000")
    parser.add_argument("out", type=Path, help="output folder (examples/)")
    args = parser.parse_args()
    # nibabel writes gzip level 1 by default; level 9 is what keeps the noisy image under 5 MB.
    Opener.default_compresslevel = 9

    image = nib.load(args.dataset / "imagesTr" / f"{args.case}_0000.nii.gz")
    label = nib.load(args.dataset / "labelsTr" / f"{args.case}.nii.gz")
    data = image.get_fdata(dtype=np.float32)
    scale = float(data.max()) / 255.0
    quantised = np.clip(np.rint(data / scale), 0, 255).astype(np.uint8)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    out_image = nib.Nifti1Image(quantised, image.affine, header)
    out_image.header.set_slope_inter(scale, 0.0)
    args.out.mkdir(parents=True, exist_ok=True)
    image_path = args.out / f"{args.case}_t1.nii.gz"
    nib.save(out_image, image_path)

    label_header = label.header.copy()
    label_header.set_data_dtype(np.uint8)
    label_data = (np.asarray(label.dataobj) > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(label_data, label.affine, label_header), args.out / f"{args.case}_wm.nii.gz")
    notice = args.dataset / "MNI_NOTICE.txt"
    if notice.exists():
        shutil.copy(notice, args.out / "MNI_NOTICE.txt")
    total = 0
    for path in sorted(args.out.iterdir()):
        total += path.stat().st_size
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")
    print(f"total: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
