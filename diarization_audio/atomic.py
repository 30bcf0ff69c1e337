"""The one writer of a file that appears whole or not at all: a temporary name beside it, fsync,
rename (or link) into place, fsync of the directory.

A reader sees the old file or the new one, never a part; after a crash or a power cut the name
holds one of the two. The temporary file is made like any new file, so it gets the permissions
a plain open() would give it, and it is removed whatever goes wrong.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


def write_atomically(
    path: Path,
    write: Callable[[IO[Any]], T],
    *,
    binary: bool = False,
    newline: str | None = None,
    overwrite: bool = True,
) -> T:
    """Call `write` with a new file open beside `path`, then put that file in place of `path`.

    Text files are UTF-8 (`newline` as for open()). With `overwrite` False the file is linked
    into place, so an existing `path` is never replaced: FileExistsError then, and nothing
    written. Returns what `write` returned; OSError as it happened.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        if binary:
            handle: IO[Any] = open(temporary, "xb")  # noqa: SIM115 (closed below, then fsynced)
        else:
            handle = open(temporary, "x", encoding="utf-8", newline=newline)  # noqa: SIM115
        with handle:
            result = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            _link(temporary, path)
        fsync_directory(path.parent)
        return result
    finally:
        temporary.unlink(missing_ok=True)


def _link(temporary: Path, path: Path) -> None:
    """`temporary` also under `path`, failing rather than replacing a file already there."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: rename, having looked first
        if path.exists():
            raise FileExistsError(f"{path} exists") from None
        os.replace(temporary, path)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
