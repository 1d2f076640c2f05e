"""The needed-library list (``DT_NEEDED``) of an ELF shared library, read in pure Python.

Why: which TensorRT and CUDA an ``onnxruntime-gpu`` build needs is written in its TensorRT
provider library, ``libonnxruntime_providers_tensorrt.so``, as the sonames the dynamic loader
must find (``libnvinfer.so.10``, ``libcudart.so.13``, ...); docs/design.md#gpu-runtime-versions.
Reading them needs no ``readelf`` on the user's machine and never loads the library (loading is
exactly what fails when the versions disagree).

The reader follows the loader's route, not the section table (which ``strip`` may remove): the
``PT_DYNAMIC`` program header gives the dynamic entries, ``DT_STRTAB`` (a virtual address,
mapped to a file offset through the ``PT_LOAD`` segment that holds it) and ``DT_STRSZ`` give
the string table, and each ``DT_NEEDED`` entry is an offset into it. 32- and 64-bit, little-
and big-endian files are read alike.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DynamicSection", "ElfFormatError", "read_dynamic", "read_dynamic_bytes"]

_MAGIC = b"\x7fELF"
_PT_LOAD = 1
_PT_DYNAMIC = 2
_DT_NULL = 0
_DT_NEEDED = 1
_DT_STRTAB = 5
_DT_STRSZ = 10
_DT_SONAME = 14
_DT_RPATH = 15
_DT_RUNPATH = 29
#: e_phnum's escape value: the real count is then in section 0 (never seen in shared libraries).
_PN_XNUM = 0xFFFF


class ElfFormatError(ValueError):
    """The bytes are not an ELF file, or its dynamic section cannot be read."""


@dataclass(frozen=True)
class DynamicSection:
    """The string-valued entries of an ELF file's dynamic section.

    Attributes:
        needed: the ``DT_NEEDED`` sonames, in file order (the loader's search order).
        soname: ``DT_SONAME``, or None.
        runpath: ``DT_RUNPATH`` (else ``DT_RPATH``), or None.
        elf_class: 32 or 64.
        little_endian: byte order.
        machine: ``e_machine`` (62 = x86-64, 183 = AArch64).
    """

    needed: tuple[str, ...]
    soname: str | None
    runpath: str | None
    elf_class: int
    little_endian: bool
    machine: int


@dataclass(frozen=True)
class _Layout:
    """Struct formats and field positions of one ELF class and byte order."""

    end: str
    phoff: str  # the format of e_phoff
    phoff_at: int  # its offset: 0x20 (64-bit) / 0x1C (32-bit)
    phnum_at: int  # offset of e_phentsize, e_phnum (two half-words)
    phdr: str
    #: positions of p_type, p_offset, p_vaddr, p_filesz in an unpacked program header (the
    #: 64-bit header moves p_flags to the front, so the two classes differ).
    phdr_index: tuple[int, int, int, int]
    dyn: str


def _layout(elf_class: int, little: bool) -> _Layout:
    end = "<" if little else ">"
    if elf_class == 64:
        return _Layout(end, "Q", 0x20, 0x36, "IIQQQQQQ", (0, 2, 3, 5), "qQ")
    return _Layout(end, "I", 0x1C, 0x2A, "8I", (0, 1, 2, 4), "iI")


def _unpack(fmt: str, data: bytes | memoryview, offset: int, what: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise ElfFormatError(f"truncated ELF file: {what} at byte {offset} runs past its end ({len(data)} bytes)")
    return struct.unpack_from(fmt, data, offset)


def read_dynamic_bytes(data: bytes | memoryview) -> DynamicSection:
    """Read the dynamic section of an ELF image held in memory.

    Raises:
        ElfFormatError: not an ELF file, truncated, or without a readable dynamic section
            (a static executable or an object file has none).
    """
    if len(data) < 0x34 or bytes(data[:4]) != _MAGIC:
        raise ElfFormatError("not an ELF file (no \\x7fELF magic)")
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise ElfFormatError(f"unknown ELF class {ei_class} or byte order {ei_data}")
    elf_class = 64 if ei_class == 2 else 32
    little = ei_data == 1
    lay = _layout(elf_class, little)
    (machine,) = _unpack(lay.end + "H", data, 0x12, "e_machine")
    (phoff,) = _unpack(lay.end + lay.phoff, data, lay.phoff_at, "e_phoff")
    phentsize, phnum = _unpack(lay.end + "HH", data, lay.phnum_at, "e_phentsize/e_phnum")
    if phnum == _PN_XNUM:
        raise ElfFormatError("ELF file with more than 65534 program headers is not supported")
    phdr_fmt = lay.end + lay.phdr
    if phnum and phentsize < struct.calcsize(phdr_fmt):
        raise ElfFormatError(f"program header entries of {phentsize} bytes are too small")

    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None  # (offset, filesz)
    for i in range(phnum):
        raw = _unpack(phdr_fmt, data, phoff + i * phentsize, f"program header {i}")
        p_type, p_offset, p_vaddr, p_filesz = (raw[k] for k in lay.phdr_index)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        raise ElfFormatError("ELF file has no PT_DYNAMIC program header (not a dynamically linked library)")

    dyn_fmt = lay.end + lay.dyn
    dyn_size = struct.calcsize(dyn_fmt)
    entries: list[tuple[int, int]] = []
    start, size = dynamic
    for offset in range(start, start + size - dyn_size + 1, dyn_size):
        tag, value = _unpack(dyn_fmt, data, offset, "dynamic entry")
        if tag == _DT_NULL:
            break
        entries.append((tag, value))

    strtab_vaddr = next((v for t, v in entries if t == _DT_STRTAB), None)
    strsz = next((v for t, v in entries if t == _DT_STRSZ), None)
    if strtab_vaddr is None or strsz is None:
        raise ElfFormatError("dynamic section has no DT_STRTAB/DT_STRSZ")
    strtab = _file_offset(strtab_vaddr, loads)
    if strtab + strsz > len(data):
        raise ElfFormatError(f"truncated ELF file: string table of {strsz} bytes at byte {strtab}")
    table = bytes(data[strtab:strtab + strsz])

    def string(index: int) -> str:
        if index >= len(table):
            raise ElfFormatError(f"dynamic string offset {index} is outside the {len(table)}-byte string table")
        stop = table.find(b"\0", index)
        if stop < 0:
            raise ElfFormatError(f"dynamic string at offset {index} is not NUL-terminated")
        return table[index:stop].decode("utf-8", errors="replace")

    needed = tuple(string(v) for t, v in entries if t == _DT_NEEDED)
    soname = next((string(v) for t, v in entries if t == _DT_SONAME), None)
    runpath = next((string(v) for t, v in entries if t == _DT_RUNPATH), None)
    if runpath is None:
        runpath = next((string(v) for t, v in entries if t == _DT_RPATH), None)
    return DynamicSection(needed=needed, soname=soname, runpath=runpath, elf_class=elf_class,
                          little_endian=little, machine=machine)


def _file_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int:
    """The file offset of a virtual address, through the PT_LOAD segment that maps it."""
    for seg_vaddr, seg_offset, seg_filesz in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_filesz:
            return vaddr - seg_vaddr + seg_offset
    raise ElfFormatError(f"address {vaddr:#x} (DT_STRTAB) lies in no PT_LOAD segment")


def read_dynamic(path: str | os.PathLike[str]) -> DynamicSection:
    """Read the dynamic section of an ELF file (the whole file is read; provider libraries are ~1 MB).

    Raises:
        OSError: the file cannot be read.
        ElfFormatError: see :func:`read_dynamic_bytes`.
    """
    return read_dynamic_bytes(Path(path).read_bytes())
