"""The metadata store: transactions across processes, totals, import, refusals, the JSON export."""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.source_server import SourceServer
from support.stores import exported_document, make_settings, stored

from diarization_audio.cli.store import main
from diarization_audio.errors import MetadataCorrupt
from diarization_audio.service.app import create_app
from diarization_audio.settings import Settings
from diarization_audio.store.tracker import JsonExporter, MetadataTracker
from diarization_audio.url_secrets import source_sha256

DATA = Path(__file__).resolve().parent / "data"


def tracker_at(directory: Path, url: str | None = None) -> MetadataTracker:
    settings = make_settings(directory, log_timezone="Asia/Kolkata", database_url=url)
    return MetadataTracker.from_settings(settings)


@pytest.fixture
def make_tracker() -> Iterator[Callable[..., MetadataTracker]]:
    """tracker_at, with every tracker's connections closed after the test."""
    made: list[MetadataTracker] = []

    def make(directory: Path, url: str | None = None) -> MetadataTracker:
        made.append(tracker_at(directory, url))
        return made[-1]

    yield make
    for tracker in made:
        tracker.close()


def everything(tracker: MetadataTracker) -> dict[str, dict[str, Any]]:
    _, entries = tracker.list_conversations(1_000_000, 0)
    return {entry["conversation_id"]: entry for entry in entries}


def recount(entries: dict[str, dict[str, Any]]) -> tuple[int, float, int]:
    """Conversations, seconds and bytes counted from the entries themselves."""
    files = [f for e in entries.values() for f in e["speakers"].values()]
    return (
        len(entries),
        round(sum(f["duration_seconds"] for f in files), 3),
        sum(f["file_size_bytes"] for f in files),
    )


def _writer(directory: str, url: str | None, worker: int, count: int) -> None:
    tracker = tracker_at(Path(directory), url)
    for n in range(count):
        tracker.record_file(f"w{worker}_{n}", "agent", stored(n))
        tracker.record_file(f"shared_{n}", f"speaker{worker}", stored(n))
    tracker.close()


def test_concurrent_processes_never_lose_an_update(
    tmp_path: Path, backend: str | None, make_tracker: Callable[..., MetadataTracker]
) -> None:
    """Four processes writing at once: every entry and speaker survives and the totals add up."""
    workers, count = 4, 25
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_writer, args=(str(tmp_path), backend, w, count)) for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    tracker = make_tracker(tmp_path, backend)
    entries = everything(tracker)
    assert len(entries) == workers * count + count
    for n in range(count):
        assert set(entries[f"shared_{n}"]["speakers"]) == {f"speaker{w}" for w in range(workers)}
        assert entries[f"shared_{n}"]["total"]["files"] == workers
    totals = tracker.totals()
    conversations, seconds, size = recount(entries)
    assert (totals.conversations, round(totals.micros / 1e6, 3), totals.size_bytes) == (
        conversations, seconds, size,
    )  # fmt: skip


def test_replacing_a_speaker_recomputes_totals(tracker: MetadataTracker) -> None:
    """Recording the same speaker again replaces it; totals count it once and created_at stays."""
    tracker.record_file("a", "agent", stored(1, seconds=60))
    first = tracker.get_conversation("a")
    tracker.record_file("a", "customer", stored(2, seconds=30))
    tracker.record_file("a", "agent", stored(3, seconds=120))
    last = tracker.get_conversation("a")
    assert first is not None and last is not None
    assert last["created_at"] == first["created_at"]
    assert last["total"]["files"] == 2
    assert last["total"]["duration_seconds"] == pytest.approx(150.005)
    assert tracker.statistics(1)["summary"]["total_minutes"] == round(150.005 / 60, 2)


def test_totals_kept_by_writes_equal_a_recount(tracker: MetadataTracker) -> None:
    """Totals kept write by write, with replacements and bulk writes, equal a full recount."""
    tracker.record_file("early", "agent", stored(1, stamp="2025-06-01T00:00:00+00:00"))
    for n in range(2, 40):
        tracker.record_file(f"c{n % 9}", f"s{n % 2}", stored(n))
    tracker.record_many([(f"bulk{n % 5}", "agent", stored(100 + n)) for n in range(12)])
    tracker.record_file("early", "agent", stored(5))
    entries = everything(tracker)
    totals = tracker.totals()
    assert (totals.conversations, round(totals.micros / 1e6, 3), totals.size_bytes) == recount(
        entries
    )
    assert totals.conversations == 15


def test_first_and_last_download_compare_instants(tracker: MetadataTracker) -> None:
    """first/last download compare instants, not strings, when offsets differ."""
    tracker.record_file("a", "agent", stored(1, stamp="2026-01-01T10:00:00+05:30"))
    tracker.record_file("b", "agent", stored(2, stamp="2026-01-01T05:00:00+00:00"))
    summary = tracker.statistics(1)["summary"]
    assert summary["first_download"] == "2026-01-01T10:00:00+05:30"
    assert summary["last_download"] == "2026-01-01T05:00:00+00:00"


def test_record_many_equals_recording_one_at_a_time(
    tmp_path: Path,
    new_database_url: Callable[[], str],
    make_tracker: Callable[..., MetadataTracker],
) -> None:
    """record_many leaves the same conversations, files and totals as record_file for each,
    on either database."""
    items = [(f"c{n % 7}", f"s{n % 3}", stored(n)) for n in range(30)]
    one, many = make_tracker(tmp_path / "one"), make_tracker(tmp_path / "many", new_database_url())
    for cid, label, record in items:
        one.record_file(cid, label, record)
    assert many.record_many(items) == 30
    first, second = everything(one), everything(many)
    assert list(first) == list(second)
    for cid in first:
        assert first[cid]["speakers"] == second[cid]["speakers"]
        assert first[cid]["total"] == second[cid]["total"]
    assert one.totals() == many.totals()


def test_a_failing_publish_records_nothing(tracker: MetadataTracker) -> None:
    """If publishing the file fails, the transaction is rolled back: no row, no total."""
    tracker.record_file("kept", "agent", stored(1))

    def broken() -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        tracker.record_file("lost", "agent", stored(2), broken)
    assert list(everything(tracker)) == ["kept"]
    assert tracker.totals().conversations == 1 and tracker.totals().size_bytes == 32000 * 60 + 1


# Import of the earlier JSON document --------------------------------------------------------


def v1_document(name: str) -> bytes:
    """A document written by the JSON-file store that the database replaces (tests/data)."""
    return gzip.decompress((DATA / f"metadata_v1_{name}.json.gz").read_bytes())


@pytest.mark.parametrize("name", ["small", "large"])
def test_first_start_imports_the_json_document_intact(
    tmp_path: Path, backend: str | None, name: str, make_tracker: Callable[..., MetadataTracker]
) -> None:
    """A service started where only the old JSON document exists keeps every entry as it was."""
    settings = make_settings(tmp_path, database_url=backend)
    raw = v1_document(name)
    Path(settings.metadata_file).write_bytes(raw)
    old = json.loads(raw)["conversations"]
    with TestClient(create_app(settings)) as client:
        page = client.get("/conversations", params={"limit": 1000, "offset": 0}).json()
        stats = client.get("/statistics", params={"target_hours": 10}).json()
    assert page["total"] == len(old)
    assert [e["conversation_id"] for e in page["conversations"]] == list(old)[:1000]
    imported = everything(make_tracker(tmp_path, backend))
    assert list(imported) == list(old)
    for cid, entry in old.items():
        # Each file gains the hash that tells its source apart, computed from its URL.
        for record in imported[cid]["speakers"].values():
            assert record.pop("source_sha256") == source_sha256(record["url"])
        assert imported[cid] == entry, cid
    conversations, seconds, size = recount(old)
    assert stats["summary"]["total_conversations"] == conversations
    assert stats["summary"]["total_minutes"] == round(seconds / 60, 2)
    assert stats["summary"]["total_size_mb"] == round(size / 1024 / 1024, 2)
    stamps = [f["downloaded_at"] for e in old.values() for f in e["speakers"].values()]
    assert stats["summary"]["first_download"] == min(stamps, key=datetime_of)
    assert stats["summary"]["last_download"] == max(stamps, key=datetime_of)
    # The original is kept beside the export, which now has the new head and no journal.
    assert (tmp_path / "conversations_metadata.json.v1").read_bytes() == raw
    exported = json.loads(Path(settings.metadata_file).read_text())
    assert exported["schema_version"] == 2 and "recent_changes" not in exported
    for entry in exported["conversations"].values():
        for record in entry["speakers"].values():
            assert record.pop("source_sha256") == source_sha256(record["url"])
    assert exported["conversations"] == old


def datetime_of(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def test_a_corrupt_json_document_is_not_imported(tmp_path: Path) -> None:
    """An unreadable old document stops the start-up, is left as it was, and no store is made."""
    settings = make_settings(tmp_path)
    Path(settings.metadata_file).write_text('{"conversations": ')
    with pytest.raises(MetadataCorrupt, match="not valid JSON") as refused:
        MetadataTracker.from_settings(settings).check()
    assert str(settings.metadata_file) in refused.value.full_message  # the scripts and log name it
    assert Path(settings.metadata_file).read_text() == '{"conversations": '
    database = sqlite3.connect(tmp_path / "conversations_metadata.sqlite3")
    assert database.execute("select name from sqlite_master").fetchall() == []


def _unknown_version(path: Path) -> None:
    tracker = MetadataTracker(f"sqlite:///{path}", path.with_suffix(".json"))
    tracker.check()
    tracker.close()
    with sqlite3.connect(path) as db:
        db.execute("update store_info set schema_version = 99")
    sqlite3.connect(path).execute("pragma wal_checkpoint(truncate)").close()


def _foreign_tables(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("create table invoices (id integer primary key, total real)")


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 400)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_garbage, "cannot be used"),
        (_unknown_version, "schema version 99"),
        (_foreign_tables, "invoices"),
    ],
)
def test_an_unusable_database_is_refused_and_left_untouched(
    tmp_path: Path, make: Any, says: str
) -> None:
    """Garbage, an unknown schema version or another program's tables: refused, not changed."""
    settings = make_settings(tmp_path)
    path = tmp_path / "conversations_metadata.sqlite3"
    make(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(MetadataCorrupt, match=says) as raised:
        MetadataTracker.from_settings(settings).check()
    assert str(path) not in raised.value.message and str(path) in raised.value.full_message
    with pytest.raises(MetadataCorrupt), TestClient(create_app(settings)):
        pass
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


# The JSON export -----------------------------------------------------------------------------


def test_the_export_is_the_store_as_a_json_document(tracker: MetadataTracker) -> None:
    """The export holds every conversation as the API shows it, is rewritten only when needed."""
    for n in range(5):
        tracker.record_file(f"c{n}", "agent", stored(n))
    tracker.record_file("c1", "customer", stored(9))
    done = tracker.export_json()
    assert done is not None and done.conversations == 5
    document = json.loads(tracker.export_path.read_text())
    assert set(document) == {"schema_version", "updated_at", "conversation_count", "conversations"}
    assert document["conversation_count"] == 5
    assert document["conversations"] == everything(tracker)
    assert done.size_bytes == tracker.export_path.stat().st_size
    assert tracker.export_json() is None  # nothing changed since
    tracker.record_file("c9", "agent", stored(10))
    assert tracker.export_due()
    assert tracker.export_json() is not None
    assert "c9" in json.loads(tracker.export_path.read_text())["conversations"]
    leftovers = [p.name for p in tracker.export_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_the_exporter_follows_writes_of_other_processes(
    tmp_path: Path, backend: str | None, make_tracker: Callable[..., MetadataTracker]
) -> None:
    """A running exporter picks up a write made through another connection within seconds."""
    settings = make_settings(tmp_path, metadata_export_seconds=0.2, database_url=backend)
    serving, elsewhere = make_tracker(tmp_path, backend), make_tracker(tmp_path, backend)
    serving.check()
    exporter = JsonExporter(serving, settings.metadata_export_seconds)
    exporter.start()
    try:
        elsewhere.record_file("from_elsewhere", "agent", stored(1))
        started = time.monotonic()
        exported_document(settings, lambda d: "from_elsewhere" in d["conversations"], timeout=10)
        lag = time.monotonic() - started
    finally:
        exporter.stop()
    assert lag < 5


def test_failures_are_kept_without_query_strings(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """A failed download is kept with its code and time, and the URL's query never is."""
    url = source.url("/status/404?X-Amz-Signature=s3cr3t&token=abc")
    response = client.post("/download/single", data={"conversation_id": "f1", "audio_url": url})
    assert response.status_code == 502
    stats = client.get("/statistics").json()
    assert stats["failures"] == {
        "total": 1, "last_24_hours": 1, "by_error_last_24_hours": {"source_error": 1},
    }  # fmt: skip
    (failure,) = MetadataTracker.from_settings(settings).failure_summary(recent=5)["recent"]
    assert failure["conversation_id"] == "f1" and failure["speaker_label"] == "speaker"
    assert failure["error_code"] == "source_error"
    assert failure["url"] == url.split("?")[0]
    assert "s3cr3t" not in json.dumps(failure)


def test_script_prints_statistics_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`metadata_tracker.py` prints the /statistics numbers; --export-json writes the document."""
    tracker = tracker_at(tmp_path)
    tracker.record_file("a", "agent", stored(1, seconds=1800))
    path = tmp_path / "conversations_metadata.json"
    assert main(["--metadata-file", str(path), "--target", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = tracker.statistics(1)
    printed.pop("timestamp"), expected.pop("timestamp")
    assert printed == expected
    assert printed["progress"]["progress_percentage"] == 50.0
    assert main(["--metadata-file", str(path), "--export-json"]) == 0
    assert "exported 1 conversations" in capsys.readouterr().out
    assert json.loads(path.read_text())["conversations"] == everything(tracker)


def test_only_the_store_lives_beside_the_document(tmp_path: Path) -> None:
    """Writes leave the SQLite database (and its WAL files) and, once exported, the document."""
    tracker = tracker_at(tmp_path)
    for n in range(20):
        tracker.record_file(f"c{n}", "agent", stored(n))
    tracker.export_json()
    names = sorted(p.name for p in tracker.export_path.parent.iterdir() if p.is_file())
    assert names == [
        "conversations_metadata.json", "conversations_metadata.sqlite3",
        "conversations_metadata.sqlite3-shm", "conversations_metadata.sqlite3-wal",
    ]  # fmt: skip
