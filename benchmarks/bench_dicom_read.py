"""What reading a DICOM series costs over reading the same volume as NIfTI (docs/design.md#dicom).

The bundled sample (``examples/demo_3004_t1.nii.gz``: 197 x 233 x 189 voxels of 1 mm, uint8 with
a scale factor) is written as a DICOM series of single-frame MR images holding the same stored
values and scale (``tests/deploy/dicom_writer.py``, the tests' own writer, so there is one
writer: 189 uncompressed files, shuffled into two sub-folders). Then, alternately, one fresh
process reads the NIfTI and one reads the series with the runtime's reader
(``ossnet_deploy.inputs.resolve_volume``: header scan, checks, pixels, rescale), each timing only
that call; the figure is the median over repeats of the per-repeat difference (DICOM minus
NIfTI) and of the per-repeat ratio (docs/design.md#measuring).

``--segment`` also runs ``ossnet-segment`` with the bundled model once on each input, NIfTI
output from both and SEG from the series, and reports the labels' agreement in world space.

Usage::

    python benchmarks/bench_dicom_read.py [--repeats 7] [--segment] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, RESULTS, environment, environment_markdown, spawn, table, worker_main

SAMPLE = REPO / "examples" / "demo_3004_t1.nii.gz"


def _read_worker(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    from ossnet_deploy.inputs import resolve_volume

    imported = time.perf_counter()
    volume = resolve_volume(spec["path"], ["t1"])
    done = time.perf_counter()
    return {"read_seconds": done - imported, "import_seconds": imported - started,
            "shape": list(volume.data.shape), "repeat": spec["repeat"]}


WORKERS = {"read": _read_worker}


def write_sample_series(folder: Path) -> Path:
    """The sample as a DICOM series with the NIfTI's stored values and scale factor."""
    import nibabel as nib
    import numpy as np

    sys.path.insert(0, str(REPO / "tests" / "deploy"))
    from dicom_writer import write_series

    image = nib.load(SAMPLE)
    slope, intercept = image.dataobj.slope, image.dataobj.inter
    values = np.asarray(image.dataobj, dtype=np.float64)
    written = write_series(folder, values, image.affine, slope=float(slope), intercept=float(intercept))
    stored = np.asarray(image.dataobj.get_unscaled())
    if not np.array_equal(written.stored, stored):
        raise SystemExit("the series does not hold the NIfTI's stored values")
    return folder


def _segment(series: Path, work: Path) -> dict[str, Any]:
    import nibabel as nib
    import numpy as np

    exe = str(Path(sys.executable).parent / "ossnet-segment")
    command = [exe] if Path(exe).exists() else [sys.executable, "-c", "from ossnet_deploy.cli import main; main()"]
    runs = {}
    for name, source, output in (("nifti", SAMPLE, work / "nifti.nii.gz"), ("dicom", series, work / "dicom.nii.gz"),
                                 ("dicom_seg", series, work / "seg.dcm")):
        started = time.perf_counter()
        done = subprocess.run([*command, "-i", str(source), "-o", str(output), "-d", "cpu", "-q"],
                              capture_output=True, text=True, check=False, cwd=REPO)
        runs[name] = {"seconds": time.perf_counter() - started, "exit": done.returncode, "stderr": done.stderr[-2000:]}
    ref, got = nib.load(work / "nifti.nii.gz"), nib.load(work / "dicom.nii.gz")
    m = np.rint(np.linalg.inv(got.affine) @ ref.affine)
    idx = np.indices(ref.shape).reshape(3, -1)
    mapped = (m[:3, :3] @ idx + m[:3, 3:4]).astype(np.int64)
    ours = np.asarray(got.dataobj)[mapped[0], mapped[1], mapped[2]].reshape(ref.shape)
    theirs = np.asarray(ref.dataobj)
    both = np.count_nonzero(ours & theirs)
    runs["agreement"] = {"identical": bool(np.array_equal(ours, theirs)),
                         "fraction_equal": float(np.mean(ours == theirs)),
                         "dice": float(2 * both / max(np.count_nonzero(ours) + np.count_nonzero(theirs), 1)),
                         "seg_bytes": (work / "seg.dcm").stat().st_size if (work / "seg.dcm").exists() else None}
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--segment", action="store_true", help="also segment both inputs with the bundled model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ossnet-dicom-bench-") as tmp:
        series = write_sample_series(Path(tmp) / "series")
        runs: dict[str, list[dict[str, Any]]] = {"nifti": [], "dicom": []}
        for repeat in range(args.repeats):
            for name, path in (("nifti", SAMPLE), ("dicom", series)):
                runs[name].append(spawn(__file__, "read", {"path": str(path), "repeat": repeat}, threads=1,
                                        timeout=600))
        segment = _segment(series, Path(tmp)) if args.segment else None
    nifti = [r["read_seconds"] for r in runs["nifti"]]
    dicom = [r["read_seconds"] for r in runs["dicom"]]
    added = statistics.median(d - n for d, n in zip(dicom, nifti, strict=True))
    ratio = statistics.median(d / n for d, n in zip(dicom, nifti, strict=True))
    env = environment(1, {"repeats": args.repeats})
    rows = [["NIfTI (.nii.gz)", f"{statistics.median(nifti):.3f}", ""],
            ["DICOM series (189 files)", f"{statistics.median(dicom):.3f}", f"+{added:.3f} s ({ratio:.2f}x)"]]
    markdown = (f"# DICOM reading vs NIfTI\n\n{environment_markdown(env)}\n\n"
                f"`resolve_volume` on the bundled sample (197 x 233 x 189, 1 mm), one fresh process per read, "
                f"alternating, {args.repeats} repeats; medians (added: median of per-repeat differences and "
                f"ratios).\n\n" + table(["input", "read s (median)", "added over NIfTI"], rows))
    if segment is not None:
        agreement = segment["agreement"]
        markdown += ("\n\n`ossnet-segment` once each (bundled model, CPU, whole process): " +
                     ", ".join(f"{k} {v['seconds']:.1f} s (exit {v['exit']})" for k, v in segment.items()
                               if k != "agreement") +
                     f"; labels from the series vs from the NIfTI: identical {agreement['identical']}, "
                     f"fraction equal {agreement['fraction_equal']:.6f}, Dice {agreement['dice']:.6f}; "
                     f"SEG {agreement['seg_bytes']} bytes.")
    from harness import write_results

    write_results("dicom_read", {"environment": env, "runs": runs, "segment": segment,
                                 "added_seconds": added, "ratio": ratio}, markdown, args.out)


if __name__ == "__main__":
    if not worker_main(WORKERS, sys.argv[1:]):
        main()
