"""Erasing a conversation: rows, totals, labels, flags, failures and WAVs go; a tombstone stays."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from support.stores import make_settings, stored

from diarization_audio.errors import StorageError
from diarization_audio.store.layout import stored_name, wav_files
from diarization_audio.store.schema import SCHEMA_VERSION, StoredFile
from diarization_audio.store.speech_labels import LegLabels
from diarization_audio.store.tracker import MetadataTracker

PROVENANCE: dict[str, object] = {"detector": "test", "version": 1}


def keep(tracker: MetadataTracker, directory: Path, cid: str, label: str, n: int) -> StoredFile:
    """Record file n under `cid`/`label`, with its WAV in `directory` under its stored name."""
    directory.mkdir(exist_ok=True)
    path = directory / stored_name(cid, label)
    path.write_bytes(b"RIFF" + bytes(n))
    file = stored(n).model_copy(update={"filepath": str(path)})
    tracker.record_file(cid, label, file)
    return file


def labelled(tracker: MetadataTracker, directory: Path, cid: str, n: int) -> None:
    """A two-leg conversation with speech labels, overlap and a flag."""
    agent = keep(tracker, directory, cid, "agent", n)
    customer = keep(tracker, directory, cid, "customer", n + 1)
    legs = {
        "agent": LegLabels(agent.sha256, f"{n:064x}", [(0.0, 10.0)], 0.0, True),
        "customer": LegLabels(customer.sha256, f"{n + 1:064x}", [(8.0, 20.0)], 0.0, True),
    }
    gained = tracker.save_labels(cid, legs, 2.0, {"clipping": "agent clips"}, PROVENANCE)
    assert gained == 22.0


def test_erase_removes_everything_and_keeps_the_totals_exact(
    tracker: MetadataTracker, tmp_path: Path
) -> None:
    """An erase removes the conversation's rows, labels, flags, failures and WAVs; the totals
    equal a recount of what is left, and the other conversations are untouched."""
    audio = tmp_path / "audio"
    labelled(tracker, audio, "gone", 1)
    labelled(tracker, audio, "kept", 3)
    keep(tracker, audio, "solo", "agent", 5)
    tracker.record_failure("gone", "agent", "http://127.0.0.1/a.mp3", "source_error", "404")
    tracker.record_failure("kept", "agent", "http://127.0.0.1/b.mp3", "source_error", "404")
    kept_before = tracker.get_conversation("kept")

    done = tracker.erase("gone", "consent withdrawn", audio)

    assert (done.conversation_id, done.reason, done.files) == ("gone", "consent withdrawn", 2)
    assert done.duration_seconds == pytest.approx(stored(1).duration_seconds
                                                  + stored(2).duration_seconds)  # fmt: skip
    assert tracker.get_conversation("gone") is None
    assert tracker.get_conversation("kept") == kept_before
    assert sorted(wav_files(audio)) == ["kept_agent.wav", "kept_customer.wav", "solo_agent.wav"]
    assert [row[0] for row in tracker.flags()] == ["kept"]
    assert [c.conversation_id for c in tracker.stored_conversations()] == ["kept", "solo"]
    failures = tracker.failure_summary(recent=10)
    assert failures["total"] == 1 and "gone" not in json.dumps(failures)
    kept = tracker.statistics()
    tracker.record_many([])  # counts every total again from the rows
    recounted = tracker.statistics()
    for answer in (kept, recounted):
        answer.pop("timestamp")
        answer["summary"].pop("last_download", None)
    assert kept == recounted
    assert kept["summary"]["total_conversations"] == 2
    assert kept["speech"]["speech_hours"] == round(22 / 3600, 4)
    assert kept["speech"]["overlap_hours"] == round(2 / 3600, 4)
    assert kept["erased_conversations"] == 1


def test_a_second_erase_answers_the_same_and_changes_nothing(
    tracker: MetadataTracker, tmp_path: Path
) -> None:
    """Erasing an id again answers the first erase (its time and reason) and writes nothing."""
    audio = tmp_path / "audio"
    keep(tracker, audio, "c1", "agent", 1)
    first = tracker.erase("c1", "consent withdrawn", audio)
    tracker.export_json()
    assert not tracker.export_due()
    again = tracker.erase("c1", "another reason", audio)
    assert again == first and tracker.erased("c1") == first
    assert not tracker.export_due()  # the store's revision did not move
    assert tracker.statistics()["erased_conversations"] == 1


def test_an_id_never_stored_gets_a_tombstone(tracker: MetadataTracker, tmp_path: Path) -> None:
    """Erasing an id the store never held removes nothing and leaves a tombstone, so a later
    download of it is refused."""
    assert tracker.erased("never") is None
    done = tracker.erase("never", "", tmp_path)
    assert (done.files, done.duration_seconds, done.reason) == (0, 0.0, "")
    assert tracker.erased("never") == done


def test_a_file_that_cannot_be_deleted_leaves_nothing_erased(
    tracker: MetadataTracker, tmp_path: Path
) -> None:
    """When a stored file cannot be deleted the erase fails with StorageError and the store
    is as it was: no tombstone, every record kept."""
    audio = tmp_path / "audio"
    keep(tracker, audio, "c1", "agent", 1)
    (audio / stored_name("c1", "customer")).mkdir()  # a directory cannot be unlinked
    tracker.record_file("c1", "customer", stored(2))
    before = tracker.get_conversation("c1")
    with pytest.raises(StorageError, match=r"cannot delete the stored file c1_customer\.wav"):
        tracker.erase("c1", "consent withdrawn", audio)
    assert tracker.erased("c1") is None
    assert tracker.get_conversation("c1") == before


def test_the_json_export_drops_an_erased_conversation(
    tracker: MetadataTracker, tmp_path: Path
) -> None:
    """The JSON export written after an erase no longer names the conversation."""
    audio = tmp_path / "audio"
    keep(tracker, audio, "c1", "agent", 1)
    keep(tracker, audio, "c2", "agent", 2)
    tracker.export_json()
    tracker.erase("c1", "consent withdrawn", audio)
    assert tracker.export_due()
    assert tracker.export_json() is not None
    document = json.loads(tracker.export_path.read_text())
    assert list(document["conversations"]) == ["c2"] and document["conversation_count"] == 1
    assert "c1" not in tracker.export_path.read_text().replace("c1.wav", "")


def test_a_version_5_store_gets_an_empty_tombstone_table(tmp_path: Path) -> None:
    """Migrating from schema 5 adds the tombstones table and keeps every row; erasing works."""
    settings = make_settings(tmp_path)
    tracker = MetadataTracker.from_settings(settings)
    audio = tmp_path / "audio"
    keep(tracker, audio, "c1", "agent", 1)
    keep(tracker, audio, "c2", "agent", 2)
    tracker.close()
    path = tmp_path / "conversations_metadata.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("drop table tombstones")
        db.execute("update store_info set schema_version = 5")
        before = db.execute("select * from files order by conversation_id").fetchall()
    tracker = MetadataTracker.from_settings(settings)
    assert tracker.statistics()["erased_conversations"] == 0
    tracker.erase("c1", "consent withdrawn", audio)
    tracker.close()
    with sqlite3.connect(path) as db:
        version = db.execute("select schema_version from store_info").fetchone()[0]
        after = db.execute("select * from files order by conversation_id").fetchall()
        erased = db.execute("select conversation_id, reason, files from tombstones").fetchall()
    assert version == SCHEMA_VERSION == 6
    assert after == before[1:]
    assert erased == [("c1", "consent withdrawn", 1)]
