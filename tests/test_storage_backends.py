"""The same storage behaviour with the WAVs in a folder and in a bucket of a real S3 server:
downloads, re-downloads, failures, erasure, the storage listing, the consistency check,
labelling, the JSON export and the dataset export."""

from __future__ import annotations

import hashlib
import json
import os
import time
import wave
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.audio_factory import make_audio
from support.cli_helpers import use_settings
from support.s3_server import S3Server
from support.source_server import SourceServer
from support.stores import exported_document, make_settings

from diarization_audio.cli.export import main as export_main
from diarization_audio.cli.report import main as report_main
from diarization_audio.labels.labeller import label_unlabelled, thresholds_of
from diarization_audio.objects import PART_BYTES, Bucket, Place, audio_place, split_bucket_url
from diarization_audio.service.app import create_app
from diarization_audio.settings import Settings
from diarization_audio.store.layout import wav_files
from diarization_audio.store.tracker import MetadataTracker


def stored(settings: Settings) -> dict[str, int]:
    """Name -> size of the finished WAVs where `settings` keeps them."""
    return wav_files(audio_place(settings))


def open_uploads(settings: Settings, s3: S3Server | None) -> list[str]:
    """Multipart uploads left neither completed nor aborted (a folder has none)."""
    if settings.audio_storage_url is None or s3 is None:
        return []
    return s3.open_uploads(split_bucket_url(settings.audio_storage_url)[0])


def bucket_server(request: pytest.FixtureRequest, settings: Settings) -> S3Server | None:
    if settings.audio_storage_url is None:
        return None
    server: S3Server = request.getfixturevalue("s3_server")
    return server


def post(client: TestClient, route: str, **fields: str) -> Any:
    answer = client.post(route, data=fields)
    return answer.status_code, answer.json()


def test_downloads_land_under_the_name_rule_with_their_records(
    storage: Settings, source: SourceServer, request: pytest.FixtureRequest
) -> None:
    """Single, dual and stereo downloads store {id}_{label}.wav where the settings say, each
    record's filepath and size describe the stored object, and nothing is left half-uploaded."""
    with TestClient(create_app(storage)) as client:
        single = post(client, "/download/single", conversation_id="s1",
                      audio_url=source.file_url("mp3.mp3"))  # fmt: skip
        dual = post(client, "/download/dual", conversation_id="d1",
                    audio_url_agent=source.file_url("wav.wav"),
                    audio_url_customer=source.file_url("flac.flac"))  # fmt: skip
        stereo = post(client, "/download/stereo", conversation_id="st1",
                      audio_url=source.file_url("mp3.mp3"))  # fmt: skip
        again = post(client, "/download/single", conversation_id="s1",
                     audio_url=source.file_url("mp3.mp3"))  # fmt: skip
        board = client.get("/dashboard/data").json()
    assert single[0] == dual[0] == 200, (single, dual)
    assert board["summary"]["total_conversations"] == 3
    assert board["labelled_files"] + board["unlabelled_files"] == 5
    assert stereo[0] == 200, stereo
    assert again == (200, again[1]) and again[1]["status"] == "exists"
    found = stored(storage)
    assert sorted(found) == [
        "d1_agent.wav", "d1_customer.wav", "s1_speaker.wav", "st1_agent.wav", "st1_customer.wav",
    ]  # fmt: skip
    place = audio_place(storage)
    tracker = MetadataTracker.from_settings(storage)
    try:
        for name, size in found.items():
            cid, label = name.removesuffix(".wav").rsplit("_", 1)
            record = tracker.get_file(cid, label)
            assert record is not None
            assert record.filepath == place.location(name)
            assert record.file_size_bytes == size
    finally:
        tracker.close()
    if storage.audio_storage_url:
        assert place.location("s1_speaker.wav") == f"{storage.audio_storage_url}/s1_speaker.wav"
        # Only finished WAVs are in the bucket: work in progress stays on the local disk.
        assert sorted(found) == sorted(
            key.removeprefix("audio/") for key in bucket_keys(storage, request)
        )
    assert open_uploads(storage, bucket_server(request, storage)) == []
    document = exported_document(storage, lambda d: len(d.get("conversations", {})) == 3)
    paths = [
        speaker["filepath"]
        for entry in document["conversations"].values()
        for speaker in entry["speakers"].values()
    ]
    assert sorted(paths) == sorted(place.location(name) for name in found)


def bucket_keys(settings: Settings, request: pytest.FixtureRequest) -> dict[str, int]:
    server = bucket_server(request, settings)
    assert server is not None and settings.audio_storage_url is not None
    return server.keys(split_bucket_url(settings.audio_storage_url)[0])


@pytest.mark.parametrize("path", ["/status/404", "/html", "/truncated/mp3.mp3"])
def test_a_failed_download_leaves_nothing_stored(
    storage: Settings, source: SourceServer, request: pytest.FixtureRequest, path: str
) -> None:
    """A source that fails (404, an HTML page, a cut-off file) leaves no WAV and no open upload,
    on either backend."""
    with TestClient(create_app(storage)) as client:
        status, body = post(client, "/download/single", conversation_id="bad",
                            audio_url=source.url(path))  # fmt: skip
    assert status >= 400, body
    assert stored(storage) == {}
    assert open_uploads(storage, bucket_server(request, storage)) == []
    assert [p.name for p in Path(storage.audio_storage_dir).iterdir()] == []


def test_erase_removes_the_stored_files(
    storage: Settings, source: SourceServer, request: pytest.FixtureRequest
) -> None:
    """DELETE /conversations/{id} removes both legs from the folder or the bucket and leaves
    the other conversation's file."""
    with TestClient(create_app(storage)) as client:
        assert post(client, "/download/dual", conversation_id="gone",
                    audio_url_agent=source.file_url("wav.wav"),
                    audio_url_customer=source.file_url("ogg.ogg"))[0] == 200  # fmt: skip
        assert post(client, "/download/single", conversation_id="kept",
                    audio_url=source.file_url("wav.wav"))[0] == 200  # fmt: skip
        erased = client.delete("/conversations/gone", params={"reason": "consent withdrawn"})
        refused = post(client, "/download/single", conversation_id="gone",
                       audio_url=source.file_url("wav.wav"))  # fmt: skip
    assert erased.status_code == 200 and erased.json()["files"] == 2
    assert refused[0] == 410 and refused[1]["error"] == "erased"
    assert sorted(stored(storage)) == ["kept_speaker.wav"]


def test_storage_info_pages_through_every_file(storage: Settings, source: SourceServer) -> None:
    """/storage/info counts every stored WAV and names one page of them; next_after leads
    through the rest in order, and the last page says there is no more."""
    with TestClient(create_app(storage)) as client:
        for n in range(5):
            assert post(client, "/download/single", conversation_id=f"p{n}",
                        audio_url=source.file_url("wav.wav"))[0] == 200  # fmt: skip
        pages, after = [], ""
        while True:
            page = client.get("/storage/info", params={"limit": 2, "after": after}).json()
            pages.append(page["files"])
            assert page["total_files"] == 5
            if page["next_after"] is None:
                break
            after = page["next_after"]
        whole = client.get("/storage/info").json()
    assert pages == [["p0_speaker.wav", "p1_speaker.wav"], ["p2_speaker.wav", "p3_speaker.wav"],
                     ["p4_speaker.wav"]]  # fmt: skip
    assert whole["files"] == [f"p{n}_speaker.wav" for n in range(5)]
    assert whole["next_after"] is None
    assert whole["storage_directory"] == audio_place(storage).url
    assert whole["total_size_mb"] == round(sum(stored(storage).values()) / 2**20, 2)


def _replace(place: Place, name: str, data: bytes, tmp_path: Path) -> None:
    local = tmp_path / f"replacement-{name}"
    local.write_bytes(data)
    place.put_file(local, name)


def test_the_consistency_check_reads_the_bucket(
    storage: Settings,
    source: SourceServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """analyze_storage.py finds a record with no file, a file of another size and a file no
    record knows, in the folder or the bucket; --strict exits 4."""
    with TestClient(create_app(storage)) as client:
        for cid in ("c1", "c2", "c3"):
            assert post(client, "/download/single", conversation_id=cid,
                        audio_url=source.file_url("wav.wav"))[0] == 200  # fmt: skip
    place = audio_place(storage)
    size = stored(storage)["c2_speaker.wav"]
    place.delete("c1_speaker.wav")
    with place.open("c2_speaker.wav") as handle:
        grown = handle.read() + b"\0" * 10
    _replace(place, "c2_speaker.wav", grown, tmp_path)
    _replace(place, "stray_agent.wav", b"RIFF", tmp_path)
    use_settings(monkeypatch, storage)
    capsys.readouterr()
    assert report_main(["--json"]) == 0
    check = json.loads(capsys.readouterr().out)["consistency"]
    assert check == {
        "ok": False,
        "missing_files": ["c1_speaker.wav"],
        "size_mismatches": [
            {"file": "c2_speaker.wav", "recorded_bytes": size, "actual_bytes": size + 10}
        ],
        "unknown_files": ["stray_agent.wav"],
    }
    assert report_main(["--strict"]) == 4


def test_labelling_and_the_dataset_export_read_the_stored_legs(
    storage: Settings,
    source: SourceServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Labelling reads each leg where it is stored, and the dataset export mixes the two legs
    from there: the mix has the legs' length, and no local copy of a leg is left behind."""
    with TestClient(create_app(storage)) as client:
        assert post(client, "/download/dual", conversation_id="call",
                    audio_url_agent=source.file_url("wav.wav"),
                    audio_url_customer=source.file_url("flac.flac"))[0] == 200  # fmt: skip
    tracker = MetadataTracker.from_settings(storage)
    try:
        label_unlabelled(tracker, thresholds_of(storage), settings=storage)  # any left over
        assert tracker.unlabelled() == []
        conversation = tracker.get_conversation("call")
        assert conversation is not None
    finally:
        tracker.close()
    use_settings(monkeypatch, storage)
    out = tmp_path / "dataset"
    assert export_main([str(out), "--include-flagged", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "exported 1 conversations" in printed, printed
    with wave.open(str(out / "audio" / "call.wav"), "rb") as mix:
        frames = mix.getnframes()
        assert mix.getframerate() == 16000
    leg = audio_place(storage)
    with leg.open("call_agent.wav") as handle, wave.open(handle, "rb") as agent:
        assert frames == agent.getnframes()
    leftovers = [p.name for p in Path(storage.audio_storage_dir).glob(".*")]
    assert leftovers == []
    if isinstance(leg, Bucket):
        assert not Path(storage.audio_storage_dir, "call_agent.wav").exists()


def test_a_long_file_is_stored_whole_even_when_its_download_starts_over(
    storage: Settings, source: SourceServer, corpus_dir: Path, request: pytest.FixtureRequest
) -> None:
    """A 10-minute call (a WAV of several upload parts, sent while ffmpeg writes it) is stored
    byte for byte as converted, also when the source drops the connection and sends the file
    again from its start, so that ffmpeg starts over."""
    name = "ten_minutes.ogg"
    if not (corpus_dir / name).exists():
        make_audio(corpus_dir / name, "ogg", seconds=600, channels=1)
    cut = f"/resumable/ignores/{name}?drop=0.6"
    with TestClient(create_app(storage)) as client:
        whole = post(client, "/download/single", conversation_id="long",
                     audio_url=source.file_url(name))  # fmt: skip
        again = post(client, "/download/single", conversation_id="restarted",
                     audio_url=source.url(cut))  # fmt: skip
    assert whole[0] == again[0] == 200, (whole, again)
    assert source.hits[cut.split("?")[0]] == 2  # cut off once, then sent whole from the start
    place = audio_place(storage)
    tracker = MetadataTracker.from_settings(storage)
    try:
        for cid in ("long", "restarted"):
            record = tracker.get_file(cid, "speaker")
            assert record is not None
            assert record.file_size_bytes > 2 * PART_BYTES  # several parts
            with place.open(f"{cid}_speaker.wav") as handle:
                data = handle.read()
            assert len(data) == record.file_size_bytes
            assert hashlib.sha256(data).hexdigest() == record.sha256
    finally:
        tracker.close()
    assert open_uploads(storage, bucket_server(request, storage)) == []


def test_a_finished_file_of_several_parts_is_put_whole(
    storage: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A finished file (a shard) of several parts, all sent at once by the upload's threads, is
    stored byte for byte, every time, and leaves no upload open: the threads share one upload."""
    data = os.urandom(3 * PART_BYTES + 12345)
    place = audio_place(storage)
    for n in range(4):
        local = tmp_path / f"finished{n}.bin"  # a folder moves it into place
        local.write_bytes(data)
        place.put_file(local, f"finished{n}.tar")
        with place.open(f"finished{n}.tar") as handle:
            assert handle.read() == data
    assert open_uploads(storage, bucket_server(request, storage)) == []


def test_a_writer_that_starts_over_with_other_bytes_is_uploaded_as_it_ends(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """Between `restart` and the new writer truncating the file, the following upload may read
    and send the old bytes once more; if the new writer's bytes differ, those parts are sent
    again at the end, and the object is what the file holds when the upload finishes."""
    bucket = s3_server.new_bucket()
    settings = make_settings(
        tmp_path, audio_storage_url=f"s3://{bucket}/audio", **s3_server.settings()
    )
    place = audio_place(settings)
    local = tmp_path / "call.wav"
    old, new = os.urandom(3 * PART_BYTES + 99), os.urandom(3 * PART_BYTES + 99)
    following = place.follow(local, "call.wav")
    local.write_bytes(old)
    time.sleep(1.0)  # the old file's whole parts go up
    following.restart()
    time.sleep(1.0)  # the old bytes again, in the new writer's turn
    local.write_bytes(new)
    following.finish().publish()
    with place.open("call.wav") as handle:
        assert handle.read() == new
    assert s3_server.open_uploads(bucket) == []


def test_a_missing_bucket_is_a_storage_error_naming_the_s3_code(
    tmp_path: Path, source: SourceServer, s3_server: S3Server
) -> None:
    """A bucket that does not exist answers 500 storage_error with S3's own error code in the
    detail, and leaves no file in the work folder."""
    settings = make_settings(
        tmp_path, audio_storage_url="s3://no-such-bucket/calls", **s3_server.settings()
    )
    with TestClient(create_app(settings)) as client:
        status, body = post(client, "/download/single", conversation_id="c1",
                            audio_url=source.file_url("wav.wav"))  # fmt: skip
    assert status == 500, body
    assert body["error"] == "storage_error" and "NoSuchBucket" in body["detail"], body
    assert [p.name for p in Path(settings.audio_storage_dir).iterdir()] == []
