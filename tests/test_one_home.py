"""Each piece of logic has one home (docs/design.md#one-pipeline), checked on the source with ast.

* ``run_scheduler`` is called only by ``ossnet_deploy/pipeline.py``: the runtime, training
  validation, export verification and the benchmarks all segment through the pipeline.
* ``extract_patches`` is called only by the pipeline's decoder feed, the training batches and
  the benchmark that times it.
* "large patches" is decided from the variant in one place: nothing outside
  ``ossnet_train/config.py`` compares a patch mode with ``"small_large"``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("ossnet_deploy", "ossnet_train", "ossnet_export", "benchmarks", "scripts")


def _files() -> list[Path]:
    return sorted(p for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))


def _callers(name: str) -> set[str]:
    found = set()
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if called == name:
                    found.add(path.relative_to(ROOT).as_posix())
    return found


def test_the_scan_sees_the_packages() -> None:
    assert len(_files()) > 50


def test_run_scheduler_is_called_only_by_the_pipeline() -> None:
    assert _callers("run_scheduler") == {"ossnet_deploy/pipeline.py"}


def test_extract_patches_is_called_only_by_the_decoder_feed_and_the_training_batches() -> None:
    assert _callers("extract_patches") == {"ossnet_deploy/pipeline.py", "ossnet_train/batches.py",
                                           "benchmarks/bench_patches.py"}


def test_large_patches_is_decided_in_one_place() -> None:
    places = set()
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value == "small_large" for c in [node.left, *node.comparators]
            ):
                places.add(path.relative_to(ROOT).as_posix())
    assert places <= {"ossnet_train/config.py"}, places
