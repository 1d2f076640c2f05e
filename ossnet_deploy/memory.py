"""Peak resident memory of this process (docs/design.md#measuring).

Linux keeps the high-water mark of the resident set as ``VmHWM`` in ``/proc/self/status``;
writing ``5`` to ``/proc/self/clear_refs`` resets it to the current resident set, so the
peak of one volume can be measured inside a long-lived process. ``VmHWM`` is per process:
with several volumes segmented concurrently, each sees the peak of all of them.

Elsewhere (macOS, Windows, a locked-down ``/proc``) the functions return ``None`` / ``False``
and callers report the peak as unknown.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["current_rss_bytes", "peak_rss_bytes", "reset_peak_rss"]

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
