"""``ossnet-segment --engine ray``: the same labels as the local run, and nothing lost.

One local Ray (2 CPUs, no dashboard) serves the whole module; the engine uses a session that
is already open. Volumes are 24-32 voxels a side and the model is the analytic threshold pair
of ``synthetic_models.py``, so Ray's own costs (actor start, restarts) dominate the time.
Skipped where the ``ray`` extra is not installed (the runtime-only CI environment).
"""

from __future__ import annotations

import _thread
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from synthetic_models import expected_threshold_labels, two_level_phantom, write_threshold_pair

pytest.importorskip("ray.data", reason="the 'ray' extra is not installed: pip install \"ossnet[ray]\"")

import ray
from ray_probes import ProbeFactory

import ossnet_deploy
from ossnet_deploy.cli import main
from ossnet_deploy.cohort import CaseSettings, ModelOptions
from ossnet_deploy.cohort_ray import CohortInterrupted, RayOptions, segment_cohort
from ossnet_deploy.manifest import MANIFEST_NAME, read_manifest

PREPROCESS = {"geometry": "fixed_spacing_pad", "shape": [32, 32, 24], "channels": ["t1"],
              "intensity": "zscore_foreground"}
AFFINE = np.array([[-1.0, 0, 0, 10], [0, 1.0, 0, -12], [0, 0, 1.0, 4], [0, 0, 0, 1]])
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    # The actors import this checkout's ossnet_deploy and the probes beside this file.
    package_root = Path(ossnet_deploy.__file__).resolve().parents[1]
    path = os.pathsep.join([str(package_root), str(HERE), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    write_threshold_pair(folder, PREPROCESS)
    return folder


def _phantom(i: int) -> np.ndarray:
    # The shapes of test_segment_cli.py, whose analytic labels hold exactly.
    return two_level_phantom(centre=(8.0 + 2 * (i % 5), 12.0, 9.0), radius=3.0 + (i % 5) / 2)


def _cohort(root: Path, n: int, broken: tuple[int, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = root / f"sub{i:02d}.nii.gz"
        if i in broken:
            path.write_bytes(b"\x1f\x8b" + b"not really gzip")
        else:
            nib.save(nib.Nifti1Image(_phantom(i), AFFINE), path)
    return root


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _fingerprint(folder: Path) -> dict[str, int]:
    """Output files (not the manifest, not hidden files: those are checked by name)."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()
            if p.name != MANIFEST_NAME and not p.name.startswith(".")}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _run_cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _statuses(folder: Path, run: int = -1) -> dict[str, str]:
    records = read_manifest(folder / MANIFEST_NAME)
    runs = list(dict.fromkeys(r.run_id for r in records))
    return {r.case: r.status for r in records if r.run_id == runs[run]}


def test_labels_equal_the_local_run_and_a_rerun_writes_only_what_is_missing(model: Path, tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "cohort", 6, broken=(5,))
    flat = np.zeros_like(_phantom(0))
    flat[10:20, 10:20, 8:16] = 20.0  # one grey level: an empty segmentation, which the domain check flags
    nib.save(nib.Nifti1Image(flat, AFFINE), cohort / "sub06.nii.gz")
    local, remote = tmp_path / "local", tmp_path / "ray"
    code, _, stderr = _run_cli("-i", cohort, "-o", local, "-m", model, "-d", "cpu", "--threads", "1", "-q")
    assert code == 1 and "sub05.nii.gz: not a readable NIfTI file" in stderr
    code, stdout, stderr = _run_cli("-i", cohort, "-o", remote, "-m", model, "-d", "cpu", "--engine", "ray",
                                    "--actors", 2)
    assert code == 1, stderr
    assert "sub05.nii.gz: not a readable NIfTI file" in stderr and "1 of 7 case(s) failed" in stderr
    assert "status" in stdout and "ray: 2 actor(s) x 1 thread(s)" in stdout
    (warned,) = [r for r in read_manifest(remote / MANIFEST_NAME) if r.warnings]
    assert warned.case == "sub06" and warned.status == "warned" and "segmentation is empty" in warned.warnings[0]
    assert f"warning: sub06: {warned.warnings[0]}" in stderr  # the actor's finding, shown by the driver
    assert sorted(_fingerprint(remote)) == sorted(_fingerprint(local)) == [f"sub{i:02d}.nii.gz" for i in (0, 1, 2, 3, 4, 6)]
    for i in range(5):
        name = f"sub{i:02d}.nii.gz"
        np.testing.assert_array_equal(_labels(remote / name), _labels(local / name))
        np.testing.assert_array_equal(_labels(remote / name), expected_threshold_labels(_phantom(i)))
    local_records = {r.case: r for r in read_manifest(local / MANIFEST_NAME)}
    ray_records = {r.case: r for r in read_manifest(remote / MANIFEST_NAME)}
    assert {c: r.status for c, r in ray_records.items()} == {c: r.status for c, r in local_records.items()}
    assert ray_records["sub05"].error == local_records["sub05"].error
    assert all(r.engine == "ray" and r.pair_id == local_records["sub00"].pair_id for r in ray_records.values())
    assert all(r.queries == local_records[c].queries for c, r in ray_records.items() if r.status == "done")
    assert not _hidden(remote)

    # Rerun after losing two outputs and repairing the broken input: only those three are written.
    (remote / "sub01.nii.gz").unlink()
    (remote / "sub03.nii.gz").unlink()
    nib.save(nib.Nifti1Image(_phantom(5), AFFINE), cohort / "sub05.nii.gz")
    before = _fingerprint(remote)
    code, _, stderr = _run_cli("-i", cohort, "-o", remote, "-m", model, "-d", "cpu", "--engine", "ray",
                               "--actors", 2, "-q")
    assert code == 0, stderr
    after = _fingerprint(remote)
    assert {n for n in after if after[n] != before.get(n)} == {"sub01.nii.gz", "sub03.nii.gz", "sub05.nii.gz"}
    rerun = _statuses(remote)
    assert {c for c, s in rerun.items() if s == "skipped"} == {"sub00", "sub02", "sub04", "sub06"}
    assert {c for c, s in rerun.items() if s in ("done", "warned")} == {"sub01", "sub03", "sub05"}
    np.testing.assert_array_equal(_labels(remote / "sub05.nii.gz"), expected_threshold_labels(_phantom(5)))


def test_a_folder_of_dicom_studies_runs_on_actors_as_locally(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom", reason="the 'dicom' extra is not installed")
    pytest.importorskip("highdicom", reason="the 'dicom' extra is not installed")
    import zipfile

    from dicom_writer import PATIENT_ID, PATIENT_NAME, write_series

    model = tmp_path / "model"
    codes = {"1": {"category": ["SCT", "91723000", "Anatomical Structure"], "type": ["SCT", "12738006", "Brain"],
                   "source": "test"}}
    write_threshold_pair(model, PREPROCESS, label_codes=codes, labels={"1": "brain"})
    root = tmp_path / "studies"
    write_series(root / "study_a", _phantom(0), AFFINE, study_uid="1.2.3.1")
    zipped = write_series(tmp_path / "zipsrc", _phantom(3), AFFINE, study_uid="1.2.3.2")
    with zipfile.ZipFile(root / "study_b.zip", "w") as z:
        for f in zipped.files:
            z.write(f, f.name)
    local, remote = tmp_path / "local", tmp_path / "ray"
    code, _, stderr = _run_cli("-i", root, "-o", local, "-m", model, "-d", "cpu", "--threads", "1", "-q")
    assert code == 0, stderr
    code, _, stderr = _run_cli("-i", root, "-o", remote, "-m", model, "-d", "cpu", "--engine", "ray", "--actors", 1)
    assert code == 0, stderr
    assert sorted(_fingerprint(remote)) == sorted(_fingerprint(local)) == ["study_a.dcm", "study_b.dcm"]
    for name in ("study_a.dcm", "study_b.dcm"):
        ours, theirs = pydicom.dcmread(remote / name), pydicom.dcmread(local / name)
        assert ours.Modality == "SEG" and ours.StudyInstanceUID == theirs.StudyInstanceUID
        np.testing.assert_array_equal(ours.pixel_array, theirs.pixel_array)
        assert ours.pixel_array.any()
        frames = [[f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                   for f in ds.PerFrameFunctionalGroupsSequence] for ds in (ours, theirs)]
        assert frames[0] == frames[1]
    manifest = (remote / MANIFEST_NAME).read_text()
    assert PATIENT_NAME not in manifest and PATIENT_ID not in manifest  # paths, statuses, timings only
    records = {r.case: r for r in read_manifest(remote / MANIFEST_NAME)}
    assert {c: (r.status, r.engine) for c, r in records.items()} == {"study_a": ("done", "ray"),
                                                                     "study_b": ("done", "ray")}
    assert records["study_b"].inputs == (str(root / "study_b.zip"),) and records["study_a"].pid != os.getpid()


def test_corrupted_files_lose_no_good_case_and_actors_import_no_torch(model: Path, tmp_path: Path) -> None:
    broken = (3, 14)  # 10 % of 20
    cohort = _cohort(tmp_path / "cohort", 20, broken=broken)
    out, probes = tmp_path / "out", tmp_path / "probes"
    probes.mkdir()
    seen = []
    run = segment_cohort(cohort, out, model=ModelOptions(model, device="cpu"), options=RayOptions(actors=2),
                         on_record=seen.append, segmenter_factory=ProbeFactory(probes))
    assert run.failed == 2 and len(run.records) == 20 and len(seen) == 20
    by_case = {r.case: r for r in run.records}
    for i in range(20):
        record = by_case[f"sub{i:02d}"]
        if i in broken:
            assert record.status == "failed" and record.error_type == "InputError"
            assert f"sub{i:02d}.nii.gz: not a readable NIfTI file" in (record.error or "")
            assert not (out / f"sub{i:02d}.nii.gz").exists()
        else:
            assert record.status in ("done", "warned"), record  # warned: a plausibility note, still written
            np.testing.assert_array_equal(_labels(out / f"sub{i:02d}.nii.gz"), expected_threshold_labels(_phantom(i)))
    assert [r.case for r in read_manifest(out / MANIFEST_NAME)] == [r.case for r in seen]
    assert run.plan is not None and run.plan.actors == 2 and run.max_concurrent() <= 2
    actors = [json.loads(p.read_text()) for p in probes.glob("actor-*.json")]
    assert actors and all(a["pid"] != os.getpid() for a in actors)
    for actor in actors:
        assert actor["forbidden"] == [], actor  # no torch (nor training/export code) in an actor
        assert Path(actor["ossnet_deploy"]).resolve() == Path(ossnet_deploy.__file__).resolve()
        assert actor["omp_threads"] == "1"


def test_an_actor_killed_mid_case_loses_nothing(model: Path, tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "cohort", 8)
    out, probes = tmp_path / "out", tmp_path / "probes"
    probes.mkdir()
    killed: list[tuple[int, str]] = []

    def kill_one_busy_actor() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = sorted(probes.glob("busy-*"))
            if busy and any(out.glob("*.nii.gz")):  # mid-run: a case finished, another is running
                try:
                    case = busy[0].read_text().removesuffix(".nii.gz")
                except FileNotFoundError:  # that case just ended; look again
                    continue
                pid = int(busy[0].name.split("-")[1])
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, case))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_busy_actor)
    killer.start()
    run = segment_cohort(cohort, out, model=ModelOptions(model, device="cpu"),
                         options=RayOptions(actors=2, max_retries=2),
                         segmenter_factory=ProbeFactory(probes, delay=0.4))
    killer.join()
    assert killed, "no actor was caught mid-case"
    assert [r.failed for r in run.records] == [False] * 8
    pid, case = killed[0]
    redone = next(r for r in run.records if r.case == case)
    assert redone.pid != pid  # the case it was segmenting came back from another process
    assert run.worker_processes() >= 2
    assert sorted(_fingerprint(out)) == [f"sub{i:02d}.nii.gz" for i in range(8)]
    for i in range(8):
        np.testing.assert_array_equal(_labels(out / f"sub{i:02d}.nii.gz"), expected_threshold_labels(_phantom(i)))
    assert not _hidden(out)  # the killed writer's temporary file, if any, was removed


def test_a_case_that_kills_every_actor_fails_after_max_retries_and_the_run_ends(model: Path, tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "cohort", 4)
    nib.save(nib.Nifti1Image(_phantom(0), AFFINE), cohort / "poison.nii.gz")
    out, probes = tmp_path / "out", tmp_path / "probes"
    probes.mkdir()
    run = segment_cohort(cohort, out, model=ModelOptions(model, device="cpu"),
                         options=RayOptions(actors=2, max_retries=1),
                         segmenter_factory=ProbeFactory(probes, crash_on=("poison",)))
    statuses = {r.case: r.status for r in run.records}
    assert statuses.pop("poison") == "failed" and set(statuses) == {"sub00", "sub01", "sub02", "sub03"}
    assert not any(r.failed for r in run.records if r.case != "poison")
    poison = next(r for r in run.records if r.case == "poison")
    assert poison.error_type == "WorkerLost" and "after 2 attempt(s)" in (poison.error or "")
    crashes = (probes / "crashes.log").read_text().splitlines()
    assert len(crashes) == 2  # the first try plus max_retries=1, not more
    assert _statuses(out)["poison"] == "failed"
    assert not (out / "poison.nii.gz").exists() and not _hidden(out)


def test_ctrl_c_leaves_no_partial_output_and_a_manifest_of_what_finished(model: Path, tmp_path: Path) -> None:
    cohort = _cohort(tmp_path / "cohort", 10)
    out, probes = tmp_path / "out", tmp_path / "probes"
    probes.mkdir()

    returned = threading.Event()
    pressed: list[float] = []
    # A shell that starts pytest in the background (`cmd &`) has it ignore SIGINT, and then
    # interrupt_main() does nothing; a user's foreground process has Python's handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def press_ctrl_c_after_the_first_output() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not returned.is_set():
            if any(out.glob("*.nii.gz")):
                _thread.interrupt_main()  # KeyboardInterrupt in the driver, as Ctrl-C raises it
                pressed.append(time.monotonic())
                return
            time.sleep(0.02)

    presser = threading.Thread(target=press_ctrl_c_after_the_first_output)
    presser.start()
    started = time.monotonic()
    try:
        with pytest.raises(CohortInterrupted) as stopped:
            run = segment_cohort(cohort, out, model=ModelOptions(model, device="cpu"), options=RayOptions(actors=2),
                                 settings=CaseSettings(), segmenter_factory=ProbeFactory(probes, delay=1.0))
            pytest.fail(f"not interrupted: presses at {[round(t - started, 2) for t in pressed]} s, run ended at "
                        f"{time.monotonic() - started:.2f} s with {[r.status for r in run.records]}, "
                        f"SIGINT handler {signal.getsignal(signal.SIGINT)}")
    finally:
        returned.set()
        signal.signal(signal.SIGINT, previous)
    presser.join()
    finished = {p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")}
    time.sleep(2.5)  # 5 cases per actor, 1 s each: had the actors not been stopped, outputs would appear
    assert {p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")} == finished
    statuses = _statuses(out)
    assert len(statuses) == 10 and 0 < stopped.value.ended < 10
    assert {c for c, s in statuses.items() if s in ("done", "warned")} == finished
    assert {c for c, s in statuses.items() if s == "interrupted"} == set(statuses) - finished
    for name in finished:
        np.testing.assert_array_equal(_labels(out / f"{name}.nii.gz"), expected_threshold_labels(_phantom(int(name[3:]))))
    # Only the stop marker the actors read (this Ray session lives on); nothing half-written.
    assert [name.startswith(".ossnet-stop-") for name in _hidden(out)] == [True]
    # A rerun finishes the rest and rewrites nothing that was done.
    before = _fingerprint(out)
    run = segment_cohort(cohort, out, model=ModelOptions(model, device="cpu"), options=RayOptions(actors=2))
    assert run.failed == 0 and {n: t for n, t in _fingerprint(out).items() if n in before} == before
    assert sorted(_fingerprint(out)) == [f"sub{i:02d}.nii.gz" for i in range(10)]
    assert not _hidden(out)
