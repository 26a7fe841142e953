"""Whether a container's command can start, checked in the image before runc runs it.

runc reports a command it cannot find in its log (exit 1), and one whose interpreter is
missing (a ``#!`` line, or an ELF program's loader) or whose format is unknown only as the
container's own stderr and exit status 1, indistinguishable from the program failing. fsnap
checks these first and says so in one line with the statuses shells and docker use: 127 not
found, 126 found but not executable.
"""

from __future__ import annotations

import struct
from pathlib import Path

from fsnap.errors import CannotExecute, CommandNotFound
from fsnap.run import rootfs

HEADER = 4096  # where a #! line or an ELF program's headers and loader path are looked for
PT_INTERP = 3


def check_command(root: Path, name: str, cwd: str, path_env: str) -> None:
    """Raise CommandNotFound or CannotExecute unless ``name`` can start in ``root``."""
    found = rootfs.find_executable(root, name, cwd, path_env)
    if found is None:
        raise CommandNotFound(f"{name}: executable file not found in the image (PATH={path_env})")
    header = rootfs.read_file(root, found, HEADER)
    interpreter = _interpreter(header)
    if interpreter is None:
        raise CannotExecute(f"{name}: exec format error (neither an ELF program nor a #! script)")
    if interpreter and rootfs.find_executable(root, interpreter, "/", "") is None:
        raise CommandNotFound(f"{name}: its interpreter {interpreter} is not in the image")


def _interpreter(header: bytes) -> str | None:
    """The interpreter a program needs ("" for none: a static ELF, or one whose loader lies
    beyond the header), or None when the kernel would not execute it at all."""
    if header.startswith(b"#!"):
        line = header[2:].split(b"\n", 1)[0].strip()
        return line.split()[0].decode(errors="replace") if line else None
    if header.startswith(b"\x7fELF"):
        return _elf_interpreter(header)
    return None


def _elf_interpreter(header: bytes) -> str:
    """PT_INTERP of a 64- or 32-bit ELF of either byte order, if within ``header``."""
    wide, endian = header[4] == 2, "<" if header[5] == 1 else ">"
    try:
        if wide:
            (phoff,) = struct.unpack_from(endian + "Q", header, 0x20)
            size, count = struct.unpack_from(endian + "HH", header, 0x36)
        else:
            (phoff,) = struct.unpack_from(endian + "I", header, 0x1C)
            size, count = struct.unpack_from(endian + "HH", header, 0x2A)
        for index in range(count):
            at = phoff + index * size
            (kind,) = struct.unpack_from(endian + "I", header, at)
            if kind != PT_INTERP:
                continue
            if wide:
                (offset,) = struct.unpack_from(endian + "Q", header, at + 8)
                (length,) = struct.unpack_from(endian + "Q", header, at + 32)
            else:
                (offset,) = struct.unpack_from(endian + "I", header, at + 4)
                (length,) = struct.unpack_from(endian + "I", header, at + 16)
            path = header[offset : offset + length].split(b"\0", 1)[0]
            return path.decode(errors="replace") if offset + length <= len(header) else ""
    except struct.error:
        return ""  # headers beyond what was read: let the kernel decide
    return ""
