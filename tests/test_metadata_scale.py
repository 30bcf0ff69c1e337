"""Metadata at scale: bulk records, totals kept per version, catching up from recent changes."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from metadata_document import JOURNAL_ENTRIES, JOURNAL_REVISIONS, compute_statistics
from metadata_tracker import FileRecord, MetadataTracker


def record(n: int, seconds: float = 60.0, stamp: str | None = None) -> FileRecord:
    return FileRecord(
        filepath=f"/store/c{n}.wav",
        url=f"http://127.0.0.1/{n}.mp3",
        file_size_bytes=32000 * int(seconds) + n,
        duration_seconds=seconds + n / 1000,
        sample_rate=16000,
        channels=1,
        sha256=f"{n:064x}",
        downloaded_at=stamp or f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}+05:30",
    )


def parsed(path: Path) -> dict[str, object]:
    document: dict[str, object] = orjson.loads(path.read_bytes())
    return document


def test_record_many_equals_recording_one_at_a_time(tmp_path: Path) -> None:
    """record_many leaves the same conversations as record_file called for each, in one write."""
    items = [(f"c{n % 7}", f"s{n % 3}", record(n)) for n in range(30)]
    one = MetadataTracker(tmp_path / "one.json")
    for cid, label, rec in items:
        one.record_file(cid, label, rec)
    many = MetadataTracker(tmp_path / "many.json")
    entries = many.record_many(items)
    assert len(entries) == 30 and entries[-1] == many.get_conversation("c1")

    first, second = parsed(tmp_path / "one.json"), parsed(tmp_path / "many.json")
    assert list(first["conversations"]) == list(second["conversations"])  # type: ignore[call-overload]
    for cid in first["conversations"]:  # type: ignore[attr-defined]
        a = first["conversations"][cid]  # type: ignore[index]
        b = second["conversations"][cid]  # type: ignore[index]
        assert a["speakers"] == b["speakers"] and a["total"] == b["total"]
    assert second["revision"] == 1 and first["revision"] == 30


def test_statistics_kept_by_writes_match_a_full_count(tmp_path: Path) -> None:
    """Totals updated write by write, replacing earliest and latest files too, equal a recount."""
    tracker = MetadataTracker(tmp_path / "meta.json", "Asia/Kolkata")
    tracker.statistics()
    tracker.record_file("early", "agent", record(1, stamp="2025-06-01T00:00:00+00:00"))
    for n in range(2, 40):
        tracker.record_file(f"c{n % 9}", f"s{n % 2}", record(n))
    tracker.record_file("late", "agent", record(99, stamp="2027-01-01T00:00:00+05:30"))
    tracker.record_file("early", "agent", record(5))  # replaces the earliest download
    tracker.record_file("late", "agent", record(6))  # and the latest
    tracker.record_file("mixed", "agent", record(7, stamp="2026-01-01T00:00:03Z"))
    kept = tracker.statistics(10)
    recount = compute_statistics(parsed(tmp_path / "meta.json"), 10, kept["timestamp"])
    assert kept == recount
    assert kept["summary"]["total_conversations"] == 12


def test_a_process_behind_catches_up_without_reading_the_conversations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader a few writes behind sees exactly the file's document, from the head alone."""
    path = tmp_path / "meta.json"
    writer, reader = MetadataTracker(path), MetadataTracker(path)
    writer.record_many([(f"c{n}", "agent", record(n)) for n in range(200)])
    reader.statistics()
    for n in range(5):
        writer.record_file(f"c{n * 40}", "customer", record(1000 + n))
        writer.record_file(f"new{n}", "agent", record(2000 + n))

    def refuse(raw: bytes) -> object:
        raise AssertionError("parsed the whole document")

    monkeypatch.setattr(reader, "_parse", refuse)
    caught_up = reader.snapshot()
    monkeypatch.undo()
    assert caught_up == parsed(path)
    assert list(caught_up["conversations"]) == list(parsed(path)["conversations"])  # type: ignore[call-overload]
    stats = reader.statistics(5)
    assert stats == compute_statistics(parsed(path), 5, stats["timestamp"])
    # And it writes on top of what it caught up with, losing nothing.
    reader.record_file("from_reader", "agent", record(3000))
    assert len(parsed(path)["conversations"]) == 206  # type: ignore[arg-type]


def test_too_far_behind_or_a_foreign_write_reads_everything_again(tmp_path: Path) -> None:
    """Falling out of the recent changes, or a file rewritten by hand, forces a full read."""
    path = tmp_path / "meta.json"
    writer, reader = MetadataTracker(path), MetadataTracker(path)
    writer.record_file("a", "agent", record(1))
    reader.snapshot()
    for n in range(JOURNAL_REVISIONS + 1):
        writer.record_file(f"b{n}", "agent", record(n))
    assert reader.snapshot() == parsed(path)

    # Same revision, other content: an edit by hand while the reader held the old version.
    document = parsed(path)
    document["conversations"]["a"]["total"]["duration_seconds"] = 9999.0  # type: ignore[index]
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    os.utime(path, ns=(1, 1))
    assert reader.get_conversation("a")["total"]["duration_seconds"] == 9999.0  # type: ignore[index]

    # An import bigger than the journal holds is not journalled: readers behind read it all.
    writer.record_many([(f"bulk{n}", "agent", record(n)) for n in range(JOURNAL_ENTRIES + 1)])
    assert parsed(path)["recent_changes"] == []
    assert reader.snapshot() == parsed(path)


def test_the_journal_stays_small(tmp_path: Path) -> None:
    """recent_changes never holds more than its limits, whatever the history."""
    path = tmp_path / "meta.json"
    tracker = MetadataTracker(path)
    for n in range(JOURNAL_REVISIONS * 2):
        tracker.record_many([(f"c{n}_{k}", "agent", record(k)) for k in range(n % 9 + 1)])
    changes = parsed(path)["recent_changes"]
    assert isinstance(changes, list) and 0 < len(changes) <= JOURNAL_REVISIONS
    assert sum(len(c["conversations"]) for c in changes) <= JOURNAL_ENTRIES
    revisions = [c["revision"] for c in changes]
    assert revisions == list(range(revisions[0], parsed(path)["revision"] + 1))  # type: ignore[operator]
