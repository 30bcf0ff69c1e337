"""The one atomic writer: a file appears whole or not at all, and never clobbers by mistake."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import pytest

from diarization_audio.atomic import write_atomically


def test_the_new_file_replaces_the_old_one_whole(tmp_path: Path) -> None:
    """The file holds what was written, with a plain file's permissions, and nothing else is
    left in the folder; the writer's result comes back."""
    path = tmp_path / "report.csv"
    path.write_text("old\n")
    plain = tmp_path / "plain"
    plain.write_text("")

    def write(handle: IO[str]) -> int:
        return handle.write("a,b\r\n1,2\r\n")

    assert write_atomically(path, write, newline="") == 10
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"
    assert path.stat().st_mode == plain.stat().st_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "report.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """A writer that fails half-way changes nothing: the old bytes stay, the temporary goes."""
    path = tmp_path / "export.json"
    path.write_bytes(b"{}\n")

    def write(handle: IO[bytes]) -> None:
        handle.write(b'{"half": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, write, binary=True)
    assert path.read_bytes() == b"{}\n"
    assert os.listdir(tmp_path) == ["export.json"]


def test_without_overwrite_a_taken_name_is_refused(tmp_path: Path) -> None:
    """With overwrite=False an existing file is kept and FileExistsError raised, and a free
    name gets the file."""
    taken, free = tmp_path / "failed_rows_1.csv", tmp_path / "failed_rows_2.csv"
    taken.write_text("another run's rows\n")

    def write(handle: IO[str]) -> None:
        handle.write("mine\n")

    with pytest.raises(FileExistsError):
        write_atomically(taken, write, overwrite=False)
    assert taken.read_text() == "another run's rows\n"
    write_atomically(free, write, overwrite=False)
    assert free.read_text() == "mine\n"
    assert sorted(os.listdir(tmp_path)) == ["failed_rows_1.csv", "failed_rows_2.csv"]
