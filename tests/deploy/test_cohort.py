"""Cohort plumbing that needs no Ray: the manifest, actor sizing, leftovers, and the missing extra.

Runs in the runtime-only environment too, where ``ray`` is absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic_models import write_threshold_pair

from ossnet_deploy.atomic import remove_temporaries, temporary_sibling
from ossnet_deploy.cli import main
from ossnet_deploy.cohort import PlanError
from ossnet_deploy.cohort_ray import RayOptions, plan_actors, require_ray
from ossnet_deploy.errors import EXIT_DEPENDENCY, EXIT_INTERRUPTED, EXIT_USAGE, DependencyError
from ossnet_deploy.manifest import MANIFEST_NAME, CaseRecord, ManifestWriter, read_manifest
from ossnet_deploy.memory import case_peak_bytes, worker_bytes

MiB = 2**20
PREPROCESS = {"geometry": "fixed_spacing_pad", "shape": [32, 32, 24], "channels": ["t1"],
              "intensity": "zscore_foreground"}


def _record(case: str, status: str = "done", **extra: object) -> CaseRecord:
    return CaseRecord(case, (f"/in/{case}.nii.gz",), f"/out/{case}.nii.gz", status, **extra)  # type: ignore[arg-type]


def test_manifest_round_trip_appends_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out" / "m.jsonl"
    first = _record("a", queries=10, dense_queries=100, stage_seconds=(("read", 0.5),), warnings=("w",))
    with ManifestWriter(path) as writer:
        writer.write(first)
    with ManifestWriter(path) as writer:  # a second run appends
        writer.write(_record("b", "failed", error="b: broken", error_type="InputError"))
    with path.open("a") as f:
        f.write('{"case": "c", "inputs": [')  # a crash while writing the last line
    records = read_manifest(path)
    assert [r.case for r in records] == ["a", "b"]
    assert records[0] == first and records[1].failed and not records[0].failed
    assert json.loads(path.read_text().splitlines()[0])["stage_seconds"] == [["read", 0.5]]
    assert read_manifest(tmp_path / "none.jsonl") == []
    with pytest.raises(ValueError, match="unknown case status"):
        _record("x", "finished")


def test_plan_actors_fills_the_cpus_and_refuses_oversubscription_unless_forced() -> None:
    cluster = {"CPU": 8.0, "memory": 64.0 * 2**30}
    plan = plan_actors(cluster, RayOptions(threads_per_actor=2), 400 * MiB, cases=100)
    assert (plan.actors, plan.cpus_per_actor, plan.memory_per_actor) == (4, 2.0, 400 * MiB)
    assert plan_actors(cluster, RayOptions(), 400 * MiB, cases=3).actors == 3  # no idle model copies
    with pytest.raises(PlanError, match="actors x threads exceed the CPUs"):
        plan_actors(cluster, RayOptions(actors=3, threads_per_actor=4), 400 * MiB, cases=100)
    forced = plan_actors(cluster, RayOptions(actors=3, threads_per_actor=4, oversubscribe=True), 400 * MiB, cases=100)
    assert forced.actors == 3 and forced.threads_per_actor == 4 and forced.cpus_per_actor == pytest.approx(8 / 3)
    # Memory bounds the default count, and an explicit count that does not fit is refused.
    small = {"CPU": 8.0, "memory": 1000.0 * MiB}
    assert plan_actors(small, RayOptions(), 400 * MiB, cases=100).actors == 2
    with pytest.raises(PlanError, match="more memory than Ray offers"):
        plan_actors(small, RayOptions(actors=4), 400 * MiB, cases=100)
    with pytest.raises(PlanError, match="not even one actor fits"):
        plan_actors({"CPU": 2.0, "memory": 64.0 * 2**30}, RayOptions(threads_per_actor=4), 400 * MiB, cases=5)


def test_plan_actors_gpus() -> None:
    cluster = {"CPU": 32.0, "GPU": 2.0, "memory": 256.0 * 2**30}
    assert plan_actors(cluster, RayOptions(gpus_per_actor=0.5), 1024 * MiB, cases=100).actors == 4
    with pytest.raises(PlanError, match="more GPUs"):
        plan_actors(cluster, RayOptions(actors=3, gpus_per_actor=1.0), 1024 * MiB, cases=100)
    with pytest.raises(DependencyError, match="ray start --num-gpus"):
        plan_actors({"CPU": 4.0, "memory": 8.0 * 2**30}, RayOptions(gpus_per_actor=1.0), 1024 * MiB, cases=1)


def test_memory_rule_matches_the_measured_dense_figures() -> None:
    # docs/runtime.md#bytes-per-voxel: dense on the demo grid = 3.9 bytes per input voxel + 66 MiB.
    grid, voxels = (224, 256, 192), 8_700_000
    dense = case_peak_bytes(voxels, 1, grid, 1, 4096, "dense")
    assert dense == pytest.approx(3.9 * voxels + 66 * MiB, rel=0.05)
    adaptive = case_peak_bytes(voxels, 1, grid, 1, 4096, "adaptive")
    assert adaptive >= 251 * MiB  # the largest adaptive peak measured there
    assert worker_bytes(15_000_000, adaptive) > adaptive + 300 * MiB


def test_remove_temporaries_removes_only_the_outputs_own(tmp_path: Path) -> None:
    output = tmp_path / "case.nii.gz"
    stale = temporary_sibling(output)
    stale.write_bytes(b"half")
    other = temporary_sibling(tmp_path / "case2.nii.gz")
    other.write_bytes(b"half")
    output.write_bytes(b"done")
    assert remove_temporaries(output) == [stale]
    assert not stale.exists() and other.exists() and output.exists()


def test_without_ray_the_engine_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(DependencyError, match=r'pip install "ossnet\[ray\]"'):
        require_ray()
    model = tmp_path / "model"
    write_threshold_pair(model, PREPROCESS)
    (tmp_path / "cohort").mkdir()
    result = CliRunner().invoke(main, ["-i", str(tmp_path / "cohort"), "-o", str(tmp_path / "out"), "-m", str(model),
                                       "--engine", "ray"])
    assert result.exit_code == EXIT_DEPENDENCY and 'pip install "ossnet[ray]"' in result.stderr
    assert not (tmp_path / "out").exists()


def test_engine_options_are_checked(tmp_path: Path) -> None:
    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["-i", str(tmp_path), "-o", str(tmp_path / "o"), *args])
        return result.exit_code, result.stderr

    code, stderr = run("--actors", "2")
    assert code == EXIT_USAGE and "--actors needs --engine ray" in stderr
    code, stderr = run("--engine", "ray", "--threads", "2")
    assert code == EXIT_USAGE and "use --threads-per-actor" in stderr


def test_local_ctrl_c_exits_130_with_a_manifest_of_what_finished(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import nibabel as nib
    from synthetic_models import two_level_phantom

    from ossnet_deploy import cli

    model = tmp_path / "model"
    write_threshold_pair(model, PREPROCESS)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for i in range(4):
        nib.save(nib.Nifti1Image(two_level_phantom(centre=(8.0 + 2 * i, 12.0, 9.0), radius=3.0), np.eye(4)),
                 cohort / f"sub{i}.nii.gz")
    calls = []
    real = cli.segment_case

    def stop_at_the_third(*args: object, **kwargs: object) -> CaseRecord:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "segment_case", stop_at_the_third)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["-i", str(cohort), "-o", str(out), "-m", str(model), "-d", "cpu"])
    assert result.exit_code == EXIT_INTERRUPTED and "interrupted: 2 of 4 case(s) ended" in result.stderr
    records = read_manifest(out / MANIFEST_NAME)
    assert {r.case: r.status for r in records} == {"sub0": "done", "sub1": "done", "sub2": "interrupted",
                                                   "sub3": "interrupted"}
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "sub0.nii.gz", "sub1.nii.gz"]
