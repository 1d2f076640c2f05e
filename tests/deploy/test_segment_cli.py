"""``ossnet-segment``: inputs, outputs, skipping, sharding, previews, errors and exit codes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from synthetic_models import expected_threshold_labels, two_level_phantom, write_threshold_pair

from ossnet_deploy import devices
from ossnet_deploy.cli import main
from ossnet_deploy.devices import CPU_PROVIDER
from ossnet_deploy.manifest import MANIFEST_NAME, read_manifest

PREPROCESS = {"geometry": "fixed_spacing_pad", "shape": [32, 32, 24], "channels": ["t1"],
              "intensity": "zscore_foreground"}
PREPROCESS_2CH = {**PREPROCESS, "channels": ["flair", "t1"]}
AFFINE = np.array([[-1.0, 0, 0, 10], [0, 1.0, 0, -12], [0, 0, 1.0, 4], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    write_threshold_pair(folder, PREPROCESS)
    return folder


@pytest.fixture(scope="module")
def model_2ch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model2")
    write_threshold_pair(folder, PREPROCESS_2CH)
    return folder


def _phantom(i: int) -> np.ndarray:
    return two_level_phantom(centre=(8.0 + 2 * i, 12.0, 9.0), radius=3.0 + i / 2)


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def _cohort(root: Path, n: int = 3, bad: bool = True) -> Path:
    for i in range(n):
        _save(root / f"sub{i}.nii.gz", _phantom(i))
    if bad:
        (root / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"not really gzip")
    (root / "README.txt").write_text("not an image")
    return root


def _fingerprint(folder: Path) -> dict[str, tuple[int, str]]:
    """The files of ``folder`` but the manifest (which every run appends to)."""
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_NAME}


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != MANIFEST_NAME)


def _run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_single_file(model: Path, tmp_path: Path) -> None:
    image = _save(tmp_path / "in" / "sub0.nii.gz", _phantom(0))
    out = tmp_path / "seg.nii.gz"
    code, stdout, stderr = _run("-i", image, "-o", out, "-m", model, "-d", "cpu", "--threads", "1")
    assert code == 0, stderr
    seg = nib.load(out)
    assert seg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(seg.affine, nib.load(image).affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), expected_threshold_labels(_phantom(0)))
    assert "sub0: " in stdout and "queries" in stdout and "peak" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_folder_run_skips_bad_files_and_reruns_skip_finished(model: Path, tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "cohort")
    before = _fingerprint(cohort)
    out = tmp_path / "out"
    code, stdout, stderr = _run("-i", cohort, "-o", out, "-m", model, "-d", "cpu", "--threads", "1")
    assert code == 1
    assert _outputs(out) == ["sub0.nii.gz", "sub1.nii.gz", "sub2.nii.gz"]
    first = read_manifest(out / MANIFEST_NAME)
    assert {r.case: r.status for r in first} == {"broken": "failed", "sub0": "done", "sub1": "done", "sub2": "done"}
    broken = next(r for r in first if r.case == "broken")
    assert "not a readable NIfTI file" in (broken.error or "") and broken.error_type == "InputError"
    assert all(r.engine == "local" and r.pair_id and r.host and len({x.run_id for x in first}) == 1 for r in first)
    assert all(r.queries and r.seconds is not None for r in first if r.status == "done")
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2  # the broken file, then the count
    assert "broken.nii.gz: not a readable NIfTI file" in errors[0]
    assert "1 of 4 case(s) failed" in errors[1]
    assert "Traceback" not in stderr
    assert "status" in stdout and "failed" in stdout  # the final table
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(nib.load(out / f"sub{i}.nii.gz").dataobj),
                                      expected_threshold_labels(_phantom(i)))
    assert _fingerprint(cohort) == before  # inputs are never written
    finished = _fingerprint(out)
    code, stdout, _ = _run("-i", cohort, "-o", out, "-m", model, "-d", "cpu", "--threads", "1")
    assert code == 1
    assert stdout.count("skipped") >= 3
    assert _fingerprint(out) == finished  # nothing rewritten
    second = read_manifest(out / MANIFEST_NAME)[len(first):]  # appended, not rewritten
    assert {r.case: r.status for r in second} == {"broken": "failed", "sub0": "skipped", "sub1": "skipped",
                                                  "sub2": "skipped"}
    (cohort / "broken.nii.gz").unlink()
    code, _, _ = _run("-i", cohort, "-o", out, "-m", model, "-d", "cpu", "--threads", "1", "-q")
    assert code == 0


def test_overwrite(model: Path, tmp_path: Path) -> None:
    image = _save(tmp_path / "a.nii.gz", _phantom(1))
    out = tmp_path / "out" / "a.nii.gz"
    out.parent.mkdir()
    out.write_bytes(b"old")
    code, stdout, _ = _run("-i", image, "-o", out, "-m", model, "-d", "cpu")
    assert code == 0 and "skipped" in stdout and out.read_bytes() == b"old"
    code, _, _ = _run("-i", image, "-o", out, "-m", model, "-d", "cpu", "--overwrite")
    assert code == 0 and nib.load(out).shape == _phantom(1).shape


def test_output_may_not_replace_an_input(model: Path, tmp_path: Path) -> None:
    image = _save(tmp_path / "a.nii.gz", _phantom(1))
    before = _fingerprint(tmp_path)
    code, _, stderr = _run("-i", image, "-o", image, "-m", model, "-d", "cpu", "--overwrite")
    assert code == 1 and "output would replace an input file" in stderr
    assert _fingerprint(tmp_path) == before


def test_sharding_splits_the_sorted_cases(model: Path, tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "cohort", n=5, bad=False)
    outputs = []
    for part in range(2):
        out = tmp_path / f"part{part}"
        code, _, _ = _run("-i", cohort, "-o", out, "-m", model, "-d", "cpu", "--num-parts", 2, "--part-id", part)
        assert code == 0
        outputs.append(_outputs(out))
    assert outputs == [["sub0.nii.gz", "sub2.nii.gz", "sub4.nii.gz"], ["sub1.nii.gz", "sub3.nii.gz"]]
    code, _, stderr = _run("-i", cohort, "-o", tmp_path / "x", "-m", model, "--num-parts", 2, "--part-id", 2)
    assert code == 2 and "--part-id must be below --num-parts" in stderr


def test_preview_png(model: Path, tmp_path: Path) -> None:
    image = _save(tmp_path / "in" / "case.nii.gz", _phantom(2))
    code, _, _ = _run("-i", image, "-o", tmp_path / "out", "-m", model, "-d", "cpu", "--preview")
    assert code == 0
    png = tmp_path / "out" / "case.png"
    picture = Image.open(png)
    assert picture.format == "PNG" and picture.mode == "RGB" and picture.height == 256
    pixels = np.asarray(picture)
    outline = (pixels[..., 0] == 255) & (pixels[..., 1] == 40) & (pixels[..., 2] == 40)
    assert outline.sum() > 20  # the label outline is drawn
    grey = (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2]) & (pixels[..., 0] > 0)
    assert grey.sum() > 1000  # over the grey-value image


def test_channel_files_and_case_folders(model_2ch: Path, tmp_path: Path) -> None:
    flair = _phantom(0)
    t1 = np.where(flair > 0, 70.0, 0.0).astype(np.float32)
    case = tmp_path / "BraTS_01"
    f = _save(case / "BraTS_01_flair.nii.gz", flair)
    t = _save(case / "BraTS_01_t1.nii.gz", t1)
    expected = expected_threshold_labels(flair)
    for args, out in (
        (["-i", f, "-i", t], tmp_path / "o1"),
        (["-i", f"{f},{t}"], tmp_path / "o2"),
        (["-i", case], tmp_path / "o3"),
    ):
        code, _, stderr = _run(*args, "-o", out, "-m", model_2ch, "-d", "cpu")
        assert code == 0, stderr
        np.testing.assert_array_equal(np.asarray(nib.load(out / "BraTS_01.nii.gz").dataobj), expected)
    cohort = tmp_path / "cohort"
    (cohort).mkdir()
    case.rename(cohort / "BraTS_01")
    _save(cohort / "nn_0000.nii.gz", flair)
    _save(cohort / "nn_0001.nii.gz", t1)
    code, _, stderr = _run("-i", cohort, "-o", tmp_path / "o4", "-m", model_2ch, "-d", "cpu")
    assert code == 0, stderr
    assert _outputs(tmp_path / "o4") == ["BraTS_01.nii.gz", "nn.nii.gz"]
    code, _, stderr = _run("-i", cohort / "BraTS_01" / f.name, "-o", tmp_path / "o5", "-m", model_2ch, "-d", "cpu")
    assert code == 1 and "wrong number of channels" in stderr


def test_model_and_usage_errors(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _save(tmp_path / "a.nii.gz", _phantom(0))
    code, _, stderr = _run("-i", image, "-o", tmp_path / "o", "-m", tmp_path / "nomodel")
    assert code == 2 and stderr.count("\n") == 1 and "model folder not found" in stderr
    mismatched = tmp_path / "mismatched"
    write_threshold_pair(mismatched, PREPROCESS, pair_id="a" * 64, decoder_pair_id="b" * 64)
    code, _, stderr = _run("-i", image, "-o", tmp_path / "o", "-m", mismatched)
    assert code == 2 and "pair_id differs" in stderr
    code, _, stderr = _run("-i", image, "-o", tmp_path / "o", "-m", model, "--mode", "fast")
    assert code == 2 and "Invalid value for '--mode'" in stderr
    code, _, stderr = _run("-i", image, "-o", tmp_path / "o", "-m", model, "-d", "tpu")
    assert code == 2 and "unknown device 'tpu'" in stderr
    code, _, stderr = _run("-i", tmp_path, "-o", tmp_path / "x.nii.gz", "-m", model)
    assert code == 2 and "-o must be a folder" in stderr
    monkeypatch.setattr(devices, "available_providers", lambda: (CPU_PROVIDER,))
    code, _, stderr = _run("-i", image, "-o", tmp_path / "o", "-m", model, "-d", "cuda")
    assert code == 3 and devices.GPU_INSTALL_FIX in stderr and "onnxruntime-gpu[cuda,cudnn]==1.31.1" in stderr


def test_missing_input_and_verbose_traceback(model: Path, tmp_path: Path) -> None:
    code, _, stderr = _run("-i", tmp_path / "missing.nii.gz", "-o", tmp_path / "o", "-m", model, "-d", "cpu")
    assert code == 1 and "missing.nii.gz: image not found" in stderr and "Traceback" not in stderr
    code, _, stderr = _run("-i", tmp_path / "missing.nii.gz", "-o", tmp_path / "o", "-m", model, "-d", "cpu", "-v")
    assert code == 1 and "Traceback" in stderr


def test_quiet_prints_nothing_on_success(model: Path, tmp_path: Path) -> None:
    image = _save(tmp_path / "a.nii.gz", _phantom(0))
    code, stdout, stderr = _run("-i", image, "-o", tmp_path / "o", "-m", model, "-d", "cpu", "-q",
                                "--disable-progress-bar")
    assert code == 0 and stdout == "" and stderr == ""


def test_installed_entry_point_exit_codes(model: Path, tmp_path: Path) -> None:
    image = _save(tmp_path / "a.nii.gz", _phantom(0))
    command = [sys.executable, "-c", "from ossnet_deploy.cli import main; main()"]
    ok = subprocess.run([*command, "-i", str(image), "-o", str(tmp_path / "o"), "-m", str(model), "-d", "cpu"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "a.nii.gz").is_file()
    usage = subprocess.run([*command, "-o", "x"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "Missing option '-i'" in usage.stderr
