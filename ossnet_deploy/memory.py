"""Peak resident memory of this process (docs/design.md#measuring).

Linux keeps the high-water mark of the resident set as ``VmHWM`` in ``/proc/self/status``;
writing ``5`` to ``/proc/self/clear_refs`` resets it to the current resident set, so the
peak of one volume can be measured inside a long-lived process. ``VmHWM`` is per process:
with several volumes segmented concurrently, each sees the peak of all of them.

Elsewhere (macOS, Windows, a locked-down ``/proc``) the functions return ``None`` / ``False``
and callers report the peak as unknown.

:func:`case_peak_bytes` and :func:`worker_bytes` turn the measured bytes-per-voxel rule into
the memory a cohort worker reserves (docs/runtime.md#bytes-per-voxel, docs/cohorts.md).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["case_peak_bytes", "current_rss_bytes", "peak_rss_bytes", "reset_peak_rss", "worker_bytes"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str, status: Path = _STATUS) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes, or None when unavailable."""
    try:
        text = status.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            # "VmHWM:   123456 kB"
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process since start or the last :func:`reset_peak_rss` (bytes)."""
    return _status_kib("VmHWM")


def current_rss_bytes() -> int | None:
    """Current resident set size of this process (bytes)."""
    return _status_kib("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the peak to the current resident set; True when the kernel accepted it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


# The bytes-per-voxel rule of docs/runtime.md#bytes-per-voxel, measured with
# benchmarks/bench_segmenter.py --study memory (peak of a whole segment() call above the loaded
# model): dense 3.9 bytes per input voxel + the grid's fixed buffers; adaptive at most +251 MiB
# on 8.7 M input voxels, i.e. 18.4 bytes per input voxel more than dense's rule.
INPUT_BYTES_PER_VOXEL_AND_CHANNEL = 4
"""The float32 input, alive while it is prepared (measured: 3.9 bytes per voxel, one channel)."""
ADAPTIVE_BYTES_PER_VOXEL = 20
"""The adaptive scheduler's own state per input voxel (18.4 on the largest measured case, rounded up)."""
SESSION_BYTES_PER_MODEL_BYTE = 3
"""ONNX Runtime sessions' resident memory per byte of ``.onnx`` files (measured 2.6 x, demo C)."""
PROCESS_BASE_BYTES = 300 * 2**20
"""A worker process before the model: Python, numpy, onnxruntime, nibabel (75 MiB measured)
plus a Ray worker's own libraries (the rest; a generous round figure, not measured per release)."""


def case_peak_bytes(
    input_voxels: int,
    channels: int,
    grid_shape: tuple[int, int, int],
    patch_channels: int,
    max_queries: int,
    mode: str,
) -> int:
    """Peak memory one ``segment`` call adds to a loaded model, by the rule of docs/runtime.md#bytes-per-voxel.

    Fixed buffers of the grid: the padded float32 volume (4 bytes per grid voxel and channel),
    the global volume (an eighth of it), the uint8 grid labels and one patch buffer
    (``max_queries`` x patch channels x 7^3 float32); plus the float32 input, and for
    ``adaptive`` the scheduler's state, per input voxel.
    """
    grid = grid_shape[0] * grid_shape[1] * grid_shape[2]
    fixed = grid * 4 * channels + grid * 4 * channels // 8 + grid + max_queries * patch_channels * 343 * 4
    per_voxel = INPUT_BYTES_PER_VOXEL_AND_CHANNEL * channels + (ADAPTIVE_BYTES_PER_VOXEL if mode == "adaptive" else 0)
    return int(fixed + per_voxel * input_voxels)


def worker_bytes(model_file_bytes: int, largest_case_bytes: int) -> int:
    """Memory to reserve for one worker that holds the model and segments one case at a time."""
    return PROCESS_BASE_BYTES + SESSION_BYTES_PER_MODEL_BYTE * model_file_bytes + largest_case_bytes
