"""Which TensorRT, CUDA and cuDNN an onnxruntime-gpu build needs, and whether the installed one fits.

Why (docs/design.md#gpu-runtime-versions): ``pip install tensorrt`` resolves to the newest
TensorRT, while each onnxruntime-gpu build links its TensorRT provider against one TensorRT
major (onnxruntime 1.31.1: ``libnvinfer.so.10`` beside ``libcudart.so.13``). With another major
installed the provider library cannot load, and ONNX Runtime says so only as a warning when a
session falls back to CUDA or CPU. The answer is not hard-coded here: it is read from the
provider library's ``DT_NEEDED`` list (:mod:`ossnet_deploy.backends.elf_needed`), the sonames
the dynamic loader will look for, without loading the library.

* :func:`installed_provider_needs`: the list of the installed onnxruntime-gpu (None on the CPU
  build, or on Windows, whose provider is a DLL; no check is made there).
* :data:`RECOMMENDED_NEEDS`: the same list read from the onnxruntime-gpu wheel the docs
  recommend (``tests/data/gpu/make_provider_fixture.py`` extracts it; a test compares this
  constant with that fixture), for install hints on machines without onnxruntime-gpu.
* :func:`tensorrt_mismatch` / :func:`check_tensorrt`: compare the installed TensorRT (its
  major version, and the CUDA major of a ``tensorrt-cuNN`` distribution) with a list.

NVIDIA's TensorRT wheels live on NVIDIA's index (:data:`NVIDIA_INDEX_URL`); the packages of the
same names on PyPI are stubs that download from there while installing. ``tensorrt`` itself is
imported only lazily, in :func:`tensorrt_version`, when no distribution metadata names it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ossnet_deploy.backends.elf_needed import ElfFormatError, read_dynamic
from ossnet_deploy.errors import DependencyError, describe

__all__ = [
    "GPU_INSTALL_COMMAND",
    "NVIDIA_INDEX_URL",
    "RECOMMENDED_NEEDS",
    "RECOMMENDED_ORT_GPU",
    "TRT_INSTALL_COMMAND",
    "TRT_PROVIDER_LIBRARY",
    "InstalledTensorrt",
    "ProviderNeeds",
    "check_tensorrt",
    "installed_provider_needs",
    "installed_tensorrt",
    "provider_library",
    "tensorrt_distributions",
    "tensorrt_mismatch",
    "tensorrt_version",
]

#: NVIDIA's package index, where the real TensorRT (and CUDA) wheels are.
NVIDIA_INDEX_URL = "https://pypi.nvidia.com"
#: The TensorRT provider of onnxruntime-gpu on Linux, in ``onnxruntime/capi/``.
TRT_PROVIDER_LIBRARY = "libonnxruntime_providers_tensorrt.so"
#: The onnxruntime-gpu the install hints name: the newest release (behind the CPU build's
#: 1.32.0; the two are never installed together).
RECOMMENDED_ORT_GPU = "1.31.1"
#: ``DT_NEEDED`` of ``onnxruntime/capi/libonnxruntime_providers_tensorrt.so`` in the
#: onnxruntime-gpu 1.31.1 manylinux x86_64 wheel, in file order, as
#: ``tests/data/gpu/make_provider_fixture.py`` extracted it (``readelf -d`` agrees);
#: tests/deploy/test_gpu_versions.py fails when this and the committed fixture differ.
_ORT_GPU_1_31_1_TRT_NEEDED = (
    "libcublas.so.13", "libdl.so.2", "libnvinfer.so.10", "libnvonnxparser.so.10", "libcudart.so.13",
    "librt.so.1", "libcudnn.so.9", "libpthread.so.0", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1",
    "libc.so.6", "ld-linux-x86-64.so.2",
)

_SONAME_MAJOR = re.compile(r"^lib(?P<name>[\w+-]+)\.so\.(?P<major>\d+)$")
#: TensorRT's Python distributions: ``tensorrt`` (a meta package), ``tensorrt-cu13`` and its
#: ``-libs`` / ``-bindings`` parts (``tensorrt_cu13_libs`` spelt either way).
_TRT_DIST = re.compile(r"^tensorrt(?:-cu(?P<cuda>\d+))?(?:-(?:libs|bindings))?$")


def _soname_major(needed: tuple[str, ...], library: str) -> int | None:
    """The major version in ``lib<library>.so.<major>`` among the needed sonames, or None."""
    for soname in needed:
        match = _SONAME_MAJOR.match(soname)
        if match is not None and match["name"] == library:
            return int(match["major"])
    return None


@dataclass(frozen=True)
class ProviderNeeds:
    """The needed-library list of one TensorRT provider library and what it implies.

    Attributes:
        source: where the list was read (a file, or the wheel it was extracted from).
        needed: the ``DT_NEEDED`` sonames, in file order.
    """

    source: str
    needed: tuple[str, ...]

    @property
    def tensorrt_major(self) -> int | None:
        """TensorRT major (``libnvinfer.so.N``); None when the library does not link TensorRT."""
        return _soname_major(self.needed, "nvinfer")

    @property
    def cuda_major(self) -> int | None:
        """CUDA major of the runtime it links (``libcudart.so.N``)."""
        return _soname_major(self.needed, "cudart")

    @property
    def cudnn_major(self) -> int | None:
        """cuDNN major (``libcudnn.so.N``), when listed."""
        return _soname_major(self.needed, "cudnn")

    @property
    def tensorrt_sonames(self) -> tuple[str, ...]:
        """The TensorRT and CUDA-runtime sonames, for messages (``libnvinfer.so.10``, ...)."""
        return tuple(s for s in self.needed if s.startswith(("libnvinfer", "libnvonnxparser", "libcudart")))

    def summary(self) -> str:
        """``"TensorRT 10, CUDA 13, cuDNN 9"`` (the parts the list names)."""
        parts = [f"{name} {major}" for name, major in (("TensorRT", self.tensorrt_major), ("CUDA", self.cuda_major),
                                                        ("cuDNN", self.cudnn_major)) if major is not None]
        return ", ".join(parts) or "no TensorRT, CUDA or cuDNN library"

    def tensorrt_requirement(self) -> str:
        """The pip requirement of the matching TensorRT, e.g. ``tensorrt-cu13>=10,<11``.

        ``tensorrt-cuNN`` rather than ``tensorrt``: the meta package's CUDA flavour changed
        within TensorRT 10 (10.16's ``tensorrt`` pulls ``tensorrt-cu13``, older ones ``-cu12``).

        Raises:
            ValueError: the list names no ``libnvinfer`` (not a TensorRT provider).
        """
        major = self.tensorrt_major
        if major is None:
            raise ValueError(f"{self.source} does not link libnvinfer; no TensorRT requirement follows")
        name = f"tensorrt-cu{self.cuda_major}" if self.cuda_major is not None else "tensorrt"
        return f"{name}>={major},<{major + 1}"

    def tensorrt_install_command(self, remove: tuple[str, ...] = ()) -> str:
        """One shell line installing the matching TensorRT from NVIDIA's index.

        Args:
            remove: installed TensorRT distributions to uninstall first (a leftover ``tensorrt``
                meta package of another major would otherwise keep reporting its version).
        """
        install = f'pip install --extra-index-url {NVIDIA_INDEX_URL} "{self.tensorrt_requirement()}"'
        return f"pip uninstall -y {' '.join(remove)} && {install}" if remove else install


#: What the recommended onnxruntime-gpu's TensorRT provider needs (TensorRT 10, CUDA 13, cuDNN 9).
RECOMMENDED_NEEDS = ProviderNeeds(f"onnxruntime-gpu {RECOMMENDED_ORT_GPU} ({TRT_PROVIDER_LIBRARY})",
                                  _ORT_GPU_1_31_1_TRT_NEEDED)
#: Replace the CPU build by the recommended GPU build; its ``cuda`` and ``cudnn`` extras pull
#: the CUDA runtime, cuBLAS and cuDNN of the majors above from PyPI (resolved with pip, never
#: installed on a GPU by this project: docs/gpu.md).
GPU_INSTALL_COMMAND = (f'pip uninstall -y onnxruntime && pip install "onnxruntime-gpu[cuda,cudnn]=={RECOMMENDED_ORT_GPU}"')
#: The GPU build plus its TensorRT in one line, for machines that have neither.
TRT_INSTALL_COMMAND = (f"pip uninstall -y onnxruntime && pip install --extra-index-url {NVIDIA_INDEX_URL} "
                       f'"onnxruntime-gpu[cuda,cudnn]=={RECOMMENDED_ORT_GPU}" "{RECOMMENDED_NEEDS.tensorrt_requirement()}"')


def provider_library() -> Path | None:
    """The installed ``libonnxruntime_providers_tensorrt.so``, found without importing onnxruntime.

    None on the CPU build (it has no such file) and on Windows (the provider is a DLL).
    """
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "capi" / TRT_PROVIDER_LIBRARY
        if candidate.is_file():
            return candidate
    return None


def installed_provider_needs(library: str | os.PathLike[str] | None = None) -> ProviderNeeds | None:
    """The needed-library list of the installed onnxruntime-gpu's TensorRT provider.

    Args:
        library: the provider library to read (default: :func:`provider_library`).

    Returns:
        None when there is no such library (CPU build, Windows).

    Raises:
        DependencyError: the library exists but is not a readable ELF file (a broken install).
    """
    path = Path(library) if library is not None else provider_library()
    if path is None:
        return None
    try:
        dynamic = read_dynamic(path)
    except (OSError, ElfFormatError) as exc:
        raise DependencyError(
            describe(path, "cannot read the TensorRT provider library of onnxruntime-gpu",
                     expected="an ELF shared library with a dynamic section", found=str(exc),
                     fix=f"pip install --force-reinstall --no-deps onnxruntime-gpu=={_ort_gpu_version() or RECOMMENDED_ORT_GPU}")
        ) from None
    version = _ort_gpu_version()
    source = f"onnxruntime-gpu {version} ({path})" if version else str(path)
    return ProviderNeeds(source, dynamic.needed)


def _ort_gpu_version() -> str | None:
    try:
        return importlib.metadata.version("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorrt_version() -> str:
    """The installed TensorRT version, read the way ``ossnet-export --trt`` records it.

    The distribution's version (``tensorrt``, ``tensorrt-cu13``, ``tensorrt-cu12``) first, else
    the module's ``__version__``: the strings must compare equal to an engine side file's.

    Raises:
        DependencyError: tensorrt is not installed.
    """
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        import tensorrt
    except ImportError as exc:
        needs = _needs_or_recommended()
        raise DependencyError(
            describe(None, "TensorRT engines need the tensorrt package", expected=f"tensorrt importable ({needs.summary()})",
                     found=f"ImportError: {exc}", fix=needs.tensorrt_install_command())
        ) from None
    return str(getattr(tensorrt, "__version__", "unknown"))


def _needs_or_recommended() -> ProviderNeeds:
    """The installed provider's list, else the recommended build's (for install hints)."""
    try:
        needs = installed_provider_needs()
    except DependencyError:
        needs = None
    return needs if needs is not None and needs.tensorrt_major is not None else RECOMMENDED_NEEDS


@dataclass(frozen=True)
class InstalledTensorrt:
    """The installed TensorRT as pip sees it.

    Attributes:
        version: :func:`tensorrt_version`'s string (``"10.16.1.11"``).
        distributions: installed TensorRT distributions (normalised names), e.g.
            ``("tensorrt-cu13", "tensorrt-cu13-bindings", "tensorrt-cu13-libs")``; empty when
            only the module is known (a system install).
    """

    version: str
    distributions: tuple[str, ...] = ()

    @property
    def major(self) -> int | None:
        """The version's first number; None when it does not start with one."""
        match = re.match(r"\d+", self.version)
        return int(match.group()) if match else None

    @property
    def cuda_majors(self) -> tuple[int, ...]:
        """CUDA majors named by ``tensorrt-cuNN`` distributions (empty: not said)."""
        found = {int(m["cuda"]) for d in self.distributions if (m := _TRT_DIST.match(d)) and m["cuda"]}
        return tuple(sorted(found))

    def describe(self) -> str:
        """``"TensorRT 11.4.0.106 (tensorrt, tensorrt-cu13)"``."""
        return f"TensorRT {self.version}" + (f" ({', '.join(self.distributions)})" if self.distributions else "")


def tensorrt_distributions() -> tuple[str, ...]:
    """Installed TensorRT distributions (normalised names, sorted): ``tensorrt``, ``tensorrt-cu13-libs``, ..."""
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    return tuple(sorted(n for n in names if _TRT_DIST.match(n)))


def installed_tensorrt(version: str | None = None) -> InstalledTensorrt | None:
    """The installed TensorRT, or None when there is none.

    Args:
        version: its version when the caller already has it (:func:`tensorrt_version`).
    """
    if version is None:
        try:
            version = tensorrt_version()
        except DependencyError:
            return None
    return InstalledTensorrt(version, tensorrt_distributions())


def tensorrt_mismatch(needs: ProviderNeeds | None, installed: InstalledTensorrt | None) -> str | None:
    """Why the installed TensorRT cannot serve this provider, or None when it can (or it cannot be told).

    A different major means the loader finds no ``libnvinfer.so.<major>``; a ``tensorrt-cuNN``
    distribution of another CUDA major was built against another CUDA runtime. Nothing is
    compared when either side is unknown: no provider library, no TensorRT, a version without
    a leading number.
    """
    if needs is None or installed is None or needs.tensorrt_major is None or installed.major is None:
        return None
    if installed.major != needs.tensorrt_major:
        return (f"{installed.describe()} is installed, but {needs.source} needs TensorRT {needs.tensorrt_major} "
                f"({', '.join(needs.tensorrt_sonames)})")
    cudas = installed.cuda_majors
    if needs.cuda_major is not None and cudas and needs.cuda_major not in cudas:
        return (f"{installed.describe()} is built for CUDA {', '.join(map(str, cudas))}, but {needs.source} "
                f"needs CUDA {needs.cuda_major} ({', '.join(needs.tensorrt_sonames)})")
    return None


def check_tensorrt(needs: ProviderNeeds | None, installed: InstalledTensorrt | None,
                   *, path: str | os.PathLike[str] | None = None) -> None:
    """Refuse a TensorRT that the onnxruntime-gpu TensorRT provider cannot load.

    Args:
        needs: the provider's list (:func:`installed_provider_needs`).
        installed: the installed TensorRT (:func:`installed_tensorrt`).
        path: the file the message names (an engine), if any.

    Raises:
        DependencyError: :func:`tensorrt_mismatch` found one; the fix replaces TensorRT with the
            matching major from NVIDIA's index.
    """
    if needs is None or installed is None:
        return
    problem = tensorrt_mismatch(needs, installed)
    if problem is None:
        return
    raise DependencyError(
        describe(path, "the installed TensorRT does not match onnxruntime-gpu's TensorRT provider, which cannot load it",
                 expected=f"{needs.summary()} ({needs.tensorrt_requirement()})", found=problem,
                 fix=needs.tensorrt_install_command(remove=installed.distributions))
    )
