"""Who spoke when on each leg of a call: speech detection, crosstalk suppression, quality flags.

Pure functions over 16 kHz mono 16-bit audio; no database, no HTTP. One pass over a leg's WAV
(`analyse_wav`, read in chunks) yields its level per 10 ms frame, the hash of its samples and
its clipping; everything else works on those levels.

The detector is an energy detector with hysteresis, adapted to each leg: a stretch of frames
above the leg's noise floor by `continue_db` is speech when one of its frames rises above the
floor by `start_db` (and above `min_level_dbfs`, so a silent leg stays silent). On a two-leg
call a frame counts for a leg only where that leg is clearly the source: its level is not more
than `crosstalk_margin_db` below the other leg's loudest frame of the last `echo_seconds`, so
the other party's voice leaking into the line (typically 20-30 dB down) and its echo do not
count, while both parties talking at once count on both legs. Turns then follow the NIST RT
convention: pauses shorter than `min_gap` inside a turn are bridged, speech shorter than
`min_speech` is dropped.
"""

from __future__ import annotations

import hashlib
import wave
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

Segment = tuple[float, float]

SAMPLE_RATE = 16000
FULL_SCALE = 32768.0
SILENCE_DB = -120.0  # the level given to digital silence
CHUNK_FRAMES = 6000  # one minute of 10 ms frames per read


@dataclass(frozen=True)
class VadParams:
    """Every knob of the detector; recorded with the labels as their provenance."""

    frame_seconds: float = 0.01
    floor_percentile: float = 10.0  # the leg's noise floor: this percentile of its frame levels
    lowest_floor_dbfs: float = -75.0
    start_db: float = 15.0  # a turn starts this far above the floor ...
    continue_db: float = 9.0  # ... and lasts while the level stays this far above it
    min_level_dbfs: float = -50.0  # nothing quieter than this starts a turn
    smooth_frames: int = 5  # levels averaged over this many frames (50 ms)
    pad_seconds: float = 0.05  # turns widened by this much on each side (soft onsets, tails)
    crosstalk_margin_db: float = 12.0
    echo_seconds: float = 0.25
    min_gap: float = 0.3  # NIST RT: shorter pauses stay inside the turn
    min_speech: float = 0.2  # shorter speech is dropped
    no_speech_share: float = 0.02  # a leg with speech below this share of its length is flagged
    leak_kept_share: float = 0.2  # a leg keeping less of its own detection than this is a leak
    clipping_share: float = 0.001  # a leg with more clipped samples than this is flagged


DEFAULT_PARAMS = VadParams()
DETECTOR = "energy-hysteresis"
DETECTOR_VERSION = 1


@dataclass(frozen=True)
class LegAudio:
    """What one pass over one leg's audio yields."""

    frame_db: np.ndarray  # float32 level per frame, dBFS
    frame_seconds: float
    duration_seconds: float
    pcm_sha256: str  # of the samples only, not the file's header
    clipped_share: float  # samples at or within one step of full scale
    peak_dbfs: float


class _Accumulator:
    """Frame levels, hash, clipping and peak over samples given in pieces."""

    def __init__(self, frame: int) -> None:
        self.frame = frame
        self.digest = hashlib.sha256()
        self.levels: list[np.ndarray] = []
        self.rest = np.zeros(0, dtype=np.int16)
        self.samples = self.clipped = self.peak = 0

    def add(self, chunk: np.ndarray) -> None:
        self.digest.update(chunk.astype("<i2", copy=False).tobytes())
        self.samples += len(chunk)
        if len(chunk):
            high, low = int(chunk.max()), int(chunk.min())
            if high >= 32766 or low <= -32767:
                self.clipped += int(np.count_nonzero(chunk >= 32766))
                self.clipped += int(np.count_nonzero(chunk <= -32767))
            self.peak = max(self.peak, high, -low)
        joined = np.concatenate([self.rest, chunk]) if len(self.rest) else chunk
        whole = len(joined) // self.frame * self.frame
        self.rest = joined[whole:].copy()
        if whole:
            frames = joined[:whole].astype(np.float32).reshape(-1, self.frame)
            power = np.einsum("ij,ij->i", frames, frames) / (self.frame * FULL_SCALE**2)
            self.levels.append(_db(power))

    def result(self, frame_seconds: float) -> LegAudio:
        if len(self.rest):
            tail = self.rest.astype(np.float32) / FULL_SCALE
            self.levels.append(_db(np.array([float(tail @ tail) / len(tail)], dtype=np.float32)))
        levels = np.concatenate(self.levels) if self.levels else np.zeros(0, dtype=np.float32)
        return LegAudio(
            frame_db=levels.astype(np.float32),
            frame_seconds=frame_seconds,
            duration_seconds=self.samples / SAMPLE_RATE,
            pcm_sha256=self.digest.hexdigest(),
            clipped_share=self.clipped / self.samples if self.samples else 0.0,
            peak_dbfs=float(_db(np.array([(self.peak / FULL_SCALE) ** 2]))[0]),
        )


def _db(power: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        levels: np.ndarray = np.maximum(10 * np.log10(power), SILENCE_DB).astype(np.float32)
    return levels


def analyse_wav(path: Path, params: VadParams = DEFAULT_PARAMS) -> LegAudio:
    """One pass over a 16 kHz mono 16-bit WAV, a minute at a time (memory stays flat)."""
    frame = round(params.frame_seconds * SAMPLE_RATE)
    acc = _Accumulator(frame)
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path.name} is not 16 kHz mono 16-bit")
        while data := wav.readframes(CHUNK_FRAMES * frame):
            acc.add(np.frombuffer(data, dtype="<i2"))
    return acc.result(params.frame_seconds)


def analyse_pcm(samples: np.ndarray, params: VadParams = DEFAULT_PARAMS) -> LegAudio:
    """The same as `analyse_wav`, for samples already in memory (int16)."""
    acc = _Accumulator(round(params.frame_seconds * SAMPLE_RATE))
    acc.add(np.asarray(samples, dtype=np.int16))
    return acc.result(params.frame_seconds)


def _smoothed(levels: np.ndarray, frames: int) -> np.ndarray:
    if frames <= 1 or len(levels) < frames:
        return levels
    power = np.power(10.0, levels.astype(np.float64) / 10)
    kernel = np.ones(frames) / frames
    return _db(np.convolve(power, kernel, mode="same"))


def _floor(levels: np.ndarray, params: VadParams) -> float:
    """The leg's noise floor; pauses of digital silence (VoIP without comfort noise) count
    as the quietest a line gets, `lowest_floor_dbfs`."""
    if not len(levels):
        return params.lowest_floor_dbfs
    return max(float(np.percentile(levels, params.floor_percentile)), params.lowest_floor_dbfs)


def _hysteresis(levels: np.ndarray, floor: float, params: VadParams) -> np.ndarray:
    """Frames inside a run above `floor + continue_db` that reaches `floor + start_db`."""
    start = max(floor + params.start_db, params.min_level_dbfs)
    keep = levels >= max(floor + params.continue_db, params.min_level_dbfs - 6)
    strong = levels >= start
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    result = np.zeros(len(levels), dtype=bool)
    for begin, end in zip(edges[0::2], edges[1::2], strict=True):
        if strong[begin:end].any():
            result[begin:end] = True
    return result


def _segments(active: np.ndarray, leg: LegAudio, params: VadParams) -> list[Segment]:
    """Runs of active frames as turns: pauses shorter than `min_gap` bridged and speech shorter
    than `min_speech` dropped (both judged on the detected frames), then each turn padded."""
    step = leg.frame_seconds
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    runs: list[list[float]] = []
    for begin, end in zip(edges[0::2], edges[1::2], strict=True):
        if runs and begin * step - runs[-1][1] < params.min_gap:
            runs[-1][1] = end * step
        else:
            runs.append([begin * step, end * step])
    turns: list[list[float]] = []
    for a, b in runs:
        if b - a < params.min_speech:
            continue
        a, b = max(a - params.pad_seconds, 0.0), min(b + params.pad_seconds, leg.duration_seconds)
        if turns and a <= turns[-1][1]:
            turns[-1][1] = b
        else:
            turns.append([a, b])
    return [(round(float(a), 3), round(float(b), 3)) for a, b in turns]


def _own_activity(leg: LegAudio, params: VadParams) -> np.ndarray:
    levels = _smoothed(leg.frame_db, params.smooth_frames)
    return _hysteresis(levels, _floor(levels, params), params)


def detect_speech(leg: LegAudio, params: VadParams = DEFAULT_PARAMS) -> list[Segment]:
    """One leg's speech turns, the leg alone."""
    return _segments(_own_activity(leg, params), leg, params)


def _recent_max(levels: np.ndarray, frames: int) -> np.ndarray:
    """Each frame's loudest level over itself and the `frames` before it (echo arrives late)."""
    result = levels.copy()
    for shift in range(1, frames + 1):
        result[shift:] = np.maximum(result[shift:], levels[:-shift])
    return result


def _clear_source(leg: LegAudio, other: LegAudio, params: VadParams) -> np.ndarray:
    """Frames where `leg` is not merely a leak or an echo of `other`."""
    own = _smoothed(leg.frame_db, params.smooth_frames)
    theirs = _smoothed(other.frame_db, params.smooth_frames)
    length = len(own)
    padded = np.full(length, SILENCE_DB, dtype=np.float32)
    padded[: min(length, len(theirs))] = theirs[:length]
    window = round(params.echo_seconds / leg.frame_seconds)
    return own >= _recent_max(padded, window) - params.crosstalk_margin_db


def _labelled(
    legs: Mapping[str, LegAudio], params: VadParams
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per leg: its own activity, and the activity it keeps once crosstalk is taken out."""
    own = {label: _own_activity(leg, params) for label, leg in legs.items()}
    if len(legs) != 2:
        return {label: (active, active) for label, active in own.items()}
    (first, a), (second, b) = legs.items()
    return {
        first: (own[first], own[first] & _clear_source(a, b, params)),
        second: (own[second], own[second] & _clear_source(b, a, params)),
    }


def label_legs(
    legs: Mapping[str, LegAudio], params: VadParams = DEFAULT_PARAMS
) -> dict[str, list[Segment]]:
    """Each leg's turns; with two legs, crosstalk and echo between them suppressed."""
    return {
        label: _segments(kept, legs[label], params)
        for label, (_, kept) in _labelled(legs, params).items()
    }


def speech_seconds(segments: Sequence[Segment]) -> float:
    return round(sum(b - a for a, b in segments), 3)


def overlap_seconds(a: Sequence[Segment], b: Sequence[Segment]) -> float:
    """Time covered by a turn of `a` and a turn of `b` at once (both lists sorted)."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return round(total, 3)


def provenance(params: VadParams = DEFAULT_PARAMS) -> dict[str, object]:
    """Which detector, which version, which parameters: stored beside every label."""
    return {"detector": DETECTOR, "version": DETECTOR_VERSION, **asdict(params)}


def _same_audio(a: LegAudio, b: LegAudio) -> bool:
    if a.pcm_sha256 == b.pcm_sha256:
        return True
    n = min(len(a.frame_db), len(b.frame_db))
    if n == 0 or abs(len(a.frame_db) - len(b.frame_db)) > 1:
        return False
    x, y = a.frame_db[:n], b.frame_db[:n]
    sounding = (x > SILENCE_DB) | (y > SILENCE_DB)
    return bool(sounding.any()) and float(np.median(np.abs(x - y)[sounding])) < 0.5


def quality_flags(
    legs: Mapping[str, LegAudio],
    labels: Mapping[str, Sequence[Segment]],
    params: VadParams = DEFAULT_PARAMS,
) -> dict[str, str]:
    """Reason -> detail for what makes a conversation doubtful as a training example."""
    flags: dict[str, list[str]] = {}
    for label, leg in legs.items():
        spoken = speech_seconds(labels.get(label, []))
        if leg.duration_seconds and spoken < params.no_speech_share * leg.duration_seconds:
            flags.setdefault("no_speech", []).append(
                f"{label} has {spoken:.1f} s of speech in {leg.duration_seconds:.1f} s"
            )
        if leg.clipped_share > params.clipping_share:
            flags.setdefault("clipping", []).append(
                f"{label} clips on {leg.clipped_share:.2%} of its samples"
            )
    if len(legs) == 2:
        (first, a), (second, b) = legs.items()
        if _same_audio(a, b):
            flags.setdefault("same_audio", []).append(f"{first} and {second} are the same audio")
        else:
            for label, (own, kept) in _labelled(legs, params).items():
                own_count = int(own.sum())
                share = int(kept.sum()) / own_count if own_count else 1.0
                if own_count * legs[label].frame_seconds >= 1.0 and share < params.leak_kept_share:
                    flags.setdefault("leak", []).append(
                        f"{label} is mostly the other leg's voice: {share:.0%} of its sound "
                        "is its own"
                    )
    return {reason: "; ".join(details) for reason, details in flags.items()}
