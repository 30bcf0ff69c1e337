"""POST /download/stereo: one stereo call stored as two speakers, one per channel."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support.audio_factory import ffmpeg_exe
from support.source_server import SourceServer
from support.stores import recorded_conversations

from diarization_audio.settings import Settings
from diarization_audio.store.tracker import MetadataTracker


def samples(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def pitch(path: Path) -> float:
    """The tone's frequency from its zero crossings (two per period)."""
    signal = samples(path).astype(np.int32)
    crossings = np.count_nonzero(np.diff(np.signbit(signal)))
    return crossings / 2 / (len(signal) / 16000)


def stored_wavs(settings: Settings) -> list[str]:
    return sorted(p.name for p in Path(settings.audio_storage_dir).glob("*.wav"))


@pytest.fixture(scope="module")
def identical_channels(source_server: SourceServer, corpus_dir: Path) -> str:
    """A mono recording saved as stereo: both channels carry the same samples."""
    import subprocess

    path = corpus_dir / "same_both_sides.wav"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "sine=frequency=500:duration=2", "-ac", "2", "-ar", "44100", str(path)],
        check=True,
    )  # fmt: skip
    return source_server.file_url(path.name)


def test_each_channel_becomes_one_speakers_file(
    client: TestClient, settings: Settings, source: SourceServer
) -> None:
    """Left and right of a stereo MP3 are stored as agent and customer, each its own channel."""
    url = source.file_url("mp3.mp3")  # channel n carries 440 Hz * 1.5**n
    response = client.post("/download/stereo", data={"conversation_id": "call1", "audio_url": url})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["total_files"] == 2
    assert [d["speaker"] for d in body["downloads"]] == ["agent", "customer"]
    assert [d["filename"] for d in body["downloads"]] == ["call1_agent.wav", "call1_customer.wav"]
    store = Path(settings.audio_storage_dir)
    assert pitch(store / "call1_agent.wav") == pytest.approx(440, rel=0.02)
    assert pitch(store / "call1_customer.wav") == pytest.approx(660, rel=0.02)
    entry = recorded_conversations(settings)["call1"]
    assert sorted(entry["speakers"]) == ["agent", "customer"]
    assert {s["url"] for s in entry["speakers"].values()} == {url}
    again = client.post("/download/stereo", data={"conversation_id": "call1", "audio_url": url})
    assert [d["status"] for d in again.json()["downloads"]] == ["exists", "exists"]
    assert source.hits["/files/mp3.mp3"] == 1  # fetched once for both channels, once in all


def test_labels_name_the_channels(
    client: TestClient, settings: Settings, source: SourceServer
) -> None:
    """left_label and right_label choose the speakers' names; equal labels are refused."""
    url = source.file_url("flac.flac")
    data = {"conversation_id": "c2", "audio_url": url, "left_label": "rep", "right_label": "caller"}
    assert client.post("/download/stereo", data=data).status_code == 200
    assert stored_wavs(settings) == ["c2_caller.wav", "c2_rep.wav"]
    same = client.post(
        "/download/stereo", data={**data, "conversation_id": "c3", "right_label": "rep"}
    )
    assert same.status_code == 400 and same.json()["error"] == "invalid_input"
    assert stored_wavs(settings) == ["c2_caller.wav", "c2_rep.wav"]


def test_a_mono_file_is_not_stereo(
    client: TestClient, settings: Settings, source: SourceServer
) -> None:
    """A single-channel source is refused with 422 not_stereo; nothing is stored or left behind."""
    url = source.file_url("wav_mulaw.wav")
    response = client.post("/download/stereo", data={"conversation_id": "m1", "audio_url": url})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "not_stereo"
    assert list(Path(settings.audio_storage_dir).iterdir()) == []
    failures = MetadataTracker.from_settings(settings).failure_summary()
    assert failures["by_error_last_24_hours"] == {"not_stereo": 2}  # one per speaker


def test_identical_channels_are_reported_not_labelled_as_two_speakers(
    client: TestClient, settings: Settings, identical_channels: str
) -> None:
    """Two channels with the same samples get 422 identical_channels and store nothing."""
    data = {"conversation_id": "dup1", "audio_url": identical_channels}
    response = client.post("/download/stereo", data=data)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "identical_channels"
    assert list(Path(settings.audio_storage_dir).iterdir()) == []
    assert recorded_conversations(settings) == {}
