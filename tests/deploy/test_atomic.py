"""Atomic file and folder outputs: all or nothing, never a silent overwrite."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ossnet_deploy.atomic import atomic_directory, atomic_write
from ossnet_deploy.errors import OutputExistsError


class Boom(Exception):
    pass


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_renames_into_place(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_write(target, overwrite=False) as tmp:
        assert tmp.parent == tmp_path
        assert not target.exists()
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert names(tmp_path) == ["out.txt"]


def test_temporary_name_keeps_the_suffix_and_nibabel_writes_gzip(tmp_path):
    target = tmp_path / "seg.nii.gz"
    with atomic_write(target, overwrite=False) as tmp:
        assert tmp.name.startswith(".seg.nii.gz.tmp-")
        assert tmp.name.endswith(".nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp)
    assert target.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(target.read_bytes())[:4] == (348).to_bytes(4, "little")


def test_exception_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(Boom), atomic_write(target, overwrite=False) as tmp:
        tmp.write_bytes(b"partial")
        raise Boom
    assert names(tmp_path) == []


def test_exception_keeps_the_old_file_when_overwriting(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(Boom), atomic_write(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new but broken")
        raise Boom
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["out.bin"]


def test_existing_file_is_refused_without_overwrite(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"out\.bin: output already exists.*overwrite=True"):
        with atomic_write(target, overwrite=False):
            pytest.fail("the body must not run")
    assert target.read_bytes() == b"old"


def test_overwrite_replaces(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_write(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert names(tmp_path) == ["out.bin"]


def test_file_appearing_during_the_write_is_not_clobbered(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(OutputExistsError, match=r"out\.bin: output appeared while it was being written"):
        with atomic_write(target, overwrite=False) as tmp:
            tmp.write_bytes(b"ours")
            target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's"
    assert names(tmp_path) == ["out.bin"]


def test_missing_parents_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_write(target, overwrite=False) as tmp:
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_folder_in_the_way_is_refused(tmp_path):
    (tmp_path / "out.nii.gz").mkdir()
    with pytest.raises(OutputExistsError, match=r"out\.nii\.gz: output exists and is a folder"):
        with atomic_write(tmp_path / "out.nii.gz", overwrite=True):
            pytest.fail("the body must not run")


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with (
        pytest.raises(FileNotFoundError, match="did not create"),
        atomic_write(tmp_path / "o", overwrite=False),
    ):
        pass
    assert names(tmp_path) == []


def test_directory_is_built_then_renamed(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp.is_dir() and not target.exists()
        (tmp / "encoder.onnx").write_bytes(b"e")
    assert names(target) == ["encoder.onnx"]
    assert names(tmp_path) == ["model"]


def test_directory_exception_leaves_nothing(tmp_path):
    with pytest.raises(Boom), atomic_directory(tmp_path / "model") as tmp:
        (tmp / "encoder.onnx").write_bytes(b"e")
        raise Boom
    assert names(tmp_path) == []


def test_directory_refused_without_overwrite(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(OutputExistsError, match=r"model: output already exists.*overwrite"):
        with atomic_directory(tmp_path / "model", overwrite=False):
            pytest.fail("the body must not run")


def test_directory_overwrite_replaces_the_old_folder_only_when_complete(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.onnx").write_bytes(b"old")
    with pytest.raises(Boom), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.onnx").write_bytes(b"new")
        raise Boom
    assert names(target) == ["old.onnx"]
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.onnx").write_bytes(b"new")
        assert names(target) == ["old.onnx"]
    assert names(target) == ["new.onnx"]
    assert names(tmp_path) == ["model"]


def test_directory_over_a_file_is_refused(tmp_path):
    (tmp_path / "model").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"model: output exists and is not a folder"):
        with atomic_directory(tmp_path / "model", overwrite=True):
            pytest.fail("the body must not run")
