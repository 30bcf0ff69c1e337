"""The HTTP API through TestClient: every endpoint, every input format, the seed's field names."""

from __future__ import annotations

import array
import math
import wave
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.audio_factory import FFMPEG_BUILDS, FORMATS, ffmpeg_build
from support.source_server import SourceServer
from support.stores import exported_document, labelled_statistics, make_settings

from diarization_audio.service.app import create_app
from diarization_audio.settings import Settings


def wav_properties(path: Path) -> tuple[int, int, int, float, float]:
    """(rate, channels, sample width, duration, RMS) of a stored WAV."""
    with wave.open(str(path), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
        samples = array.array("h", frames)
        rms = math.sqrt(sum(s * s for s in samples[::50]) / max(len(samples[::50]), 1))
        return (
            wav.getframerate(),
            wav.getnchannels(),
            wav.getsampwidth(),
            wav.getnframes() / wav.getframerate(),
            rms,
        )


def test_root_lists_name_version_and_endpoints(client: TestClient) -> None:
    """GET / names the service, its version and the download endpoints."""
    body = client.get("/").json()
    assert body["name"] and body["version"] == "1.0.0"
    assert "POST /download/single" in body["endpoints"]
    assert "POST /download/dual" in body["endpoints"]


def test_health_reports_storage_ffmpeg_and_disk(client: TestClient, settings: Settings) -> None:
    """GET /health says the storage is writable and which ffmpeg (with version) is in use."""
    body = client.get("/health").json()
    assert body["status"] == "healthy"
    assert body["storage_directory"] == str(settings.audio_storage_dir)
    assert body["storage_writable"] is True
    assert Path(body["ffmpeg"]["path"]).is_file()
    assert body["ffmpeg"]["version"] and "unavailable" not in body["ffmpeg"]["version"]
    assert body["free_disk_mb"] > 0
    assert body["timestamp"].endswith("+05:30")


@pytest.mark.parametrize("build", FFMPEG_BUILDS)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_single_download_converts_every_format(
    fmt: str, build: str, source: SourceServer, tmp_path: Path
) -> None:
    """Each input format is stored as 16 kHz mono 16-bit WAV with the right duration and
    fields, by the ffmpeg the service prefers and by the bundled one it falls back on."""
    settings = make_settings(tmp_path, ffmpeg_binary=ffmpeg_build(build))
    name = f"{fmt}{FORMATS[fmt]}"
    url = source.file_url(name)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["ffmpeg"]["path"] == ffmpeg_build(build)
        response = client.post(
            "/download/single",
            data={"conversation_id": f"conv_{fmt}", "audio_url": url, "speaker_label": "agent"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    stored = Path(settings.audio_storage_dir) / f"conv_{fmt}_agent.wav"
    assert body["status"] == "success"
    assert body["conversation_id"] == f"conv_{fmt}"
    assert body["speaker_label"] == "agent"
    assert body["filename"] == f"conv_{fmt}_agent.wav"
    assert body["filepath"] == str(stored)
    assert body["sample_rate"] == 16000 and body["channels"] == 1
    assert body["file_size_mb"] == round(stored.stat().st_size / 1024 / 1024, 3)
    rate, channels, width, duration, rms = wav_properties(stored)
    assert (rate, channels, width) == (16000, 1, 2)
    # AAC in ADTS carries encoder padding ffmpeg cannot trim; everything else is exact.
    assert duration == pytest.approx(2.0, abs=0.06)
    assert body["duration_seconds"] == pytest.approx(duration, abs=0.001)
    assert rms > 100, "the converted audio is silent"


def test_single_download_default_label_is_speaker(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """Without speaker_label the file is stored as {id}_speaker.wav."""
    body = client.post(
        "/download/single",
        data={"conversation_id": "c1", "audio_url": source.file_url("mp3.mp3")},
    ).json()
    assert body["filename"] == "c1_speaker.wav"
    assert (Path(settings.audio_storage_dir) / "c1_speaker.wav").is_file()


def test_stereo_is_mixed_down_not_one_channel_dropped(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """A stereo file whose channels differ ends up mono and carries both channels' energy."""
    body = client.post(
        "/download/single",
        data={"conversation_id": "stereo", "audio_url": source.file_url("wav.wav")},
    ).json()
    assert body["channels"] == 1
    _, channels, _, _, rms = wav_properties(Path(body["filepath"]))
    assert channels == 1 and rms > 100


def test_dual_download_stores_both_speakers(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """Agent and customer are both stored and recorded in one conversation entry."""
    response = client.post(
        "/download/dual",
        data={
            "conversation_id": "conv_002",
            "audio_url_agent": source.file_url("mp3.mp3"),
            "audio_url_customer": source.file_url("flac.flac"),
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["conversation_id"] == "conv_002"
    assert body["status"] == "success" and body["total_files"] == 2
    assert [d["speaker"] for d in body["downloads"]] == ["agent", "customer"]
    for item in body["downloads"]:
        assert item["status"] == "success"
        assert item["filename"] == f"conv_002_{item['speaker']}.wav"
        assert Path(item["filepath"]).is_file()
        assert item["duration_seconds"] == pytest.approx(2.0, abs=0.01)
        assert item["error"] is None
    entry = client.get("/conversations/conv_002").json()
    assert set(entry["speakers"]) == {"agent", "customer"}
    assert entry["total"]["duration_seconds"] == pytest.approx(4.0, abs=0.02)


def test_dual_download_agent_only(client: TestClient, source: SourceServer) -> None:
    """Without a customer URL only the agent file is downloaded."""
    body = client.post(
        "/download/dual",
        data={"conversation_id": "solo", "audio_url_agent": source.file_url("ogg.ogg")},
    ).json()
    assert body["status"] == "success" and body["total_files"] == 1
    assert [d["speaker"] for d in body["downloads"]] == ["agent"]


def test_dual_partial_keeps_the_good_file(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """A failing customer file gives 'partial' (200); the agent file is kept and recorded."""
    response = client.post(
        "/download/dual",
        data={
            "conversation_id": "half",
            "audio_url_agent": source.file_url("mp3.mp3"),
            "audio_url_customer": source.url("/status/404"),
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "partial" and body["total_files"] == 1
    agent, customer = body["downloads"]
    assert agent["status"] == "success"
    assert customer["status"] == "failed"
    assert "404" in customer["error"] and customer["error_code"] == "source_error"
    assert customer["filepath"] is None
    entry = client.get("/conversations/half").json()
    assert list(entry["speakers"]) == ["agent"]
    assert sorted(p.name for p in Path(settings.audio_storage_dir).iterdir()) == ["half_agent.wav"]


def test_dual_all_failed_answers_the_first_error(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """When every file fails the answer is the agent's error, and nothing is recorded."""
    response = client.post(
        "/download/dual",
        data={
            "conversation_id": "none",
            "audio_url_agent": source.url("/html"),
            "audio_url_customer": source.url("/status/404"),
        },
    )
    assert response.status_code == 422
    assert response.json()["error"] == "not_audio"
    assert "/html" in response.json()["detail"]
    assert client.get("/conversations/none").status_code == 404
    assert list(Path(settings.audio_storage_dir).iterdir()) == []


def test_storage_info_lists_sorted_wav_files(client: TestClient, source: SourceServer) -> None:
    """GET /storage/info counts the stored .wav files, sorted, with their total size."""
    for cid in ("b", "a"):
        client.post(
            "/download/single",
            data={"conversation_id": cid, "audio_url": source.file_url("mp3.mp3")},
        )
    body = client.get("/storage/info").json()
    assert body["files"] == ["a_speaker.wav", "b_speaker.wav"]
    assert body["total_files"] == 2
    assert body["total_size_mb"] == pytest.approx(2 * 64044 / 1024 / 1024, abs=0.01)


def test_statistics_with_nothing_collected_is_zeros(client: TestClient) -> None:
    """An empty collection answers zeros, not an error."""
    body = client.get("/statistics", params={"target_hours": 10}).json()
    assert body["summary"]["total_conversations"] == 0
    assert body["summary"]["total_hours"] == 0
    assert body["summary"]["first_download"] is None
    assert body["progress"] == {
        "measured_in": "audio",
        "target_hours": 10.0,
        "current_hours": 0.0,
        "remaining_hours": 10.0,
        "progress_percentage": 0.0,
        "estimated_conversations_needed": 0,
        "target_reached": False,
    }


def test_statistics_counts_hours_and_progress(client: TestClient, source: SourceServer) -> None:
    """Totals, averages and the conversations still needed follow from what was stored."""
    client.post(
        "/download/dual",
        data={
            "conversation_id": "s1",
            "audio_url_agent": source.file_url("mp3.mp3"),
            "audio_url_customer": source.file_url("wav.wav"),
        },
    )
    client.post(
        "/download/single",
        data={"conversation_id": "s2", "audio_url": source.file_url("flac.flac")},
    )
    target = 0.01  # 36 s
    body = client.get("/statistics", params={"target_hours": target}).json()
    summary, progress = body["summary"], body["progress"]
    seconds = 6.0
    assert summary["total_conversations"] == 2
    assert summary["total_minutes"] == pytest.approx(seconds / 60, abs=0.01)
    assert summary["total_hours"] == pytest.approx(seconds / 3600, abs=1e-4)
    assert summary["average_duration_minutes"] == pytest.approx(seconds / 60 / 2, abs=0.01)
    assert summary["first_download"] <= summary["last_download"]
    assert progress["remaining_hours"] == pytest.approx(target - seconds / 3600, abs=1e-4)
    assert progress["estimated_conversations_needed"] == math.ceil((36 - 6) / 3)
    assert progress["target_reached"] is False
    reached = client.get("/statistics", params={"target_hours": 0.001}).json()["progress"]
    assert reached["target_reached"] is True
    assert reached["remaining_hours"] == 0 and reached["estimated_conversations_needed"] == 0
    assert reached["progress_percentage"] == 100.0


@pytest.mark.parametrize("target", ["0", "-5", "abc", "nan", "inf", ""])
def test_statistics_rejects_a_target_that_is_not_positive(client: TestClient, target: str) -> None:
    """target_hours that is not a positive finite number gets 400 with a JSON error."""
    response = client.get("/statistics", params={"target_hours": target})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_input"
    assert "target_hours" in response.json()["detail"]


def test_conversations_are_paged_and_unknown_is_404(
    client: TestClient, source: SourceServer
) -> None:
    """GET /conversations pages the recorded entries; an unknown id is a JSON 404."""
    for n in range(3):
        client.post(
            "/download/single",
            data={"conversation_id": f"p{n}", "audio_url": source.file_url("mp3.mp3")},
        )
    page = client.get("/conversations", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 1
    assert [c["conversation_id"] for c in page["conversations"]] == ["p1", "p2"]
    assert client.get("/conversations", params={"offset": 10}).json()["conversations"] == []
    missing = client.get("/conversations/nobody")
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": "conversation 'nobody' is not recorded",
        "error": "not_found",
    }


def test_repeat_answers_exists_without_downloading(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """The same id, label and URL again answers 'exists' and the source is not asked again."""
    data = {
        "conversation_id": "again",
        "audio_url": source.file_url("mp3.mp3"),
        "speaker_label": "agent",
    }
    first = client.post("/download/single", data=data).json()
    hits = source.hits["/files/mp3.mp3"]
    second = client.post("/download/single", data=data).json()
    assert second["status"] == "exists"
    assert second["sha256"] == first["sha256"]
    assert source.hits["/files/mp3.mp3"] == hits
    stats = client.get("/statistics").json()["summary"]
    assert stats["total_conversations"] == 1


def test_overwrite_replaces_the_entry_without_double_counting(
    client: TestClient, source: SourceServer
) -> None:
    """overwrite=true downloads again and replaces the entry; totals count it once."""
    data = {
        "conversation_id": "ow",
        "audio_url": source.file_url("mp3.mp3"),
        "speaker_label": "agent",
    }
    client.post("/download/single", data=data)
    hits = source.hits["/files/mp3.mp3"]
    again = client.post("/download/single", data={**data, "overwrite": "true"}).json()
    assert again["status"] == "success"
    assert source.hits["/files/mp3.mp3"] == hits + 1
    entry = client.get("/conversations/ow").json()
    assert entry["total"]["files"] == 1
    assert entry["total"]["duration_seconds"] == pytest.approx(2.0, abs=0.01)
    assert client.get("/statistics").json()["summary"]["total_minutes"] == pytest.approx(
        2 / 60, abs=0.01
    )


def test_a_different_url_for_a_stored_file_is_a_conflict(
    client: TestClient, source: SourceServer
) -> None:
    """Another URL for an already stored id and label is refused with 409 unless overwrite."""
    client.post(
        "/download/single", data={"conversation_id": "cf", "audio_url": source.file_url("mp3.mp3")}
    )
    clash = client.post(
        "/download/single", data={"conversation_id": "cf", "audio_url": source.file_url("ogg.ogg")}
    )
    assert clash.status_code == 409 and clash.json()["error"] == "url_conflict"
    replaced = client.post(
        "/download/single",
        data={
            "conversation_id": "cf",
            "audio_url": source.file_url("ogg.ogg"),
            "overwrite": "true",
        },
    )
    assert replaced.status_code == 200
    assert client.get("/conversations/cf").json()["speakers"]["speaker"]["url"].endswith("ogg.ogg")


def test_a_deleted_file_is_downloaded_again(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """If the stored WAV vanished, the same request downloads it again instead of 'exists'."""
    data = {"conversation_id": "gone", "audio_url": source.file_url("mp3.mp3")}
    first = client.post("/download/single", data=data).json()
    Path(first["filepath"]).unlink()
    again = client.post("/download/single", data=data).json()
    assert again["status"] == "success"
    assert Path(again["filepath"]).is_file()


def test_metadata_file_holds_every_documented_field(
    client: TestClient, source: SourceServer, settings: Settings
) -> None:
    """The JSON document on disk has the entry, speaker sub-entries and totals as documented."""
    body = client.post(
        "/download/dual",
        data={
            "conversation_id": "m1",
            "audio_url_agent": source.file_url("mp3.mp3"),
            "audio_url_customer": source.file_url("opus.opus"),
        },
    ).json()
    both = {"agent", "customer"}
    doc = exported_document(
        settings, lambda d: set(d["conversations"].get("m1", {}).get("speakers", ())) == both
    )
    entry = doc["conversations"]["m1"]
    assert entry["conversation_id"] == "m1"
    assert entry["created_at"] and entry["updated_at"]
    agent = entry["speakers"]["agent"]
    assert set(agent) == {
        "filepath", "url", "file_size_bytes", "file_size_mb", "duration_seconds",
        "sample_rate", "channels", "sha256", "downloaded_at", "source_sha256",
    }  # fmt: skip
    assert agent["url"] == source.file_url("mp3.mp3")
    assert agent["file_size_bytes"] == Path(agent["filepath"]).stat().st_size
    assert agent["sha256"] == body["downloads"][0]["sha256"]
    total = entry["total"]
    assert total["duration_seconds"] == pytest.approx(4.0, abs=0.02)
    assert total["duration_minutes"] == pytest.approx(4.0 / 60, abs=0.001)
    assert total["duration_hours"] == pytest.approx(4.0 / 3600, abs=1e-5)
    sizes = sum(s["file_size_bytes"] for s in entry["speakers"].values())
    assert total["size_mb"] == round(sizes / 1024 / 1024, 3)


def test_docs_document_every_field_and_error(client: TestClient) -> None:
    """/docs and /redoc render and the schema lists the form fields and error answers."""
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200
    schema = client.get("/openapi.json").json()
    single = schema["paths"]["/download/single"]["post"]
    for code in ("400", "413", "422", "502", "504"):
        assert code in single["responses"], code
    form = single["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    ref = form["$ref"].rsplit("/", 1)[-1]
    fields = schema["components"]["schemas"][ref]["properties"]
    assert {"conversation_id", "audio_url", "speaker_label", "overwrite"} <= set(fields)
    assert "404" in schema["paths"]["/conversations/{conversation_id}"]["get"]["responses"]


def test_numbers_beyond_any_collection_are_refused_not_overflowed(client: TestClient) -> None:
    """An offset past 64-bit integers or a target of 1e308 hours is a 400, never a crash."""
    page = client.get("/conversations", params={"offset": 2**63})
    assert page.status_code == 400 and page.json()["error"] == "invalid_input"
    target = client.get("/statistics", params={"target_hours": 1e308})
    assert target.status_code == 400 and target.json()["error"] == "invalid_input"
    assert client.get("/statistics", params={"target_hours": 1e9}).status_code == 200


def test_statistics_can_count_progress_in_speech_hours(
    client: TestClient, source: SourceServer
) -> None:
    """?speech=true measures progress in speech hours, and changes nothing else: the summary
    stays in audio units; the speech section is always there."""
    data = {"conversation_id": "sp1", "audio_url": source.file_url("mp3.mp3")}
    assert client.post("/download/single", data=data).status_code == 200
    audio = labelled_statistics(client, target_hours=1)
    speech = client.get("/statistics", params={"target_hours": 1, "speech": "true"}).json()
    assert audio["progress"]["measured_in"] == "audio"
    assert audio["progress"]["current_hours"] == audio["summary"]["total_hours"] > 0
    assert speech["progress"]["measured_in"] == "speech"
    assert speech["progress"]["current_hours"] == speech["speech"]["speech_hours"]
    assert speech["speech"]["labelled_files"] == 1
    assert speech["summary"] == audio["summary"]
