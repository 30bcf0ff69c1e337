"""The JSON export copies what did not change from the document before: the same bytes as
writing it whole, and written whole whenever the copy could be wrong."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
from support.stores import make_settings, stored

from diarization_audio.objects import Folder
from diarization_audio.store import json_export
from diarization_audio.store.schema import SCHEMA_VERSION
from diarization_audio.store.tracker import MetadataTracker

UPDATED_AT = re.compile(rb'"updated_at": "[^"]*"')


def exported(tracker: MetadataTracker, tmp_path: Path) -> int:
    """Export, check the document is byte for byte the one written whole from the store (but
    for the time of writing), and return how many entries were copied from the one before."""
    done = tracker.export_json()
    assert done is not None
    whole = tracker.export_json(force=True, path=tmp_path / "whole.json")
    assert whole is not None and whole.kept == 0
    document = tracker.export_path.read_bytes()
    assert UPDATED_AT.sub(b"", document, 1) == UPDATED_AT.sub(b"", whole.path.read_bytes(), 1)
    assert done.size_bytes == len(document)
    assert json.loads(document)["conversation_count"] == done.conversations
    return done.kept


def test_each_export_copies_the_entries_written_before_the_first_change(
    tracker: MetadataTracker, tmp_path: Path
) -> None:
    """New conversations, a second leg, a replaced file, erasures at the end and in the middle
    and a conversation stored again after its erase: every document is the whole one's bytes."""
    changes_one_by_one(tracker, tmp_path)


def test_the_copy_reads_the_document_in_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read in blocks shorter than the text that begins an entry, the document before is still
    found and copied exactly (as a 160 MB one is, in blocks of 1 MiB)."""
    monkeypatch.setattr(json_export, "COPY_BYTES", 5)
    tracker = MetadataTracker.from_settings(make_settings(tmp_path))
    changes_one_by_one(tracker, tmp_path)
    tracker.close()


def changes_one_by_one(tracker: MetadataTracker, tmp_path: Path) -> None:
    for n in range(5):
        tracker.record_file(f"c{n}", "agent", stored(n))
    assert exported(tracker, tmp_path) == 0  # no document yet
    tracker.record_file("c5", "agent", stored(5))
    tracker.record_file("c6", "agent", stored(6))
    assert exported(tracker, tmp_path) == 5
    tracker.record_file("c6", "customer", stored(7))
    assert exported(tracker, tmp_path) == 6
    tracker.record_file("c2", "agent", stored(8))  # replaced: c2 to c6 are written again
    assert exported(tracker, tmp_path) == 2
    tracker.erase("c6", "consent withdrawn", Folder(tmp_path / "audio"))
    assert exported(tracker, tmp_path) == 6
    tracker.erase("c1", "consent withdrawn", Folder(tmp_path / "audio"))
    assert exported(tracker, tmp_path) == 0  # where c1 was is not known: written whole
    tracker.record_file("c1", "agent", stored(9), allow_erased=True)  # stored again, last
    assert exported(tracker, tmp_path) == 5
    assert list(json.loads(tracker.export_path.read_bytes())["conversations"]) == [
        "c0", "c2", "c3", "c4", "c5", "c1",
    ]  # fmt: skip


def test_a_change_that_leaves_the_entries_alone_copies_them_all(
    tracker: MetadataTracker, tmp_path: Path
) -> None:
    """A write that changes no entry (a tombstone for an id never stored) copies every entry and
    writes a new head."""
    for n in range(3):
        tracker.record_file(f"c{n}", "agent", stored(n))
    exported(tracker, tmp_path)
    tracker.erase("never", "", Folder(tmp_path / "audio"))
    assert exported(tracker, tmp_path) == 3


def _replaced_by_an_editor(path: Path) -> None:
    """As `jq ... > tmp && mv tmp doc` would: a new file of the same length renamed in."""
    edited = path.with_name("edited.json")
    edited.write_bytes(path.read_bytes().replace(b"/store/c0.wav", b"/store/X0.wav"))
    os.replace(edited, path)


def _edited_in_place(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(0, os.SEEK_END)
        handle.write(b"\n")


@pytest.mark.parametrize("change", [_replaced_by_an_editor, _edited_in_place, Path.unlink])
def test_a_document_changed_since_its_export_is_written_whole(
    tmp_path: Path, change: object
) -> None:
    """Nothing is copied from a document that is not the file the last export wrote: an edit is
    overwritten, as the docs promise."""
    tracker = MetadataTracker.from_settings(make_settings(tmp_path))
    for n in range(3):
        tracker.record_file(f"c{n}", "agent", stored(n))
    exported(tracker, tmp_path)
    change(tracker.export_path)  # type: ignore[operator]
    tracker.record_file("c3", "agent", stored(3))
    assert exported(tracker, tmp_path) == 0
    assert b"X0.wav" not in tracker.export_path.read_bytes()
    tracker.close()


def test_a_version_6_store_exports_whole_once_then_copies(tmp_path: Path) -> None:
    """Migrating from schema 6 keeps every row; its first export is written whole (which file
    was exported before is not known), the next one copies."""
    settings = make_settings(tmp_path)
    tracker = MetadataTracker.from_settings(settings)
    for n in range(3):
        tracker.record_file(f"c{n}", "agent", stored(n))
    tracker.export_json()
    tracker.close()
    path = tmp_path / "conversations_metadata.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("alter table conversations drop column changed_revision")
        db.execute("alter table store_info drop column exported_file")
        db.execute("update store_info set schema_version = 6")
        db.execute("update store_info set revision = revision + 1")
        before = db.execute("select * from conversations order by seq").fetchall()
    tracker = MetadataTracker.from_settings(settings)
    assert exported(tracker, tmp_path) == 0
    tracker.record_file("c3", "agent", stored(3))
    assert exported(tracker, tmp_path) == 3
    tracker.close()
    with sqlite3.connect(path) as db:
        version = db.execute("select schema_version from store_info").fetchone()[0]
        after = db.execute("select * from conversations order by seq").fetchall()
    assert version == SCHEMA_VERSION == 7
    assert [row[:-1] for row in after[:3]] == before
    assert [row[-1] for row in after[:3]] == [0, 0, 0]
