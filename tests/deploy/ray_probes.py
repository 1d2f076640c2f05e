"""Segmenter factories for the Ray engine's tests; imported by the actors, so kept torch-free.

``ProbeFactory`` builds the real ``Segmenter`` and wraps it: every actor writes what it
imported (``actor-<pid>.json``), marks the case it is segmenting (``busy-<pid>``, so a test can
kill an actor mid-case), and can slow cases down or kill its own process on chosen cases (a
case that crashes its worker every time, like a native-code crash or an out-of-memory kill).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ossnet_deploy.segmenter import Segmenter

#: what an actor must never import (docs/design.md#packages-and-dependencies).
FORBIDDEN = ("torch", "ossnet_train", "ossnet_export", "onnx")


def _forbidden_modules() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules} & set(FORBIDDEN))


class _ProbeSegmenter:
    """A ``Segmenter`` whose ``segment_with_stats`` reports to the probe folder."""

    def __init__(self, segmenter: Segmenter, probe_dir: Path, crash_on: tuple[str, ...], delay: float) -> None:
        self._segmenter = segmenter
        self._probe_dir = probe_dir
        self._crash_on = crash_on
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._segmenter, name)

    def segment_with_stats(self, image: Any, **kwargs: Any) -> Any:
        name = Path(str(image)).name
        busy = self._probe_dir / f"busy-{os.getpid()}"
        busy.write_text(name)
        if any(name.startswith(prefix) for prefix in self._crash_on):
            with (self._probe_dir / "crashes.log").open("a") as log:
                log.write(f"{os.getpid()} {name}\n")
            os._exit(1)  # the whole worker process dies, as in a native crash
        time.sleep(self._delay)
        try:
            return self._segmenter.segment_with_stats(image, **kwargs)
        finally:
            busy.unlink(missing_ok=True)
            _write_actor_file(self._probe_dir, self._segmenter)


def _write_actor_file(probe_dir: Path, segmenter: Segmenter) -> None:
    import ossnet_deploy

    (probe_dir / f"actor-{os.getpid()}.json").write_text(json.dumps({
        "pid": os.getpid(), "forbidden": _forbidden_modules(), "ossnet_deploy": ossnet_deploy.__file__,
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }))


class ProbeFactory:
    """Called like ``Segmenter.from_dir``; pickled to the actors by reference to this module."""

    def __init__(self, probe_dir: Path, crash_on: tuple[str, ...] = (), delay: float = 0.0) -> None:
        self.probe_dir = Path(probe_dir)
        self.crash_on = tuple(crash_on)
        self.delay = delay

    def __call__(self, model_dir: Any, **kwargs: Any) -> _ProbeSegmenter:
        segmenter = Segmenter.from_dir(model_dir, **kwargs)
        _write_actor_file(self.probe_dir, segmenter)
        return _ProbeSegmenter(segmenter, self.probe_dir, self.crash_on, self.delay)
