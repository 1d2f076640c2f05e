"""Atomic outputs: write to a temporary name in the destination folder, rename into place.

Every file or folder ossnet produces (segmentations, ONNX graphs, engine side files,
checkpoints, export folders) goes through this module, so a crash, Ctrl-C or full disk
never leaves a half-written output under the final name, and nothing is overwritten unless
the caller asked for it (docs/design.md#errors-and-exit-codes).

The temporary name lives in the destination folder (never in ``/tmp``) because
``os.replace`` is only atomic within one file system.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path

from ossnet_deploy.errors import OutputExistsError, describe

__all__ = ["atomic_directory", "atomic_write", "remove_temporaries", "temporary_sibling"]

_OVERWRITE_FIX = "pass --overwrite / overwrite=True, or choose another output path"


def _suffixes(name: str) -> str:
    """The multi-part extension of ``name`` (``"seg.nii.gz" -> ".nii.gz"``).

    Writers such as nibabel pick the format from the extension, so temporary names keep it.
    A leading dot (hidden file) is not an extension.
    """
    return "".join(Path(name.lstrip(".")).suffixes)


def temporary_sibling(path: str | os.PathLike[str], *, kind: str = "tmp", keep_suffix: bool = True) -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<kind>-<pid>-<random><suffixes>``.

    The name is unique per process and call (pid plus 64 random bits); nothing is created.
    """
    target = Path(path)
    suffix = _suffixes(target.name) if keep_suffix else ""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(8)}{suffix}")


def remove_temporaries(path: str | os.PathLike[str], *, kind: str = "tmp") -> list[Path]:
    """Remove the temporary siblings of ``path`` (:func:`temporary_sibling`) that a killed writer left.

    A process killed with SIGKILL (an out-of-memory kill, a Ray actor killed or lost with its
    node) cannot run :func:`atomic_write`'s cleanup, so its hidden temporary file stays beside
    the output. Only the caller knows that no writer of ``path`` is still alive (e.g. the cohort
    driver once its workers are gone); calling this while one is writing makes that write fail.

    Returns:
        the removed paths.
    """
    target = Path(path)
    removed = []
    if not target.parent.is_dir():
        return removed
    for candidate in target.parent.glob(f".{glob_escape(target.name)}.{kind}-*"):
        _remove_quietly(candidate)
        removed.append(candidate)
    return removed


def _refuse_existing(target: Path, *, overwrite: bool, want_dir: bool) -> None:
    """Raise :class:`OutputExistsError` unless ``target`` may be (re)placed."""
    if not (target.exists() or target.is_symlink()):
        return
    if want_dir and not target.is_dir():
        raise OutputExistsError(
            describe(
                target,
                "output exists and is not a folder",
                expected="a folder or nothing",
                found="a file",
                fix="remove it or choose another output path",
            )
        )
    if not want_dir and target.is_dir():
        raise OutputExistsError(
            describe(
                target,
                "output exists and is a folder",
                expected="a file or nothing",
                found="a folder",
                fix="remove it or choose another output path",
            )
        )
    if not overwrite:
        raise OutputExistsError(describe(target, "output already exists", fix=_OVERWRITE_FIX))


def _remove_quietly(path: Path) -> None:
    """Best-effort removal of a temporary file or folder during cleanup."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _link_into_place(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` without ever replacing an existing ``target``.

    A hard link fails atomically when the name is taken, which closes the window between the
    existence check at the start and the rename at the end (another process writing the same
    output). File systems without hard links fall back to check-then-replace.
    """
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputExistsError(
            describe(target, "output appeared while it was being written", fix=_OVERWRITE_FIX)
        ) from None
    except OSError:
        _refuse_existing(target, overwrite=False, want_dir=False)
        os.replace(tmp, target)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name is ``.<name>.tmp-<pid>-<random><suffixes>`` in the destination folder
    and keeps the extension (``.nii.gz``, ``.onnx``), so writers that infer the format from it
    work. Missing parent folders are created. If the body raises, the temporary file is removed
    and ``path`` is untouched.

    Args:
        path: the final file name.
        overwrite: replace an existing file; otherwise an existing ``path`` raises
            :class:`OutputExistsError` before anything is written.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False, or ``path`` is a folder.
    """
    target = Path(path)
    _refuse_existing(target, overwrite=overwrite, want_dir=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer did not create the temporary output for {target}")
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_into_place(tmp, target)
    except BaseException:
        # BaseException: a Ctrl-C during a long write must not leave the temporary file behind.
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path``.

    The new folder is built completely under a hidden sibling name. With ``overwrite`` an
    existing folder is moved aside only once the new one is complete, then deleted, so at every
    moment ``path`` is either the old complete folder or the new complete one (there is a short
    moment with no folder between the two renames; a failure there restores the old one).

    Args:
        path: the final folder name.
        overwrite: replace an existing folder; otherwise an existing ``path`` raises
            :class:`OutputExistsError` before anything is written.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False, or ``path`` is a file.
    """
    target = Path(path)
    _refuse_existing(target, overwrite=overwrite, want_dir=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target, keep_suffix=False)
    tmp.mkdir()
    try:
        yield tmp
        if not target.exists():
            try:
                # os.rename onto a missing name; if another process created it meanwhile,
                # a non-empty folder makes this fail rather than merge.
                os.rename(tmp, target)
            except OSError:
                _refuse_existing(target, overwrite=overwrite, want_dir=True)
                raise
            return
        _refuse_existing(target, overwrite=overwrite, want_dir=True)
        old = temporary_sibling(target, kind="old", keep_suffix=False)
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)
            raise
        _remove_quietly(old)
    except BaseException:
        _remove_quietly(tmp)
        raise
