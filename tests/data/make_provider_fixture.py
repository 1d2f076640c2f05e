"""Extract the dynamic section of onnxruntime-gpu's TensorRT provider into a tiny committed fixture.

Run from the repository root (needs pip and network access to PyPI, about 260 MB once)::

    python tests/data/make_provider_fixture.py                 # downloads the wheel into the cache
    python tests/data/make_provider_fixture.py --wheel PATH    # or reads a wheel you have

For ``onnxruntime-gpu==VERSION`` (default the runtime's ``RECOMMENDED_ORT_GPU``) it

1. downloads the CPython 3.11 manylinux_2_28 x86_64 wheel with ``pip download --no-deps`` into
   ``$OSSNET_TEST_CACHE`` (default ``~/.cache/ossnet-tests``), unless it is there already;
2. reads ``onnxruntime/capi/libonnxruntime_providers_tensorrt.so`` out of it (zipfile) and its
   dynamic section (``ossnet_deploy.backends.elf_needed``);
3. writes ``tests/data/gpu/onnxruntime_gpu-VERSION_providers_tensorrt.elf``: a minimal ELF
   (``tests/deploy/elf_builder.py``) of the same class, byte order and machine whose dynamic
   section holds the library's ``DT_NEEDED`` entries in the same order, its ``DT_SONAME`` and
   ``DT_RUNPATH`` (none in 1.31.1) and nothing else: a few hundred bytes instead of 260 MB;
4. writes ``tests/data/gpu/onnxruntime_gpu-VERSION_providers_tensorrt.json``: where the entries
   came from (wheel name and sha256, the library's path, size and sha256) and the list itself.

Re-running on the same wheel rewrites the same bytes; ``tests/deploy/test_gpu_versions.py``
checks that (a slow test that downloads the wheel into the same cache, skipped when it cannot).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "deploy"))

from elf_builder import build_elf  # noqa: E402

from ossnet_deploy.backends.elf_needed import read_dynamic_bytes  # noqa: E402
from ossnet_deploy.gpu_versions import RECOMMENDED_ORT_GPU, TRT_PROVIDER_LIBRARY  # noqa: E402

OUT_DIR = HERE / "gpu"
MEMBER = f"onnxruntime/capi/{TRT_PROVIDER_LIBRARY}"
#: the wheel the fixture is made from: one fixed file, whatever machine runs the script.
PLATFORM = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
            "--abi", "cp311", "--only-binary=:all:")


def cache_dir() -> Path:
    """Where downloaded wheels are kept between runs."""
    return Path(os.environ.get("OSSNET_TEST_CACHE") or Path.home() / ".cache" / "ossnet-tests")


def fixture_paths(version: str) -> tuple[Path, Path]:
    """(minimal ELF, provenance JSON) of one onnxruntime-gpu version."""
    stem = f"onnxruntime_gpu-{version}_providers_tensorrt"
    return OUT_DIR / f"{stem}.elf", OUT_DIR / f"{stem}.json"


def download_wheel(version: str, *, timeout: float = 900) -> Path:
    """``pip download onnxruntime-gpu==VERSION --no-deps`` into :func:`cache_dir` (kept there).

    Raises:
        RuntimeError: pip failed (no network, no such version) or left no wheel.
    """
    dest = cache_dir()
    pattern = f"onnxruntime_gpu-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
    found = dest / pattern
    if found.is_file():
        return found
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"onnxruntime-gpu=={version}", "--no-deps",
           "--disable-pip-version-check", "-q", "-d", str(dest), *PLATFORM]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"pip download timed out after {timeout:.0f} s") from exc
    if done.returncode != 0 or not found.is_file():
        raise RuntimeError(f"pip download onnxruntime-gpu=={version} failed: {(done.stderr or done.stdout)[-500:]}")
    return found


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fixture_from_wheel(wheel: Path) -> tuple[bytes, dict[str, object]]:
    """The minimal ELF and the provenance record made from one onnxruntime-gpu wheel."""
    with zipfile.ZipFile(wheel) as archive:
        library = archive.read(MEMBER)
    dynamic = read_dynamic_bytes(library)
    elf = build_elf(dynamic.needed, soname=dynamic.soname, runpath=dynamic.runpath, elf_class=dynamic.elf_class,
                    little_endian=dynamic.little_endian, machine=dynamic.machine)
    record: dict[str, object] = {
        "wheel": wheel.name,
        "wheel_sha256": _sha256(wheel.read_bytes()),
        "library": MEMBER,
        "library_bytes": len(library),
        "library_sha256": _sha256(library),
        "needed": list(dynamic.needed),
        "soname": dynamic.soname,
        "runpath": dynamic.runpath,
        "made_by": "tests/data/make_provider_fixture.py",
    }
    return elf, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=RECOMMENDED_ORT_GPU, help="onnxruntime-gpu version")
    parser.add_argument("--wheel", type=Path, default=None, help="an onnxruntime-gpu wheel already downloaded")
    args = parser.parse_args(argv)
    wheel = args.wheel or download_wheel(args.version)
    elf, record = fixture_from_wheel(wheel)
    elf_path, json_path = fixture_paths(args.version)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    elf_path.write_bytes(elf)
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{elf_path.relative_to(REPO)} ({len(elf)} bytes): DT_NEEDED {', '.join(record['needed'])}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
