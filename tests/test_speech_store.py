"""Speech labels in the store: migration from version 1, totals, flags, stale labels refused."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from support.stores import make_settings, stored

from diarization_audio.errors import MetadataCorrupt
from diarization_audio.store.schema import SCHEMA_VERSION, StoredFile
from diarization_audio.store.speech_labels import LegLabels
from diarization_audio.store.tracker import MetadataTracker
from diarization_audio.url_secrets import source_sha256

DATA = Path(__file__).resolve().parent / "data"
PROVENANCE: dict[str, object] = {"detector": "test", "version": 1}


def labels(file: StoredFile, segments: list[tuple[float, float]], pcm: str = "") -> LegLabels:
    decoded = pcm or hashlib.sha256(file.sha256.encode()).hexdigest()  # as if from the samples
    return LegLabels(file.sha256, decoded, segments, 0.0, True)


def two_legs(tracker: MetadataTracker, cid: str, n: int) -> tuple[StoredFile, StoredFile]:
    agent, customer = stored(n), stored(n + 1)
    tracker.record_file(cid, "agent", agent)
    tracker.record_file(cid, "customer", customer)
    return agent, customer


def test_labels_add_up_to_speech_hours_overlap_and_flags(tracker: MetadataTracker) -> None:
    """Saved labels show in /statistics: speech per speaker, overlap, share, flags by reason."""
    agent, customer = two_legs(tracker, "c1", 1)
    assert tracker.unlabelled() == ["c1"]
    gained = tracker.save_labels(
        "c1",
        {"agent": labels(agent, [(0.0, 10.0), (20.0, 30.5)]),
         "customer": labels(customer, [(9.0, 21.0)])},
        overlap_seconds=2.0, flags={"clipping": "agent clips"}, provenance=PROVENANCE,
    )  # fmt: skip
    assert gained == 32.5
    assert tracker.unlabelled() == []
    speech = tracker.statistics()["speech"]
    assert speech["speech_hours_by_speaker"] == {
        "agent": round(20.5 / 3600, 4), "customer": round(12 / 3600, 4)
    }  # fmt: skip
    assert speech["speech_hours"] == round(32.5 / 3600, 4)
    assert speech["overlap_hours"] == round(2 / 3600, 4)
    assert speech["speech_share"] == round(32.5 / 120, 4)
    assert speech["flags"] == {"clipping": 1} and speech["flagged_conversations"] == 1
    progress = tracker.statistics(target_hours=1, speech=True)["progress"]
    assert progress["measured_in"] == "speech"
    assert progress["current_hours"] == round(32.5 / 3600, 4)
    assert tracker.statistics(target_hours=1)["progress"]["current_hours"] == round(120 / 3600, 4)


def test_a_replaced_file_loses_its_labels_and_stale_labels_are_refused(
    tracker: MetadataTracker,
) -> None:
    """Replacing a leg takes its speech out of the totals; labels of the old file are refused;
    each save answers what it added to the speech totals."""
    agent, customer = two_legs(tracker, "c1", 1)
    old_labels = {
        "agent": labels(agent, [(0.0, 10.0)]),
        "customer": labels(customer, [(10.0, 20.0)]),
    }
    assert tracker.save_labels("c1", old_labels, 0.0, {}, PROVENANCE) == 20.0
    shorter = {**old_labels, "customer": labels(customer, [(10.0, 12.5)])}
    assert tracker.save_labels("c1", shorter, 0.0, {}, PROVENANCE) == -7.5  # labelled again
    assert tracker.save_labels("c1", old_labels, 0.0, {}, PROVENANCE) == 7.5
    tracker.record_file("c1", "agent", stored(7))  # a new version of the agent's file
    speech = tracker.statistics()["speech"]
    assert speech["speech_hours_by_speaker"] == {"agent": 0.0, "customer": round(10 / 3600, 4)}
    assert tracker.unlabelled() == ["c1"]
    assert (
        tracker.save_labels("c1", old_labels, 0.0, {}, PROVENANCE) is None
    )  # computed from the old file
    assert tracker.statistics()["speech"]["labelled_files"] == 1
    [conversation] = tracker.stored_conversations()
    assert not conversation.labelled  # not every leg has current labels
    assert [leg.segments for leg in conversation.legs] == [(), ((10.0, 20.0),)]
    new_agent = {**old_labels, "agent": labels(stored(7), [(0.0, 4.0)])}
    assert tracker.save_labels("c1", new_agent, 0.0, {}, PROVENANCE) == 4.0


def test_the_same_audio_under_another_id_is_flagged_duplicate(tracker: MetadataTracker) -> None:
    """A leg whose decoded samples are already stored under another conversation is flagged."""
    a1, c1 = two_legs(tracker, "first", 1)
    a2, c2 = two_legs(tracker, "second", 3)
    seg = [(0.0, 5.0)]
    assert (
        tracker.save_labels(
            "first",
            {"agent": labels(a1, seg, "x"), "customer": labels(c1, seg, "y")},
            0,
            {},
            PROVENANCE,
        )
        == 10.0
    )
    assert (
        tracker.save_labels(
            "second",
            {"agent": labels(a2, seg, "z"), "customer": labels(c2, seg, "y")},
            0,
            {},
            PROVENANCE,
        )
        == 10.0
    )
    assert tracker.flags() == [
        ("second", "duplicate", "customer is the same audio as first/customer")
    ]
    everything = list(tracker.stored_conversations())
    assert [c.conversation_id for c in everything] == ["first", "second"]
    assert everything[0].flags == {} and all(c.labelled for c in everything)
    assert everything[1].flags == {"duplicate": "customer is the same audio as first/customer"}
    assert everything[0].legs[0].segments == ((0.0, 5.0),)
    assert everything[0].legs[0].filepath == "/store/c1.wav"


def test_labels_of_another_detector_or_version_are_found(tracker: MetadataTracker) -> None:
    """labelled_by_other compares the stored detector and version only, in stored order."""
    for cid, n, made in (("c1", 1, PROVENANCE), ("c2", 3, {**PROVENANCE, "min_gap": 9}),
                         ("c3", 5, {**PROVENANCE, "version": 2}), ("c4", 7, None)):  # fmt: skip
        agent, customer = two_legs(tracker, cid, n)
        if made is not None:
            both = {"agent": labels(agent, [(0, 1)]), "customer": labels(customer, [(1, 2)])}
            tracker.save_labels(cid, both, 0, {}, made)
    assert tracker.labelled_by_other(PROVENANCE) == ["c3"]
    assert tracker.labelled_by_other({"detector": "test", "version": 2}) == ["c1", "c2"]
    assert tracker.labelled_by_other({"detector": "other", "version": 1}) == ["c1", "c2", "c3"]


def test_agent_ids_are_kept_and_not_erased_by_posts_without_one(tracker: MetadataTracker) -> None:
    """An agent id given once stays with the conversation when a later record omits it."""
    tracker.record_file("c1", "agent", stored(1), agent_id="agent-7")
    tracker.record_file("c1", "customer", stored(2))
    tracker.save_labels(
        "c1",
        {"agent": labels(stored(1), [(0, 1)]), "customer": labels(stored(2), [(1, 2)])},
        0,
        {},
        PROVENANCE,
    )
    [conversation] = tracker.stored_conversations()
    assert conversation.agent_id == "agent-7"
    assert conversation.labeller == '{"detector":"test","version":1}'


def test_a_version_1_store_is_migrated_with_every_row_kept(tmp_path: Path) -> None:
    """A store written by schema version 1 opens as version 2: rows, totals and failures intact,
    every file waiting to be labelled."""
    path = tmp_path / "conversations_metadata.sqlite3"
    path.write_bytes(gzip.decompress((DATA / "store_v1.sqlite3.gz").read_bytes()))
    query = "select * from files order by conversation_id, speaker_label"
    with sqlite3.connect(path) as db:
        before = db.execute(query).fetchall()
        failures = db.execute("select * from failures").fetchall()
    tracker = MetadataTracker.from_settings(make_settings(tmp_path))
    stats = tracker.statistics()
    assert stats["summary"]["total_conversations"] == 40
    assert stats["speech"]["labelled_files"] == 0 and stats["speech"]["speech_hours"] == 0.0
    assert len(tracker.unlabelled()) == 40
    tracker.close()
    with sqlite3.connect(path) as db:
        after = db.execute(query).fetchall()
        # Every row kept as it was, plus the hash of its source (version 3).
        assert [row[:-1] for row in after] == before
        assert [row[-1] for row in after] == [source_sha256(row[3]) for row in before]
        assert db.execute("select * from failures").fetchall() == failures
        assert db.execute("select schema_version from store_info").fetchone() == (SCHEMA_VERSION,)


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A store whose schema version is newer than the code's stops it, naming both versions."""
    first = MetadataTracker.from_settings(make_settings(tmp_path))
    first.check()
    first.close()
    with sqlite3.connect(tmp_path / "conversations_metadata.sqlite3") as db:
        db.execute("update store_info set schema_version = ?", (SCHEMA_VERSION + 1,))
    again: Callable[[], int] = MetadataTracker.from_settings(make_settings(tmp_path)).check
    with pytest.raises(MetadataCorrupt, match=f"schema version {SCHEMA_VERSION + 1}"):
        again()


def measured(file: StoredFile, snr: float | None, music: float) -> LegLabels:
    return dataclasses.replace(labels(file, [(0.0, 5.0)]), snr_db=snr, music_share=music)


def test_the_legs_snr_and_music_are_summed_up_in_statistics(tracker: MetadataTracker) -> None:
    """`speech.quality` counts the legs with each measure, takes the median SNR (odd and even
    counts; a leg without speech has none) and counts legs with music; flags count as usual."""
    empty = tracker.statistics()["speech"]["quality"]
    assert empty == {"snr_measured_legs": 0, "snr_median_db": None, "music_measured_legs": 0,
                     "legs_with_music": 0}  # fmt: skip
    a1, c1 = two_legs(tracker, "c1", 1)
    a2, c2 = two_legs(tracker, "c2", 3)
    tracker.save_labels(
        "c1", {"agent": measured(a1, 30.0, 0.0), "customer": measured(c1, 6.0, 0.3)}, 0.0,
        {"low_snr": "customer: 6.0 dB", "music": "customer: 30% music or tones"}, PROVENANCE,
    )  # fmt: skip
    tracker.save_labels(
        "c2", {"agent": measured(a2, 21.5, 0.05), "customer": measured(c2, None, 0.0)}, 0.0,
        {}, PROVENANCE,
    )  # fmt: skip
    speech = tracker.statistics()["speech"]
    assert speech["quality"] == {"snr_measured_legs": 3, "snr_median_db": 21.5,
                                 "music_measured_legs": 4, "legs_with_music": 2}  # fmt: skip
    assert speech["flags"] == {"low_snr": 1, "music": 1}
    tracker.save_labels(
        "c2", {"agent": measured(a2, 21.5, 0.0), "customer": measured(c2, 12.0, 0.0)}, 0.0,
        {}, PROVENANCE,
    )  # fmt: skip
    quality = tracker.statistics()["speech"]["quality"]
    assert quality["snr_measured_legs"] == 4 and quality["snr_median_db"] == 16.8
    assert quality["legs_with_music"] == 1


def test_a_version_4_store_gets_unknown_measures_until_labelled_again(tmp_path: Path) -> None:
    """Migrating from schema 4 adds the SNR and music columns (NULL: unknown) and their index;
    statistics and exports read the old labels as unknown, and labelling again measures them."""
    settings = make_settings(tmp_path)
    tracker = MetadataTracker.from_settings(settings)
    agent, customer = two_legs(tracker, "c1", 1)
    old = {"agent": labels(agent, [(0.0, 5.0)]), "customer": labels(customer, [(5.0, 9.0)])}
    tracker.save_labels("c1", old, 0.0, {}, PROVENANCE)
    tracker.close()
    path = tmp_path / "conversations_metadata.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("drop index speech_by_snr")
        db.execute("alter table speech drop column snr_db")
        db.execute("alter table speech drop column music_share")
        db.execute("update store_info set schema_version = 4")
        before = db.execute("select * from speech order by speaker_label").fetchall()
    tracker = MetadataTracker.from_settings(settings)
    speech = tracker.statistics()["speech"]
    assert speech["labelled_files"] == 2 and speech["speech_hours"] == round(9 / 3600, 4)
    assert speech["quality"]["snr_measured_legs"] == speech["quality"]["music_measured_legs"] == 0
    [conversation] = tracker.stored_conversations()
    assert [(leg.snr_db, leg.music_share) for leg in conversation.legs] == [(None, None)] * 2
    tracker.save_labels(
        "c1", {"agent": measured(agent, 25.0, 0.0), "customer": measured(customer, 18.0, 0.1)},
        0.0, {}, PROVENANCE,
    )  # fmt: skip
    [conversation] = tracker.stored_conversations()
    assert [(leg.snr_db, leg.music_share) for leg in conversation.legs] == [(25.0, 0.0),
                                                                           (18.0, 0.1)]  # fmt: skip
    tracker.close()
    with sqlite3.connect(path) as db:
        after = db.execute("select * from speech order by speaker_label").fetchall()
        indexes = {
            row[0] for row in db.execute("select name from sqlite_master where type='index'")
        }
        version = db.execute("select schema_version from store_info").fetchone()[0]
    assert version == SCHEMA_VERSION == 7 and "speech_by_snr" in indexes
    assert [row[-2:] for row in after] == [(25.0, 0.0), (18.0, 0.1)]
    assert len(before[0]) + 2 == len(after[0])
