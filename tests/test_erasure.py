"""Erasing a conversation: rows, totals, labels, flags, failures and WAVs go; a tombstone stays."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import ROOT
from support.source_server import SourceServer
from support.stores import exported_document, make_settings, stored

from diarization_audio.cli.report import main as report_main
from diarization_audio.cli.store import main as store_main
from diarization_audio.errors import Erased, StorageError
from diarization_audio.logs import LOG_FILENAME
from diarization_audio.objects import Folder
from diarization_audio.progress import Totals
from diarization_audio.service.app import create_app
from diarization_audio.service.process import ServiceProcess
from diarization_audio.settings import Settings
from diarization_audio.store.layout import stored_name, wav_files
from diarization_audio.store.schema import SCHEMA_VERSION, StoredFile, micros
from diarization_audio.store.speech_labels import LegLabels
from diarization_audio.store.tracker import MetadataTracker

PROVENANCE: dict[str, object] = {"detector": "test", "version": 1}
KEY = "s3cret"


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

    done = tracker.erase("gone", "consent withdrawn", Folder(audio))

    assert (done.conversation_id, done.reason, done.files) == ("gone", "consent withdrawn", 2)
    assert done.duration_seconds == pytest.approx(stored(1).duration_seconds
                                                  + stored(2).duration_seconds)  # fmt: skip
    assert tracker.get_conversation("gone") is None
    assert tracker.get_conversation("kept") == kept_before
    assert sorted(wav_files(Folder(audio))) == [
        "kept_agent.wav",
        "kept_customer.wav",
        "solo_agent.wav",
    ]
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
    first = tracker.erase("c1", "consent withdrawn", Folder(audio))
    tracker.export_json()
    assert not tracker.export_due()
    again = tracker.erase("c1", "another reason", Folder(audio))
    assert again == first and tracker.erased("c1") == first
    assert not tracker.export_due()  # the store's revision did not move
    assert tracker.statistics()["erased_conversations"] == 1


def test_an_id_never_stored_gets_a_tombstone(tracker: MetadataTracker, tmp_path: Path) -> None:
    """Erasing an id the store never held removes nothing and leaves a tombstone, so a later
    download of it is refused."""
    assert tracker.erased("never") is None
    done = tracker.erase("never", "", Folder(tmp_path))
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
        tracker.erase("c1", "consent withdrawn", Folder(audio))
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
    tracker.erase("c1", "consent withdrawn", Folder(audio))
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
    tracker.erase("c1", "consent withdrawn", Folder(audio))
    tracker.close()
    with sqlite3.connect(path) as db:
        version = db.execute("select schema_version from store_info").fetchone()[0]
        after = db.execute("select * from files order by conversation_id").fetchall()
        erased = db.execute("select conversation_id, reason, files from tombstones").fetchall()
    assert version == SCHEMA_VERSION == 7
    assert after == before[1:]
    assert erased == [("c1", "consent withdrawn", 1)]


def test_delete_erases_a_conversation_behind_the_api_key(
    tmp_path: Path, source: SourceServer
) -> None:
    """DELETE /conversations/{id} needs the key, removes the WAVs and the record, answers what
    it removed, and answers the same again; GET then answers 404."""
    settings = make_settings(tmp_path, api_key=KEY)
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as client:
        posted = client.post("/download/dual", data={
            "conversation_id": "c1", "audio_url_agent": source.file_url("mp3.mp3"),
            "audio_url_customer": source.file_url("flac.flac"),
        })  # fmt: skip
        assert posted.status_code == 200, posted.text
        wav = source.file_url("wav.wav")
        client.post("/download/single", data={"conversation_id": "c2", "audio_url": wav})
        seconds = client.get("/conversations/c1").json()["total"]["duration_seconds"]
        refused = client.delete("/conversations/c1", headers={"X-API-Key": "wrong"})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert client.get("/conversations/c1").status_code == 200

        answer = client.delete("/conversations/c1", params={"reason": "consent withdrawn"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"conversation_id", "erased_at", "reason", "files",
                             "duration_seconds"}  # fmt: skip
        assert (body["conversation_id"], body["reason"], body["files"]) == (
            "c1", "consent withdrawn", 2,
        )  # fmt: skip
        assert body["duration_seconds"] == pytest.approx(seconds, abs=1e-5)
        assert sorted(wav_files(Folder(Path(settings.audio_storage_dir)))) == ["c2_speaker.wav"]
        assert client.get("/conversations/c1").json()["error"] == "not_found"
        assert client.delete("/conversations/c1", params={"reason": "again"}).json() == body
        # c2 was stored after c1: an export holding c2 but not c1 was written after the erase.
        exported = exported_document(
            settings, lambda d: "c2" in d["conversations"] and "c1" not in d["conversations"]
        )
        assert "c1_" not in json.dumps(exported)
        stats = client.get("/statistics").json()
        assert stats["erased_conversations"] == 1
        assert stats["summary"]["total_conversations"] == 1
        bad = client.delete("/conversations/a b")
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_input"


def log_text(settings: Settings) -> str:
    return (Path(settings.log_dir) / LOG_FILENAME).read_text()


def erased_and_failed(client: TestClient) -> tuple[float, float]:
    """Files /metrics counts as refused because erased, and as failed with any error."""
    found = [s for f in text_string_to_metric_families(client.get("/metrics").text)
             for s in f.samples if s.name == "audio_downloads_total"]  # fmt: skip
    erased = sum(s.value for s in found if s.labels["outcome"] == "erased")
    return erased, sum(s.value for s in found if s.labels["outcome"] == "failed")


def test_a_signed_url_in_the_reason_keeps_its_secrets_out_of_the_log_and_the_store(
    tmp_path: Path, source: SourceServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An erase whose reason names a signed link with a password logs one line, in the log file
    and in the record itself, naming the link without its query string or user:password; the
    tombstone and the answers (the first and a repeat) keep the same scrubbed reason."""
    settings = make_settings(tmp_path, label_speech=False)
    link = f"{source.file_url('mp3.mp3')}?X-Amz-Credential=CRED42&X-Amz-Signature=SIG42"
    link = link.replace("://", "://reader:hunter2@")
    shown_link = source.file_url("mp3.mp3")
    reason = f"consent withdrawn for {link} (ticket 7)"
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        stored = client.post(
            "/download/single", data={"conversation_id": "c1", "audio_url": link}
        )  # fmt: skip
        assert stored.status_code == 200, stored.text
        first = client.delete("/conversations/c1", params={"reason": reason})
        again = client.delete("/conversations/c1", params={"reason": "another"})
    assert first.status_code == 200 and again.json() == first.json()
    assert first.json()["reason"] == f"consent withdrawn for {shown_link} (ticket 7)"
    tracker = MetadataTracker.from_settings(settings)
    erased = tracker.erased("c1")
    tracker.close()
    assert erased is not None and erased.reason == first.json()["reason"]
    [record] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("erased ")]
    [line] = [x for x in log_text(settings).splitlines() if "erased conversation=c1" in x]
    for logged in (record, line):
        assert f"reason='consent withdrawn for {shown_link} (ticket 7)'" in logged
        assert [secret for secret in ("CRED42", "SIG42", "hunter2") if secret in logged] == []


def test_uvicorns_access_line_of_an_erase_leaves_its_reason_out(
    tmp_path: Path, source: SourceServer
) -> None:
    """`python main.py` (which logs every request) logs the DELETE with its status, and the
    reason's parameter without its value: no signed link, password or free text pasted in."""
    link = f"{source.file_url('mp3.mp3')}?X-Amz-Signature=SIG42".replace("://", "://r:hunter2@")
    settings = make_settings(tmp_path, label_speech=False)
    with (
        ServiceProcess(settings, script=ROOT / "main.py") as server,
        httpx.Client(base_url=server.base_url, trust_env=False, timeout=60) as http,
    ):
        stored = http.post("/download/single", data={"conversation_id": "c1", "audio_url": link})
        assert stored.status_code == 200, stored.text
        erased = http.delete("/conversations/c1", params={"reason": f"withdrawn {link} #7"})
        assert erased.status_code == 200, erased.text
        listed = http.get("/storage/info", params={"limit": 5})
        assert listed.status_code == 200
    output = server.output()
    [line] = [x for x in output.splitlines() if "DELETE /conversations/c1" in x]
    assert '?reason=(not logged) HTTP/1.1" 200' in line
    assert "GET /storage/info?limit=5 HTTP/1.1" in output  # other queries stay as they were
    assert "withdrawn" not in line  # the erase's own line carries the reason, scrubbed
    assert [secret for secret in ("SIG42", "hunter2") if secret in output] == []


def test_an_erased_id_is_refused_with_410_unless_allowed(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """Every download route refuses an erased id with 410 `erased` (no failure row naming it,
    nothing fetched, each file counted in /metrics as erased, not failed); allow_erased=true
    stores it again."""
    url = source.file_url("mp3.mp3")
    assert client.post("/download/single", data={"conversation_id": "c1",
                                                  "audio_url": url}).status_code == 200  # fmt: skip
    assert client.delete("/conversations/c1").status_code == 200
    source.reset()
    counted = erased_and_failed(client)
    attempts = [
        ("/download/single", {"audio_url": url}),
        ("/download/dual", {"audio_url_agent": url, "audio_url_customer": url}),
        ("/download/stereo", {"audio_url": url}),
    ]
    for path, fields in attempts:
        refused = client.post(path, data={"conversation_id": "c1", **fields})
        assert refused.status_code == 410, (path, refused.text)
        assert refused.json()["error"] == "erased"
        assert "c1" in refused.json()["detail"]
    assert source.hits["/files/mp3.mp3"] == 0  # refused before anything was fetched
    now = erased_and_failed(client)
    assert (now[0] - counted[0], now[1] - counted[1]) == (1 + 2 + 2, 0)  # single, dual, stereo
    stats = client.get("/statistics").json()
    assert stats["failures"]["total"] == 0 and stats["summary"]["total_conversations"] == 0
    assert wav_files(Folder(Path(settings.audio_storage_dir))) == {}
    allowed = client.post(
        "/download/single", data={"conversation_id": "c1", "audio_url": url, "allow_erased": "true"}
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["status"] == "success"
    assert sorted(wav_files(Folder(Path(settings.audio_storage_dir)))) == ["c1_speaker.wav"]


def audio_totals(settings: Settings) -> tuple[Totals, dict[str, tuple[int, int]]]:
    """The store's running totals, and (files, audio micros) per speaker label."""
    tracker = MetadataTracker.from_settings(settings)
    try:
        report = tracker.report("2000-01-01", 0)
    finally:
        tracker.close()
    speakers = {s.speaker_label: (s.files, s.audio_micros) for s in report.speakers}
    return report.totals, speakers


def test_an_erased_two_leg_conversation_goes_whole_and_is_refused_whole(
    tmp_path: Path, source: SourceServer
) -> None:
    """Erasing a conversation stored by /download/dual removes both legs' WAVs and records and
    takes both off the totals (overall and per speaker); posting the same dual download again
    is refused with 410 erased, unless allow_erased=true, which stores both legs again."""
    settings = make_settings(tmp_path, label_speech=False)
    dual = {"conversation_id": "c1", "audio_url_agent": source.file_url("mp3.mp3"),
            "audio_url_customer": source.file_url("flac.flac")}  # fmt: skip
    single = {"conversation_id": "c2", "audio_url": source.file_url("wav.wav"),
              "speaker_label": "agent"}  # fmt: skip
    with TestClient(create_app(settings)) as client:
        assert client.post("/download/dual", data=dual).status_code == 200
        assert client.post("/download/single", data=single).status_code == 200
        legs = client.get("/conversations/c1").json()["speakers"]
        totals, speakers = audio_totals(settings)

        assert client.delete("/conversations/c1").json()["files"] == 2
        after, speakers_after = audio_totals(settings)
        assert sorted(wav_files(Folder(Path(settings.audio_storage_dir)))) == ["c2_agent.wav"]
        assert client.get("/conversations/c1").status_code == 404
        gone = {label: micros(leg["duration_seconds"]) for label, leg in legs.items()}
        assert (totals.conversations - after.conversations, totals.micros - after.micros) == (
            1, gone["agent"] + gone["customer"],
        )  # fmt: skip
        assert totals.size_bytes - after.size_bytes == sum(
            leg["file_size_bytes"] for leg in legs.values()
        )
        assert speakers_after == {
            "agent": (speakers["agent"][0] - 1, speakers["agent"][1] - gone["agent"])
        }  # the customer's only file went, and with it the label's totals
        assert speakers["customer"] == (1, gone["customer"])

        refused = client.post("/download/dual", data=dual)
        assert (refused.status_code, refused.json()["error"]) == (410, "erased")
        assert audio_totals(settings) == (after, speakers_after)
        allowed = client.post("/download/dual", data={**dual, "allow_erased": "true"})
        assert allowed.status_code == 200, allowed.text
        assert [(d["speaker"], d["status"]) for d in allowed.json()["downloads"]] == [
            ("agent", "success"), ("customer", "success"),
        ]  # fmt: skip
        assert sorted(wav_files(Folder(Path(settings.audio_storage_dir)))) == [
            "c1_agent.wav", "c1_customer.wav", "c2_agent.wav",
        ]  # fmt: skip
        assert audio_totals(settings)[1] == speakers
        assert client.get("/statistics").json()["erased_conversations"] == 0


def test_recording_a_file_of_an_erased_id_is_refused_unless_allowed(
    tracker: MetadataTracker, tmp_path: Path
) -> None:
    """Recording a file of an erased conversation raises Erased without publishing it; allowed
    explicitly, it is recorded and the tombstone is gone (the erasure count drops)."""
    tracker.erase("c1", "consent withdrawn", Folder(tmp_path))
    published: list[str] = []
    with pytest.raises(Erased, match="'c1' was erased"):
        tracker.record_file("c1", "agent", stored(1), lambda: published.append("c1"))
    assert published == [] and tracker.get_conversation("c1") is None
    assert tracker.statistics()["erased_conversations"] == 1
    tracker.record_file("c1", "agent", stored(1), lambda: published.append("c1"),
                        allow_erased=True)  # fmt: skip
    assert published == ["c1"] and tracker.erased("c1") is None
    recorded = tracker.get_file("c1", "agent")
    assert recorded is not None and recorded.sha256 == stored(1).sha256
    assert tracker.statistics()["erased_conversations"] == 0
    tracker.record_file("c1", "customer", stored(2))  # stored like any other now


@pytest.mark.parametrize("stored_before", [False, True], ids=["new", "replacing"])
def test_an_erase_during_a_download_wins(
    tmp_path: Path, backend: str | None, source: SourceServer, stored_before: bool
) -> None:
    """A DELETE that lands while a download of the same id is fetching from a slow source ends
    with the conversation erased, on SQLite and on PostgreSQL: the download answers 410 erased,
    and no WAV, temporary file, record or failure row is left; /metrics counts the file as
    erased, not failed."""
    settings = make_settings(tmp_path, database_url=backend)
    directory = Path(settings.audio_storage_dir)
    with TestClient(create_app(settings)) as client:
        if stored_before:
            first = client.post(
                "/download/single",
                data={"conversation_id": "c1", "audio_url": source.file_url("wav.wav")},
            )
            assert first.status_code == 200, first.text  # fmt: skip
        slow = "/slow/2/mp3.mp3"
        answers: list[tuple[int, dict[str, object]]] = []
        fields = {"conversation_id": "c1", "audio_url": source.url(slow), "overwrite": "true"}
        counted = erased_and_failed(client)

        def download() -> None:
            answer = client.post("/download/single", data=fields)
            answers.append((answer.status_code, answer.json()))

        downloading = threading.Thread(target=download)
        downloading.start()
        try:
            assert source.wait_for_hits(slow, timeout=30)
            erased = client.delete("/conversations/c1", params={"reason": "consent withdrawn"})
        finally:
            downloading.join(timeout=60)
        assert erased.status_code == 200, erased.text
        assert erased.json()["files"] == (1 if stored_before else 0)
        assert [(status, body["error"]) for status, body in answers] == [(410, "erased")]
        assert os.listdir(directory) == []  # no WAV, no temporary download or conversion
        assert client.get("/conversations/c1").status_code == 404
        stats = client.get("/statistics").json()
        assert stats["erased_conversations"] == 1 and stats["failures"]["total"] == 0
        assert stats["summary"]["total_conversations"] == 0
        now = erased_and_failed(client)
        assert (now[0] - counted[0], now[1] - counted[1]) == (1, 0)


def test_an_allowed_download_lifts_the_tombstone(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """Once allow_erased=true has stored an erased conversation it is like any stored one: a
    later POST without the override answers `exists`, and the erasure count drops to 0."""
    url = source.file_url("mp3.mp3")
    fields = {"conversation_id": "c1", "audio_url": url}
    assert client.post("/download/single", data=fields).status_code == 200
    assert client.delete("/conversations/c1").status_code == 200
    assert client.get("/statistics").json()["erased_conversations"] == 1
    allowed = client.post("/download/single", data={**fields, "allow_erased": "true"})
    assert allowed.status_code == 200 and allowed.json()["status"] == "success"
    assert client.get("/statistics").json()["erased_conversations"] == 0
    again = client.post("/download/single", data=fields)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "exists"
    other = client.post("/download/single", data={**fields, "speaker_label": "customer"})
    assert other.status_code == 200 and other.json()["status"] == "success"
    assert sorted(wav_files(Folder(Path(settings.audio_storage_dir)))) == [
        "c1_customer.wav", "c1_speaker.wav",
    ]  # fmt: skip


def stored_three(settings: Settings) -> MetadataTracker:
    """A store of `settings` holding c1, c2 and c3, each with an agent WAV on disk."""
    tracker = MetadataTracker.from_settings(settings)
    for n in (1, 2, 3):
        keep(tracker, Path(settings.audio_storage_dir), f"c{n}", "agent", n)
    return tracker


def test_script_erases_one_id_and_answers_the_same_again(
    script_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`metadata_tracker.py --erase ID --reason TEXT` erases it (file and record), prints what
    it removed and logs it to the log file; run again it prints the same line and changes
    nothing."""
    tracker = stored_three(script_settings)
    assert store_main(["--erase", "c2", "--reason", "consent withdrawn"]) == 0
    first = capsys.readouterr().out
    erased = tracker.erased("c2")
    assert erased is not None and erased.reason == "consent withdrawn"
    assert first == (f"erased c2: 1 files, {stored(2).duration_seconds:.2f} s "
                     f"(at {erased.erased_at})\nerased 1 conversations (1 files)\n")  # fmt: skip
    assert sorted(wav_files(Folder(Path(script_settings.audio_storage_dir)))) == [
        "c1_agent.wav", "c3_agent.wav",
    ]  # fmt: skip
    assert tracker.get_conversation("c2") is None
    logged = (Path(script_settings.log_dir) / LOG_FILENAME).read_text()
    assert "erased conversation=c2 files=1" in logged and "consent withdrawn" in logged
    assert store_main(["--erase", "c2"]) == 0
    assert capsys.readouterr().out == first
    tracker.close()


@pytest.mark.parametrize(
    "text",
    ["conversation_id,agent_audio_url\nc1,http://127.0.0.1/1.mp3\n\nc3,http://127.0.0.1/3.mp3\n",
     "c1\nc3\nc1\n"],
    ids=["conversations-csv", "bare-ids"],
)  # fmt: skip
def test_script_erases_every_id_of_a_csv(
    script_settings: Settings, tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--erase-file takes a conversations CSV's conversation_id column, or bare ids one a line,
    each once; the ids it names are erased and the others kept."""
    tracker = stored_three(script_settings)
    ids = tmp_path / "ids.csv"
    ids.write_text(text)
    assert store_main(["--erase-file", str(ids)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "erased 2 conversations (2 files)"
    assert sorted(wav_files(Folder(Path(script_settings.audio_storage_dir)))) == ["c2_agent.wav"]
    assert [c.conversation_id for c in tracker.stored_conversations()] == ["c2"]
    assert tracker.statistics()["erased_conversations"] == 2
    tracker.close()


def test_script_refuses_a_malformed_id_before_erasing_any(
    script_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed id in the file stops the script with its line number; nothing is erased."""
    tracker = stored_three(script_settings)
    ids = tmp_path / "ids.csv"
    ids.write_text("c1\nc2\nnot an id\n")
    assert store_main(["--erase-file", str(ids)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "line 3" in err and err.count("\n") == 1
    assert tracker.statistics()["erased_conversations"] == 0
    assert len(wav_files(Folder(Path(script_settings.audio_storage_dir)))) == 3
    with pytest.raises(SystemExit) as usage:
        store_main(["--reason", "why"])
    assert usage.value.code == 2
    tracker.close()


def test_the_storage_report_and_the_dashboard_count_erasures(
    script_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """analyze_storage.py's report (JSON and text) and the dashboard show the erased
    conversations, and the consistency check finds no file or record the erase left behind."""
    tracker = stored_three(script_settings)
    for cid in ("c1", "c3"):
        tracker.erase(cid, "consent withdrawn", Folder(Path(script_settings.audio_storage_dir)))
    tracker.close()
    assert report_main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["erased_conversations"] == 2
    assert report["summary"]["total_conversations"] == 1
    # (the fixture's WAVs are stubs, so sizes differ; no file or record of c1, c3 is left)
    assert (report["consistency"]["missing_files"], report["consistency"]["unknown_files"]) == (
        [], [],
    )  # fmt: skip
    assert report_main([]) == 0
    assert "  erased     2 conversations (refused from now on)\n" in capsys.readouterr().out
    with TestClient(create_app(script_settings)) as client:
        data = client.get("/dashboard/data").json()
        assert data["erased_conversations"] == 2
        page = client.get("/dashboard").text
    assert '<b id="erased" data-value="2">2</b><span>erased conversations</span>' in page
