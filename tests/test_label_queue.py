"""The service's labelling queue (speech_labeller.LabelWorker): answers do not wait for labels,
and every conversation queued before a stop is labelled by the time the stop finishes."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support.cli_helpers import use_settings
from support.source_server import SourceServer
from support.speech_calls import to_int16, write_wav
from support.stores import labelled_statistics, make_settings

from diarization_audio.cli import report as analyze_storage
from diarization_audio.labels.labeller import LabelWorker
from diarization_audio.settings import Settings
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.tracker import MetadataTracker

RATE = 16000


def _leg(path: Path, seconds: float, talking: tuple[float, float]) -> StoredFile:
    """A WAV with a voiced tone during `talking` and near-silence around it."""
    t = np.arange(round(seconds * RATE)) / RATE
    gate = (t >= talking[0]) & (t < talking[1])
    signal = 0.5 * gate * np.sin(2 * np.pi * 180 * t) * (0.7 + 0.3 * np.sin(2 * np.pi * 4 * t))
    write_wav(path, to_int16(signal), RATE)
    return StoredFile(
        filepath=str(path), url=f"http://127.0.0.1/{path.name}",
        file_size_bytes=path.stat().st_size, duration_seconds=seconds, sample_rate=RATE,
        channels=1, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        downloaded_at="2026-12-04T10:00:00+05:30",
    )  # fmt: skip


@pytest.fixture
def stored(tmp_path: Path) -> Settings:
    """Six conversations of two legs each, recorded and not labelled."""
    settings = make_settings(tmp_path)
    store = Path(settings.audio_storage_dir)
    store.mkdir(parents=True)
    tracker = MetadataTracker.from_settings(settings)
    for n in range(6):
        for label, talking in (("agent", (0.5, 3.0)), ("customer", (3.5, 6.0))):
            leg = _leg(store / f"c{n}_{label}.wav", 20.0, talking)
            tracker.record_file(f"c{n}", label, leg)
    assert tracker.statistics()["speech"]["unlabelled_files"] == 12
    tracker.close()
    return settings


def _speech(settings: Settings) -> dict[str, Any]:
    tracker = MetadataTracker.from_settings(settings)
    try:
        return dict(tracker.statistics()["speech"])
    finally:
        tracker.close()


def test_submit_returns_at_once_and_drain_waits_for_every_queued_conversation(
    stored: Settings,
) -> None:
    """Twelve submissions for six conversations (each leg's job submits its conversation)
    return without waiting; `drain` returns once all six are labelled, both legs each."""
    worker = LabelWorker(stored)

    async def run() -> tuple[int, int]:
        await worker.start()
        try:
            for n in range(6):
                worker.submit(f"c{n}")
                worker.submit(f"c{n}")
            right_after: int = _speech(stored)["labelled_files"]
            await worker.drain()
            return right_after, _speech(stored)["labelled_files"]
        finally:
            await asyncio.to_thread(worker.close)

    right_after, drained = asyncio.run(run())
    assert right_after < 12  # submitting did not label anything itself
    assert drained == 12
    assert _speech(stored)["unlabelled_files"] == 0


def test_a_queued_conversation_keeps_its_place_and_one_being_labelled_is_queued_again(
    stored: Settings,
) -> None:
    """c0, c1, c2 and c1 again, queued at once: c1 is labelled once, before c2. c0 submitted
    again while its labelling runs (its second leg arrived meanwhile) is labelled again."""
    worker = LabelWorker(stored)
    order: list[str] = []
    label = worker.label

    async def recording(conversation_id: str) -> None:
        order.append(conversation_id)
        await label(conversation_id)

    worker.label = recording  # type: ignore[method-assign]

    async def run() -> None:
        await worker.start()
        try:
            for conversation_id in ("c0", "c1", "c2", "c1"):
                worker.submit(conversation_id)
            await worker.drain()
            worker.submit("c3")
            while order[-1] != "c3":  # c3's labelling has begun
                await asyncio.sleep(0)
            worker.submit("c3")
            await worker.drain()
        finally:
            await asyncio.to_thread(worker.close)

    asyncio.run(run())
    assert order == ["c0", "c1", "c2", "c3", "c3"]
    assert _speech(stored)["labelled_files"] == 8


def test_both_legs_sent_together_are_labelled_once_together(
    client: TestClient, source: SourceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dual request's two jobs queue their conversation once, when the second ends (not the
    first leg alone and then both); a repeat that stores nothing queues nothing."""
    submitted: list[str] = []
    submit = LabelWorker.submit

    def recording(worker: LabelWorker, conversation_id: str) -> None:
        submitted.append(conversation_id)
        submit(worker, conversation_id)

    monkeypatch.setattr(LabelWorker, "submit", recording)
    data = {
        "conversation_id": "pair",
        "audio_url_agent": source.file_url("mp3.mp3"),
        "audio_url_customer": source.file_url("flac.flac"),
    }
    assert client.post("/download/dual", data=data).status_code == 200
    assert labelled_statistics(client)["speech"]["labelled_files"] == 2
    assert submitted == ["pair"]
    again = client.post("/download/dual", data=data).json()
    assert [item["status"] for item in again["downloads"]] == ["exists", "exists"]
    assert submitted == ["pair"]


def test_the_progress_report_counts_the_files_waiting_for_labels(
    stored: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_settings(monkeypatch, stored)
    assert analyze_storage.main(["--speech"]) == 0
    assert "Speech (0 files labelled, 12 waiting)" in capsys.readouterr().out
