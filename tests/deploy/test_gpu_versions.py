"""GPU runtime versions: the ELF needed-library reader, the provider's needs, and the TensorRT check.

The provider library is the real one, reduced: ``tests/data/gpu/`` holds the dynamic section of
``libonnxruntime_providers_tensorrt.so`` from the onnxruntime-gpu 1.31.1 wheel, made by
``tests/data/make_provider_fixture.py`` (a slow test below re-makes it from the wheel). The
installed TensorRT is faked with monkeypatch; no GPU or TensorRT is needed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from elf_builder import build_elf

from ossnet_deploy import devices, gpu_versions
from ossnet_deploy.backends.elf_needed import ElfFormatError, read_dynamic, read_dynamic_bytes
from ossnet_deploy.devices import CPU_PROVIDER, CUDA_PROVIDER, TRT_PROVIDER, plan_providers
from ossnet_deploy.errors import DependencyError
from ossnet_deploy.gpu_versions import InstalledTensorrt, ProviderNeeds

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
FIXTURE = DATA / "gpu" / "onnxruntime_gpu-1.31.1_providers_tensorrt.elf"
PROVENANCE = DATA / "gpu" / "onnxruntime_gpu-1.31.1_providers_tensorrt.json"
#: ``readelf -d`` of the library in onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl,
#: copied by hand (the reader under test did not produce this list).
READELF_1_31_1 = (
    "libcublas.so.13", "libdl.so.2", "libnvinfer.so.10", "libnvonnxparser.so.10", "libcudart.so.13",
    "librt.so.1", "libcudnn.so.9", "libpthread.so.0", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1",
    "libc.so.6", "ld-linux-x86-64.so.2",
)
WITH_TRT = (TRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER)
TRT11 = InstalledTensorrt("11.4.0.106", ("tensorrt", "tensorrt-cu13", "tensorrt-cu13-bindings", "tensorrt-cu13-libs"))
TRT10 = InstalledTensorrt("10.16.1.11", ("tensorrt-cu13", "tensorrt-cu13-bindings", "tensorrt-cu13-libs"))
TRT10_CU12 = InstalledTensorrt("10.16.1.11", ("tensorrt-cu12", "tensorrt-cu12-libs"))
INSTALL_10 = 'pip install --extra-index-url https://pypi.nvidia.com "tensorrt-cu13>=10,<11"'


@pytest.fixture
def needs() -> ProviderNeeds:
    return ProviderNeeds("onnxruntime-gpu 1.31.1 (fixture)", read_dynamic(FIXTURE).needed)


# ------------------------------------------------------------------------------ the ELF reader


@pytest.mark.parametrize("elf_class", [32, 64])
@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("strtab_shift", [0, 0x1000])
def test_reader_follows_the_loader_in_every_class_and_byte_order(elf_class: int, little_endian: bool,
                                                                 strtab_shift: int) -> None:
    data = build_elf(["libnvinfer.so.10", "libcudart.so.13", "libc.so.6"], soname="libx.so.1", runpath="$ORIGIN",
                     elf_class=elf_class, little_endian=little_endian, machine=183, strtab_shift=strtab_shift)
    dynamic = read_dynamic_bytes(data)
    assert dynamic.needed == ("libnvinfer.so.10", "libcudart.so.13", "libc.so.6")
    assert (dynamic.soname, dynamic.runpath) == ("libx.so.1", "$ORIGIN")
    assert (dynamic.elf_class, dynamic.little_endian, dynamic.machine) == (elf_class, little_endian, 183)


def test_reader_maps_strtab_through_its_segment() -> None:
    # Real libraries load their data segment above its file offset; a reader that took
    # DT_STRTAB for a file offset would run past this file's end.
    data = build_elf(["libnvinfer.so.10"], strtab_shift=0x1000)
    assert len(data) < 0x1000
    assert read_dynamic_bytes(data).needed == ("libnvinfer.so.10",)


def test_reader_without_soname_or_needed() -> None:
    dynamic = read_dynamic_bytes(build_elf([]))
    assert (dynamic.needed, dynamic.soname, dynamic.runpath) == ((), None, None)


def _truncated() -> bytes:
    return build_elf(["libnvinfer.so.10"])[:-5]  # the string table loses its end


def _no_dynamic() -> bytes:
    data = bytearray(build_elf(["libnvinfer.so.10"]))
    struct.pack_into("<I", data, 64 + 2 * 56, 1)  # the third program header: PT_DYNAMIC -> PT_LOAD
    return bytes(data)


def _strtab_unmapped() -> bytes:
    data = bytearray(build_elf(["libnvinfer.so.10"]))
    struct.pack_into("<Q", data, 64 + 56 + 16, 0x900000)  # move the string table's segment away
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"MZ\x90\x00" + bytes(100), r"not an ELF file"),
        (b"\x7fELF" + bytes([3, 1]) + bytes(60), r"unknown ELF class 3"),
        (b"\x7fELF", r"not an ELF file"),
        (_truncated(), r"truncated ELF file: string table"),
        (_no_dynamic(), r"no PT_DYNAMIC"),
        (_strtab_unmapped(), r"DT_STRTAB\) lies in no PT_LOAD segment"),
    ],
)
def test_reader_refuses_what_it_cannot_read(data: bytes, pattern: str) -> None:
    with pytest.raises(ElfFormatError, match=pattern):
        read_dynamic_bytes(data)


# ------------------------------------------------------------------------------ the real provider


def test_fixture_holds_the_wheels_list_as_readelf_shows_it() -> None:
    assert read_dynamic(FIXTURE).needed == READELF_1_31_1
    assert FIXTURE.stat().st_size < 2048
    record = json.loads(PROVENANCE.read_text())
    assert tuple(record["needed"]) == READELF_1_31_1
    assert record["wheel"] == "onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is not installed")
def test_fixture_reads_the_same_with_readelf() -> None:
    out = subprocess.run(["readelf", "-d", str(FIXTURE)], capture_output=True, text=True, check=True).stdout
    assert tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)) == read_dynamic(FIXTURE).needed


def test_recommended_needs_are_the_fixtures(needs: ProviderNeeds) -> None:
    # The constant behind every install hint must be what the wheel says.
    assert gpu_versions.RECOMMENDED_NEEDS.needed == needs.needed
    assert (needs.tensorrt_major, needs.cuda_major, needs.cudnn_major) == (10, 13, 9)
    assert needs.summary() == "TensorRT 10, CUDA 13, cuDNN 9"
    assert needs.tensorrt_requirement() == "tensorrt-cu13>=10,<11"
    assert needs.tensorrt_sonames == ("libnvinfer.so.10", "libnvonnxparser.so.10", "libcudart.so.13")


def test_a_list_without_tensorrt_has_no_requirement() -> None:
    cuda_only = ProviderNeeds("cuda provider", ("libcublas.so.13", "libcudart.so.13", "libc.so.6"))
    assert (cuda_only.tensorrt_major, cuda_only.cuda_major, cuda_only.cudnn_major) == (None, 13, None)
    with pytest.raises(ValueError, match="does not link libnvinfer"):
        cuda_only.tensorrt_requirement()
    # Without libcudart the meta package is all that can be named.
    assert ProviderNeeds("x", ("libnvinfer.so.8",)).tensorrt_requirement() == "tensorrt>=8,<9"


def test_installed_provider_needs_reads_the_file(tmp_path: Path) -> None:
    read = gpu_versions.installed_provider_needs(FIXTURE)
    assert read is not None and read.needed == READELF_1_31_1
    broken = tmp_path / gpu_versions.TRT_PROVIDER_LIBRARY
    broken.write_bytes(b"not a library")
    with pytest.raises(DependencyError, match=r"cannot read the TensorRT provider library .*not an ELF file.*"
                       r"Fix: pip install --force-reinstall --no-deps onnxruntime-gpu=="):
        gpu_versions.installed_provider_needs(broken)


def test_provider_library_is_found_beside_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake onnxruntime-gpu layout first on sys.path; the CPU build has no such file.
    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (tmp_path / "onnxruntime" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    shutil.copy(FIXTURE, capi / gpu_versions.TRT_PROVIDER_LIBRARY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    assert gpu_versions.provider_library() == capi / gpu_versions.TRT_PROVIDER_LIBRARY
    (capi / gpu_versions.TRT_PROVIDER_LIBRARY).unlink()
    assert gpu_versions.provider_library() is None


# ------------------------------------------------------------------------------ the comparison


def test_another_tensorrt_major_is_refused_with_a_one_line_fix(needs: ProviderNeeds) -> None:
    with pytest.raises(DependencyError) as info:
        gpu_versions.check_tensorrt(needs, TRT11)
    message = str(info.value)
    assert "\n" not in message
    assert "TensorRT 11.4.0.106 (tensorrt, tensorrt-cu13, " in message and "needs TensorRT 10 (libnvinfer.so.10" in message
    assert message.endswith(
        "Fix: pip uninstall -y tensorrt tensorrt-cu13 tensorrt-cu13-bindings tensorrt-cu13-libs && " + INSTALL_10)


def test_a_tensorrt_for_another_cuda_is_refused(needs: ProviderNeeds) -> None:
    assert gpu_versions.tensorrt_mismatch(needs, TRT10_CU12) == (
        "TensorRT 10.16.1.11 (tensorrt-cu12, tensorrt-cu12-libs) is built for CUDA 12, but onnxruntime-gpu 1.31.1 "
        "(fixture) needs CUDA 13 (libnvinfer.so.10, libnvonnxparser.so.10, libcudart.so.13)")
    with pytest.raises(DependencyError, match=r"pip uninstall -y tensorrt-cu12 tensorrt-cu12-libs && pip install"):
        gpu_versions.check_tensorrt(needs, TRT10_CU12)


@pytest.mark.parametrize("installed", [TRT10, InstalledTensorrt("10.13.3.9"), InstalledTensorrt("10.9.0", ("tensorrt",))])
def test_the_matching_major_passes(needs: ProviderNeeds, installed: InstalledTensorrt) -> None:
    assert gpu_versions.tensorrt_mismatch(needs, installed) is None
    gpu_versions.check_tensorrt(needs, installed)


def test_nothing_is_compared_when_a_side_is_unknown(needs: ProviderNeeds) -> None:
    assert gpu_versions.tensorrt_mismatch(None, TRT11) is None  # the CPU build, or Windows
    assert gpu_versions.tensorrt_mismatch(needs, None) is None  # no tensorrt: another error says so
    assert gpu_versions.tensorrt_mismatch(needs, InstalledTensorrt("unknown")) is None
    assert gpu_versions.tensorrt_mismatch(ProviderNeeds("x", ("libc.so.6",)), TRT11) is None


# ------------------------------------------------------------------------------ the runtime's device choice


@pytest.fixture
def gpu_install(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """onnxruntime-gpu 1.31.1's provider library installed; TensorRT set per test."""
    monkeypatch.setattr(gpu_versions, "provider_library", lambda: FIXTURE)
    devices._warned.clear()
    return monkeypatch


def _install_tensorrt(monkeypatch: pytest.MonkeyPatch, installed: InstalledTensorrt) -> None:
    monkeypatch.setattr(gpu_versions, "tensorrt_version", lambda: installed.version)
    monkeypatch.setattr(gpu_versions, "tensorrt_distributions", lambda: installed.distributions)


def test_explicit_trt_refuses_tensorrt_11(gpu_install: pytest.MonkeyPatch) -> None:
    _install_tensorrt(gpu_install, TRT11)
    with pytest.raises(DependencyError, match=r"does not match onnxruntime-gpu's TensorRT provider.*"
                       r"libnvinfer\.so\.10.*" + re.escape(INSTALL_10)):
        plan_providers("trt", available=WITH_TRT)


def test_explicit_trt_takes_tensorrt_10(gpu_install: pytest.MonkeyPatch) -> None:
    _install_tensorrt(gpu_install, TRT10)
    assert plan_providers("trt:1", available=WITH_TRT).label == "trt:1"


def test_auto_warns_and_takes_cuda_on_a_mismatch(gpu_install: pytest.MonkeyPatch) -> None:
    _install_tensorrt(gpu_install, TRT11)
    with pytest.warns(RuntimeWarning, match=r"^device 'auto' runs without the TensorRT engines: .*TensorRT 11\.4\.0\.106 .*"
                      + re.escape(INSTALL_10) + "$"):
        plan = plan_providers("auto", available=WITH_TRT, has_trt_engine=True)
    assert plan.label == "cuda:0"


# ------------------------------------------------------------------------------ install hints


def test_pyproject_trt_extra_is_the_providers_tensorrt(needs: ProviderNeeds) -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["trt"] == [needs.tensorrt_requirement()]
    # No `gpu` extra: it would install onnxruntime-gpu beside the core dependency onnxruntime.
    assert "gpu" not in project["optional-dependencies"]
    assert any(dep.startswith("onnxruntime") and not dep.startswith("onnxruntime-gpu") for dep in project["dependencies"])


_PIP_INSTALL = re.compile(r"pip install\b(?P<args>[^`&;\n|]*)")


def _hint_files() -> list[Path]:
    return [REPO / "README.md", REPO / "constraints.txt", *sorted((REPO / "docs").glob("*.md"))]


def test_every_install_hint_pins_what_the_provider_needs(needs: ProviderNeeds) -> None:
    """Every ``pip install`` in README.md, docs/ and constraints.txt that names TensorRT or
    onnxruntime-gpu names the recommended build and the TensorRT major its provider needs."""
    wanted_trt = needs.tensorrt_requirement()
    wanted_ort = {f"onnxruntime-gpu=={gpu_versions.RECOMMENDED_ORT_GPU}",
                  f"onnxruntime-gpu[cuda,cudnn]=={gpu_versions.RECOMMENDED_ORT_GPU}"}
    seen = 0
    bad = []
    for path in _hint_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in _PIP_INSTALL.finditer(line):
                for token in (t.strip("\"'") for t in match["args"].split()):
                    if token.startswith("tensorrt"):
                        seen += 1
                        if token != wanted_trt:
                            bad.append(f"{path.relative_to(REPO)}:{number}: {token}")
                    elif token.startswith("onnxruntime-gpu"):
                        seen += 1
                        if token not in wanted_ort:
                            bad.append(f"{path.relative_to(REPO)}:{number}: {token}")
    assert not bad, bad
    assert seen >= 4  # README and docs/gpu.md give these commands; fewer means the scan broke


def test_docs_gpu_matrix_row_is_the_fixtures(needs: ProviderNeeds) -> None:
    text = (REPO / "docs" / "gpu.md").read_text()
    row = re.search(r"^\| onnxruntime-gpu 1\.31\.1 \|(.*)\|$", text, re.MULTILINE)
    assert row is not None, "docs/gpu.md lost its 1.31.1 row"
    cells = [c.strip() for c in row.group(1).split("|")]
    assert cells[:3] == [f"CUDA {needs.cuda_major}", f"TensorRT {needs.tensorrt_major}", f"cuDNN {needs.cudnn_major}"]
    assert f"`{needs.tensorrt_requirement()}`" in cells[3]
    assert "**Nothing in this project has been loaded on GPU hardware yet**" in text


# ------------------------------------------------------------------------------ the fixture from the real wheel


def _fixture_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_provider_fixture", DATA / "make_provider_fixture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_fixture_is_what_the_real_wheel_gives() -> None:
    """Re-make the fixture from the onnxruntime-gpu 1.31.1 wheel (downloaded once into the test cache)."""
    script = _fixture_script()
    try:
        wheel = script.download_wheel("1.31.1")
    except RuntimeError as exc:
        pytest.skip(f"cannot download onnxruntime-gpu 1.31.1 ({exc})")
    elf, record = script.fixture_from_wheel(wheel)
    assert elf == FIXTURE.read_bytes()
    assert record == json.loads(PROVENANCE.read_text())
    assert tuple(record["needed"]) == READELF_1_31_1
