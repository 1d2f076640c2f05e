"""The project's error hierarchy (docs/design.md#errors-and-exit-codes).

Every failure a user can cause raises one of these. Messages name the file, what was
expected, what was found and the fix; :func:`describe` builds such a message so that
all call sites read alike.

CLI exit codes: 0 all done; 1 some inputs failed (the rest were processed);
2 usage error; 3 missing dependency or hardware; 130 interrupted (Ctrl-C; the shell's
128 + SIGINT).
"""

from __future__ import annotations

import os

__all__ = [
    "EXIT_DEPENDENCY",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "DependencyError",
    "InputError",
    "ModelFormatError",
    "OssnetError",
    "OutputExistsError",
    "describe",
]

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_DEPENDENCY = 3
EXIT_INTERRUPTED = 130


class OssnetError(Exception):
    """Base class of every error ossnet raises on purpose."""


class InputError(OssnetError, ValueError):
    """Image data or geometry that ossnet cannot use (wrong shape, NaN, singular affine, ...)."""


class ModelFormatError(OssnetError, ValueError):
    """A checkpoint, ONNX graph, metadata, model pair or engine that is missing, foreign or mismatched."""


class DependencyError(OssnetError, RuntimeError):
    """An optional package or a piece of hardware is missing; the message gives the install command."""


class OutputExistsError(OssnetError, FileExistsError):
    """An output already exists and overwriting was not asked for."""


def describe(
    path: str | os.PathLike[str] | None,
    problem: str,
    *,
    expected: str | None = None,
    found: str | None = None,
    fix: str | None = None,
) -> str:
    """Build a message in the project's one format.

    Example: ``describe("a.nii.gz", "image has NaN voxels", expected="finite values",
    found="3 NaN voxels", fix="...")`` gives
    ``"a.nii.gz: image has NaN voxels (expected finite values; found 3 NaN voxels). Fix: ..."``.
    """
    head = f"{os.fspath(path)}: {problem}" if path is not None else problem
    details = []
    if expected is not None:
        details.append(f"expected {expected}")
    if found is not None:
        details.append(f"found {found}")
    if details:
        head += f" ({'; '.join(details)})"
    if fix is not None:
        head += f". Fix: {fix}"
    return head
