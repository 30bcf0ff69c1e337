"""ffmpeg starts while the source is still answering, unless the URL names a format whose first
bytes decide how it is started; a name that misleads changes nothing in what is stored."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.audio_factory import make_audio
from support.source_server import SourceServer
from support.stores import make_settings
from test_hardening import _ffmpeg_processes_for

from diarization_audio.ingest.mp3_header import decoded_samples
from diarization_audio.service.app import create_app

PAUSE_SECONDS = 1.5


@pytest.fixture(scope="module")
def named_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceServer]:
    directory = tmp_path_factory.mktemp("named")
    make_audio(directory / "tone.wav", "wav", seconds=1)
    make_audio(directory / "tone.mp3", "mp3", seconds=1)
    shutil.copy(directory / "tone.mp3", directory / "mp3-bytes.wav")  # an MP3 under a WAV name
    with SourceServer(directory) as server:
        yield server


def _post(http: TestClient, conversation_id: str, url: str) -> Any:
    return http.post(
        "/download/single", data={"conversation_id": conversation_id, "audio_url": url}
    )


def _downloaded_bytes(storage: Path) -> int:
    return sum(p.stat().st_size for p in storage.glob(".*.download"))


def _ffmpeg_while_the_source_pauses(
    tmp_path: Path, source: SourceServer, name: str
) -> tuple[list[str], int]:
    """Post `name`, which the source answers only after PAUSE_SECONDS: the ffmpeg command lines
    seen in the first half of the pause, and the bytes downloaded by its end."""
    settings = make_settings(tmp_path)
    storage = Path(settings.audio_storage_dir)
    path = f"/slow/{PAUSE_SECONDS}/{name}"
    with TestClient(create_app(settings)) as http, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_post, http, name, source.url(path))
        assert source.wait_for_hits(path)
        seen: list[str] = []
        deadline = time.monotonic() + PAUSE_SECONDS / 2
        while time.monotonic() < deadline:
            seen += _ffmpeg_processes_for(storage)
            time.sleep(0.01)
        received = _downloaded_bytes(storage)
        response = answer.result(60)
    assert response.status_code == 200, response.text
    return seen, received


def test_ffmpeg_starts_before_the_source_answers(
    tmp_path: Path, named_source: SourceServer
) -> None:
    seen, received = _ffmpeg_while_the_source_pauses(tmp_path, named_source, "tone.wav")
    assert seen, "no ffmpeg while the source was pausing"
    assert "pipe:0" in seen[0]
    assert received == 0, "the source had already answered"


def test_a_url_named_mp3_waits_for_its_first_bytes(
    tmp_path: Path, named_source: SourceServer
) -> None:
    seen, _ = _ffmpeg_while_the_source_pauses(tmp_path, named_source, "tone.mp3")
    assert seen == []


def test_an_mp3_under_a_wav_name_is_stored_as_the_mp3_is(
    tmp_path: Path, named_source: SourceServer
) -> None:
    """ffmpeg started on the name's word is stopped once the first bytes show an MP3 whose tag
    gives its exact length; the stored WAV is the one the honestly named MP3 gives."""
    assert decoded_samples((named_source.root / "tone.mp3").read_bytes()[:65536])
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as http:
        results = [
            _post(http, cid, url)
            for cid, url in [
                ("named-mp3", named_source.file_url("tone.mp3")),
                ("named-wav", named_source.file_url("mp3-bytes.wav")),
            ]
        ]
    assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
    storage = Path(settings.audio_storage_dir)
    honest = (storage / "named-mp3_speaker.wav").read_bytes()
    misleading = (storage / "named-wav_speaker.wav").read_bytes()
    assert misleading == honest
