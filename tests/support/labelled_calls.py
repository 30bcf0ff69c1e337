"""Labelled two-leg calls in a store, for the export tests: espeak-ng speech in chosen turns on
each leg, written as 16 kHz WAVs, stored where the settings keep the audio (a folder or a
bucket) and labelled by the product's own labeller."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.call_conditions import write_wav
from diarization_audio.labels.labeller import label_conversation, thresholds_of
from diarization_audio.objects import audio_place
from diarization_audio.settings import Settings
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.tracker import MetadataTracker
from support.speech_calls import speak

RATE = 16000
Spans = list[tuple[float, float]]
# (conversation id, agent id, seconds, agent turns, customer turns)
Call = tuple[str, str | None, float, Spans, Spans]
SENTENCES = ("thank you for calling how can I help you today",
             "I would like to change the address on my account please")  # fmt: skip
VOICES = {150: "en-us", 230: "en+f3"}  # a lower and a higher voice, by pitch
NOISY_CUSTOMER = 0.05  # white noise RMS that puts a customer's SNR near 6 dB


def voice(
    seconds: float, spans: Spans, pitch: float, level: float, noise: float = 0.001
) -> npt.NDArray[np.float64]:
    """Speech (espeak-ng) filling each span, peaking at `level`, over white noise."""
    talk = np.concatenate([speak(text, VOICES[int(pitch)]) for text in SENTENCES])
    talk *= level / np.abs(talk).max()
    signal = np.zeros(round(seconds * RATE))
    for start, end in spans:
        first, last = round(start * RATE), min(round(end * RATE), signal.size)
        signal[first:last] = np.resize(talk, last - first)
    rng = np.random.default_rng(int(pitch))
    return signal + rng.normal(0, noise, signal.size)


def write_leg(path: Path, signal: npt.NDArray[np.float64]) -> StoredFile:
    """`signal` as a 16 kHz mono WAV at `path`, and the record the service would keep of it."""
    write_wav(path, signal)
    return StoredFile(
        filepath=str(path), url=f"http://127.0.0.1/{path.name}",
        file_size_bytes=path.stat().st_size, duration_seconds=len(signal) / RATE,
        sample_rate=RATE, channels=1, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        downloaded_at="2026-11-25T10:00:00+05:30",
    )  # fmt: skip


def store_leg(settings: Settings, name: str, signal: npt.NDArray[np.float64]) -> StoredFile:
    """A leg put where the settings keep the WAVs (a folder, or a bucket), as the service
    puts it; the record names its location there."""
    work = Path(settings.audio_storage_dir)
    work.mkdir(parents=True, exist_ok=True)
    local = work / f".{name}.{os.getpid()}.new"
    record = write_leg(local, signal)
    place = audio_place(settings)
    try:
        place.put_file(local, name)
    finally:
        local.unlink(missing_ok=True)
    return record.model_copy(update={"filepath": place.location(name)})


def add_call(tracker: MetadataTracker, settings: Settings, call: Call) -> None:
    """Store both legs of `call` and label them."""
    cid, agent_id, seconds, agent_turns, customer_turns = call
    agent = voice(seconds, agent_turns, 150, 0.6)
    noise = NOISY_CUSTOMER if cid == "noisy" else 0.001
    customer = voice(seconds + 0.5, customer_turns, 230, 0.5, noise)
    agent_file = store_leg(settings, f"{cid}_agent.wav", agent)
    tracker.record_file(cid, "agent", agent_file, agent_id=agent_id)
    tracker.record_file(cid, "customer", store_leg(settings, f"{cid}_customer.wav", customer))
    labelled = label_conversation(tracker, cid, thresholds_of(settings), settings=settings)
    assert labelled is not None
