"""One leg's analysis: its samples read in chunks into `LegAudio`, one level per frame plus the
PCM hash, clipping and peak (webrtc's frame decisions on the way), then for Silero a second pass
for the network's probabilities (labels/network.py). Memory does not grow with the leg's length.

The decisions made from these measures (which frames are the leg's speech, its turns) are in
labels/activity.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from diarization_audio.labels.network import network_pass
from diarization_audio.labels.params import DEFAULT_PARAMS, METHODS, Frames, Mask, VadParams
from diarization_audio.wav import SAMPLE_RATE, SAMPLE_WIDTH, pcm_chunks

_FULL_SCALE = 32768.0
_CLIP_HIGH, _CLIP_LOW = 32766, -32767  # at or within 1 LSB of full scale


@dataclass(frozen=True)
class LegAudio:
    """What one analysis pass of one leg's WAV yields."""

    frame_db: Frames  # float32 level per frame (dBFS, after pre-emphasis), the detector's input
    raw_db: Frames  # float32 level per frame without pre-emphasis (dBFS): for the SNR
    frame_seconds: float
    duration_seconds: float
    pcm_sha256: str  # sha256 of the PCM samples only (the WAV data chunk), not of the file
    clipped_share: float  # fraction of samples at or within 1 LSB of full scale
    peak_dbfs: float
    frame_voiced: Mask | None = None  # per-frame decisions of an external detector (webrtc)
    frame_probability: Frames | None = None  # per-frame speech probability (silero)
    music_frames: int = 0  # frames judged music or tones by the detector


class _Meter:
    """Accumulates one leg's frame levels, hash, clipping and peak from consecutive PCM bytes."""

    def __init__(self, params: VadParams) -> None:
        if params.method not in METHODS:
            raise ValueError(f"unknown method {params.method!r}; expected one of {METHODS}")
        self.params = params
        self.frame = round(params.frame_seconds * SAMPLE_RATE)
        self.digest = hashlib.sha256()
        self.pending = b""
        self.levels: list[Frames] = []
        self.raw_levels: list[Frames] = []
        self.voiced: list[Mask] = []
        self.samples = self.clipped = self.peak = 0
        self.previous = 0.0  # the last sample fed, for the pre-emphasis filter
        self.work = self.shifted = np.empty(0, np.float32)
        self.vad = None
        if params.method == "webrtc":
            import webrtcvad  # type: ignore[import-untyped]  # only this detector needs it

            self.vad = webrtcvad.Vad(params.webrtc_mode)

    def feed(self, data: bytes) -> None:
        self.digest.update(data)
        data = self.pending + data if self.pending else data
        usable = len(data) - len(data) % (SAMPLE_WIDTH * self.frame)
        self.pending = data[usable:]
        if usable:
            self._frames(data[:usable])

    def _frames(self, data: bytes) -> None:
        samples = np.frombuffer(data, dtype="<i2")
        self.samples += samples.size
        self.clipped += int(np.count_nonzero(samples >= _CLIP_HIGH)) + int(
            np.count_nonzero(samples <= _CLIP_LOW)
        )
        self.peak = max(self.peak, int(samples.max()), -int(samples.min()))
        count = -(-samples.size // self.frame)
        self.raw_levels.append(self._level(self._block(samples, count, emphasis=False)))
        self.levels.append(self._level(self._block(samples, count)))
        if self.vad is not None:
            size = SAMPLE_WIDTH * self.frame
            whole = len(data) // size
            flags = [self.vad.is_speech(data[i * size : (i + 1) * size], SAMPLE_RATE)
                     for i in range(whole)]  # fmt: skip
            self.voiced.append(np.array(flags + [False] * (count - whole), dtype=np.bool_))

    def _level(self, block: Frames) -> Frames:
        power = np.einsum("ij,ij->i", block, block) / (self.frame * _FULL_SCALE**2)
        floor = 10 ** (self.params.silence_dbfs / 10)
        levels: Frames = (10 * np.log10(np.maximum(power, floor))).astype(np.float32)
        return levels

    def _block(self, samples: npt.NDArray[np.int16], count: int, emphasis: bool = True) -> Frames:
        """The samples as float32 frames (zero-padded), pre-emphasised unless told not, in
        reused buffers: fresh arrays per chunk would cost more in page faults than the
        arithmetic."""
        size, used = count * self.frame, samples.size
        if self.work.size < size:
            self.work, self.shifted = np.empty(size, np.float32), np.empty(size, np.float32)
        flat, shifted = self.work[:size], self.shifted[:size]
        flat[:used] = samples
        flat[used:] = 0
        if self.params.preemphasis and emphasis:
            # y[n] = x[n] - a x[n-1]: rumble and hum below speech no longer set the level
            shifted[0] = self.previous
            shifted[1:used] = flat[: used - 1]
            self.previous = float(flat[used - 1])
            shifted[:used] *= self.params.preemphasis
            flat[:used] -= shifted[:used]
        return flat.reshape(count, self.frame)

    def finish(self) -> LegAudio:
        tail = self.pending[: len(self.pending) - len(self.pending) % SAMPLE_WIDTH]
        if tail:
            self._frames(tail)
        levels = np.concatenate(self.levels) if self.levels else np.zeros(0, np.float32)
        raw = np.concatenate(self.raw_levels) if self.raw_levels else np.zeros(0, np.float32)
        voiced = None
        if self.vad is not None:
            voiced = np.concatenate(self.voiced) if self.voiced else np.zeros(0, np.bool_)
        return LegAudio(
            frame_db=levels,
            raw_db=raw,
            frame_seconds=self.frame / SAMPLE_RATE,
            duration_seconds=self.samples / SAMPLE_RATE,
            pcm_sha256=self.digest.hexdigest(),
            clipped_share=self.clipped / self.samples if self.samples else 0.0,
            peak_dbfs=_dbfs(self.peak, self.params.silence_dbfs),
            frame_voiced=voiced,
        )


def _dbfs(peak: int, silence: float) -> float:
    return max(silence, 20 * float(np.log10(peak / _FULL_SCALE))) if peak else silence


Source = Callable[[], Iterable[bytes]]  # a leg's samples (s16le), from the start at each call
Leg = Path | npt.NDArray[np.int16]  # a stored WAV, or samples already in memory


def source_of(leg: Leg, params: VadParams) -> Source:
    if isinstance(leg, np.ndarray):
        data = np.ascontiguousarray(leg, dtype="<i2").tobytes()
        return lambda: [data]
    chunk_bytes = params.chunk_frames * SAMPLE_WIDTH * round(params.frame_seconds * SAMPLE_RATE)
    return lambda: pcm_chunks(Path(leg), chunk_bytes)


def measured(source: Source, params: VadParams) -> LegAudio:
    """The first pass: levels, hash, clipping (and webrtc's decisions)."""
    meter = _Meter(params)
    for data in source():
        meter.feed(data)
    return meter.finish()


def listened(leg: LegAudio, source: Source, params: VadParams, skip: Mask | None) -> LegAudio:
    """The second pass, for silero: the network's probabilities (not where `skip` says)."""
    if params.method != "silero":
        return leg
    frame = round(leg.frame_seconds * SAMPLE_RATE)
    samples = round(leg.duration_seconds * SAMPLE_RATE)
    found = network_pass(source(), leg.frame_db, frame, samples, params, skip)
    return dataclasses.replace(
        leg,
        frame_probability=found.probability,
        music_frames=round(found.music_seconds / leg.frame_seconds),
    )


def analyse_wav(path: Path, params: VadParams = DEFAULT_PARAMS) -> LegAudio:
    """A 16 kHz mono s16le WAV read in chunks (twice for silero: the network's pass needs the
    leg's floor): memory does not grow with its length."""
    source = source_of(path, params)
    return listened(measured(source, params), source, params, None)


def analyse_pcm(samples: npt.NDArray[np.int16], params: VadParams = DEFAULT_PARAMS) -> LegAudio:
    """The same analysis of int16 samples already in memory (tests, the benchmark)."""
    source = source_of(samples, params)
    return listened(measured(source, params), source, params, None)
