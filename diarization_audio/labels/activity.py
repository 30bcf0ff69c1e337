"""Speech activity per call leg: the detector's frame decisions, crosstalk suppression between
the two legs, and the turn rules, made from the measures of each leg's analysis
(labels/analysis.py).

The default detector is Silero's network, heard only where the party's own level stands out;
`VadParams(method="energy")` is an energy detector with hysteresis over an adaptive noise
floor, and `VadParams(method="webrtc")` uses WebRTC's GMM detector for the frame decisions.
With two legs, a frame of one leg counts only where that leg is clearly the source: its level
must stand `crosstalk_margin_db` above what the other leg's recent level (the echo window)
would leak into it, the coupling being measured on the call itself. Then pauses shorter than
`min_gap` are bridged and speech shorter than `min_speech` is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from diarization_audio.labels.analysis import Leg, LegAudio, listened, measured, source_of
from diarization_audio.labels.params import DEFAULT_PARAMS, Frames, Mask, VadParams, widened
from diarization_audio.wav import Segment


def analyse_call(
    legs: Mapping[str, Leg], params: VadParams = DEFAULT_PARAMS
) -> dict[str, LegAudio]:
    """Every leg of one call, for `label_legs`. For silero, the network is not run where a
    leg's level is the other leg's leak (by the levels alone): those frames would be taken
    away as crosstalk anyway, and on a leaking line they are a third of the cost."""
    sources = {name: source_of(leg, params) for name, leg in legs.items()}
    levels = {name: measured(source, params) for name, source in sources.items()}
    skip: dict[str, Mask] = {}
    if params.method == "silero" and len(levels) > 1:
        energy = dataclasses.replace(params, method="energy")
        masks = {name: _energy_mask(leg.frame_db, energy) for name, leg in levels.items()}
        skip = {name: others_leak(levels, masks, name, energy) for name in levels}
    return {
        name: listened(leg, sources[name], params, skip.get(name)) for name, leg in levels.items()
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
    alone = heard & ~own & ~widened(own, reach)
    if not own.any() or np.count_nonzero(alone) < params.second_voice_share * np.count_nonzero(own):
        return own
    second = float(np.median(leg.frame_db[alone]))
    width = max(1, round(params.second_voice_smoothing / leg.frame_seconds))
    return own & (_mean_db(leg.frame_db, width) >= second + params.second_voice_margin_db)


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


def frame_mask(leg: LegAudio, params: VadParams) -> Mask:
    """One leg's frames as its detector decides them, before crosstalk and the turn rules."""
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
    return _segments(_own_voice(frame_mask(leg, params), leg, params), leg, params)


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


def others_leak(
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
    masks = {name: frame_mask(leg, params) for name, leg in legs.items()}
    labels = {}
    for name, leg in legs.items():
        mask = masks[name] & ~others_leak(legs, masks, name, params)
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
