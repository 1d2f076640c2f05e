"""Minimal ELF shared objects written byte by byte: an ELF header, program headers and a dynamic section.

Used by ``tests/deploy/test_gpu_versions.py`` (synthetic libraries in every ELF class and byte
order) and by ``tests/data/make_provider_fixture.py`` (the committed stand-in for
onnxruntime-gpu's TensorRT provider: its dynamic entries in a file of a few hundred bytes).

Layout: header, two ``PT_LOAD`` segments and ``PT_DYNAMIC``; the dynamic entries sit in the
first segment (virtual address = file offset), the string table in the second, mapped at a
virtual address ``strtab_shift`` above its file offset, as in real libraries whose data
segment is not loaded where it lies in the file. A reader that takes ``DT_STRTAB`` for a file
offset therefore reads the wrong bytes. No section headers: the loader does not need them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

ET_DYN = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_DYNAMIC = 2
DT_NEEDED = 1
DT_STRTAB = 5
DT_STRSZ = 10
DT_SONAME = 14
DT_RUNPATH = 29


def build_elf(
    needed: Sequence[str],
    *,
    soname: str | None = None,
    runpath: str | None = None,
    elf_class: int = 64,
    little_endian: bool = True,
    machine: int = EM_X86_64,
    strtab_shift: int = 0x1000,
) -> bytes:
    """An ELF shared object whose dynamic section names ``needed`` (in order), ``soname`` and ``runpath``."""
    end = "<" if little_endian else ">"
    wide = elf_class == 64
    ehsize, phentsize, dynsize = (64, 56, 16) if wide else (52, 32, 8)
    phnum = 3

    strings = bytearray(b"\0")
    offsets: dict[str, int] = {}

    def intern(text: str) -> int:
        if text not in offsets:
            offsets[text] = len(strings)
            strings.extend(text.encode() + b"\0")
        return offsets[text]

    tags: list[tuple[int, int]] = [(DT_NEEDED, intern(name)) for name in needed]
    if soname is not None:
        tags.append((DT_SONAME, intern(soname)))
    if runpath is not None:
        tags.append((DT_RUNPATH, intern(runpath)))
    n_dyn = len(tags) + 3  # + DT_STRTAB, DT_STRSZ, DT_NULL
    dyn_off = ehsize + phnum * phentsize
    str_off = dyn_off + n_dyn * dynsize
    str_vaddr = str_off + strtab_shift
    tags += [(DT_STRTAB, str_vaddr), (DT_STRSZ, len(strings)), (0, 0)]

    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if little_endian else 2, 1, 0]) + bytes(8)
    if wide:
        header = ident + struct.pack(end + "HHIQQQIHHHHHH", ET_DYN, machine, 1, 0, ehsize, 0, 0, ehsize,
                                     phentsize, phnum, 64, 0, 0)
    else:
        header = ident + struct.pack(end + "HHIIIIIHHHHHH", ET_DYN, machine, 1, 0, ehsize, 0, 0, ehsize,
                                     phentsize, phnum, 40, 0, 0)

    def phdr(p_type: int, offset: int, vaddr: int, size: int) -> bytes:
        if wide:  # type, flags, offset, vaddr, paddr, filesz, memsz, align
            return struct.pack(end + "IIQQQQQQ", p_type, 4, offset, vaddr, vaddr, size, size, 8)
        return struct.pack(end + "8I", p_type, offset, vaddr, vaddr, size, size, 4, 4)

    dyn_fmt = end + ("qQ" if wide else "iI")
    program = (phdr(PT_LOAD, 0, 0, str_off) + phdr(PT_LOAD, str_off, str_vaddr, len(strings))
               + phdr(PT_DYNAMIC, dyn_off, dyn_off, n_dyn * dynsize))
    dynamic = b"".join(struct.pack(dyn_fmt, tag, value) for tag, value in tags)
    data = header + program + dynamic + bytes(strings)
    assert len(header) == ehsize and len(program) == phnum * phentsize and len(data) == str_off + len(strings)
    return data
