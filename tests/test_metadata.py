"""The metadata file: atomic, locked across processes, backed up, never overwritten when corrupt."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from conftest import make_settings
from fastapi.testclient import TestClient

from errors import MetadataCorrupt
from main import create_app
from metadata_tracker import FileRecord, MetadataTracker, main


def record(n: int, seconds: float = 60.0) -> FileRecord:
    return FileRecord(
        filepath=f"/store/c{n}.wav",
        url=f"http://127.0.0.1/{n}.mp3",
        file_size_bytes=32000 * int(seconds),
        duration_seconds=seconds,
        sample_rate=16000,
        channels=1,
        sha256="0" * 64,
        downloaded_at=f"2026-01-01T00:00:{n % 60:02d}+05:30",
    )


def _writer(path: str, worker: int, count: int) -> None:
    tracker = MetadataTracker(path, "Asia/Kolkata")
    for n in range(count):
        tracker.record_file(f"w{worker}_{n}", "agent", record(n))
        tracker.record_file(f"shared_{n}", f"speaker{worker}", record(n))


def test_concurrent_processes_never_lose_an_update(tmp_path: Path) -> None:
    """Four processes writing at once: every entry and every speaker survives, JSON stays valid."""
    path = tmp_path / "meta.json"
    workers, count = 4, 25
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, count)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    doc = json.loads(path.read_text())
    conversations = doc["conversations"]
    assert len(conversations) == workers * count + count
    for n in range(count):
        assert set(conversations[f"shared_{n}"]["speakers"]) == {
            f"speaker{w}" for w in range(workers)
        }
        assert conversations[f"shared_{n}"]["total"]["files"] == workers
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_each_write_keeps_the_previous_version_as_bak(tmp_path: Path) -> None:
    """After a write, <file>.bak holds exactly the document before it."""
    tracker = MetadataTracker(tmp_path / "meta.json")
    tracker.record_file("a", "agent", record(1))
    before = (tmp_path / "meta.json").read_bytes()
    tracker.record_file("b", "agent", record(2))
    assert (tmp_path / "meta.json.bak").read_bytes() == before
    assert set(json.loads((tmp_path / "meta.json").read_text())["conversations"]) == {"a", "b"}


def test_replacing_a_speaker_recomputes_totals(tmp_path: Path) -> None:
    """Recording the same speaker again replaces it; totals count it once and created_at stays."""
    tracker = MetadataTracker(tmp_path / "meta.json")
    first = tracker.record_file("a", "agent", record(1, seconds=60))
    tracker.record_file("a", "customer", record(2, seconds=30))
    last = tracker.record_file("a", "agent", record(3, seconds=120))
    assert last["created_at"] == first["created_at"]
    assert last["total"]["files"] == 2
    assert last["total"]["duration_seconds"] == 150
    assert tracker.statistics(1)["summary"]["total_minutes"] == 2.5


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"conversations": []}', b""])
def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    """A file that does not parse raises MetadataCorrupt naming it, and is never overwritten."""
    path = tmp_path / "meta.json"
    path.write_bytes(content)
    tracker = MetadataTracker(path)
    with pytest.raises(MetadataCorrupt, match=str(path)):
        tracker.statistics(10)
    with pytest.raises(MetadataCorrupt):
        tracker.record_file("a", "agent", record(1))
    assert path.read_bytes() == content


def test_server_refuses_to_start_on_a_corrupt_file(tmp_path: Path) -> None:
    """The app's start-up fails on a corrupt metadata file and leaves it as it was."""
    settings = make_settings(tmp_path)
    Path(settings.metadata_file).write_text("{oops")
    with pytest.raises(MetadataCorrupt), TestClient(create_app(settings)):
        pass
    assert Path(settings.metadata_file).read_text() == "{oops"


def test_snapshot_sees_writes_of_other_instances(tmp_path: Path) -> None:
    """A reader's cache notices a write made by another tracker (another process in real life)."""
    reader = MetadataTracker(tmp_path / "meta.json")
    writer = MetadataTracker(tmp_path / "meta.json")
    assert reader.check() == 0
    writer.record_file("a", "agent", record(1))
    assert reader.get_conversation("a") is not None
    writer.record_file("b", "agent", record(2))
    assert reader.check() == 2


def test_statistics_mixed_time_zones_sort_by_instant(tmp_path: Path) -> None:
    """first/last download compare instants, not strings, when offsets differ."""
    tracker = MetadataTracker(tmp_path / "meta.json")
    early = FileRecord(**{**record(1).__dict__, "downloaded_at": "2026-01-01T10:00:00+05:30"})
    late = FileRecord(**{**record(2).__dict__, "downloaded_at": "2026-01-01T05:00:00+00:00"})
    tracker.record_file("a", "agent", early)
    tracker.record_file("b", "agent", late)
    summary = tracker.statistics(1)["summary"]
    assert summary["first_download"] == "2026-01-01T10:00:00+05:30"
    assert summary["last_download"] == "2026-01-01T05:00:00+00:00"


def test_script_prints_the_same_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python metadata_tracker.py` prints the numbers /statistics would answer."""
    path = tmp_path / "meta.json"
    tracker = MetadataTracker(path)
    tracker.record_file("a", "agent", record(1, seconds=1800))
    assert main(["--metadata-file", str(path), "--target", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = tracker.statistics(1)
    printed.pop("timestamp"), expected.pop("timestamp")
    assert printed == expected
    assert printed["progress"]["progress_percentage"] == 50.0


def test_no_lock_or_temp_files_leak_into_the_metadata_directory(tmp_path: Path) -> None:
    """Only the document, its backup and the lock file live beside it after many writes."""
    tracker = MetadataTracker(tmp_path / "meta.json")
    for n in range(20):
        tracker.record_file(f"c{n}", "agent", record(n))
    assert sorted(os.listdir(tmp_path)) == ["meta.json", "meta.json.bak", "meta.json.lock"]
