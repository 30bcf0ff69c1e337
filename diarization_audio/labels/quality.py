"""Reasons to distrust a call's labels: each leg's SNR and music share (the measures a team
filters on) and the flags of the call (no speech, the same audio on both legs, a leg that is
mostly the other's voice, clipping, low SNR, music)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from diarization_audio.labels.activity import (
    detect_speech,
    frame_mask,
    others_leak,
    speech_seconds,
)
from diarization_audio.labels.analysis import LegAudio
from diarization_audio.labels.params import DEFAULT_PARAMS, VadParams
from diarization_audio.wav import Segment

FLAG_LOW_SNR = "low_snr"
FLAG_MUSIC = "music"


@dataclass(frozen=True)
class LegQuality:
    snr_db: float | None  # speech level over the leg's noise floor, dB; None: no speech on the leg
    music_share: float  # share of the leg's duration that is music or tones (sustained non-speech)


@dataclass(frozen=True)
class QualityThresholds:
    """Where the flags start; from LOW_SNR_DB and MUSIC_FLAG_SHARE."""

    low_snr_db: float
    music_share: float


def _mask(leg: LegAudio, segments: Sequence[Segment]) -> npt.NDArray[np.bool_]:
    inside = np.zeros(leg.frame_db.size, np.bool_)
    for start, end in segments:
        inside[round(start / leg.frame_seconds) : round(end / leg.frame_seconds)] = True
    return inside


def leg_quality(
    leg: LegAudio, segments: Sequence[Segment], params: VadParams = DEFAULT_PARAMS
) -> LegQuality:
    """A leg's SNR and music share, from the frame levels its analysis already holds.

    The SNR is broadband (levels without the detector's pre-emphasis): the mean power of the
    frames inside `segments` (the leg's labels) over the noise floor, the
    median level of the frames where the leg's detector hears nothing even alone (so neither
    the other party's leak nor speech that crosstalk suppression took counts as noise) and that
    are not digital silence; where most of those frames are digital silence (a line that
    sends nothing between words), the leg's 10th-percentile level.
    """
    levels = leg.raw_db.astype(np.float64)
    inside = _mask(leg, segments)
    heard = inside | _mask(leg, detect_speech(leg, params))
    silence_dbfs = params.silence_dbfs
    music_seconds = leg.music_frames * leg.frame_seconds
    music_share = 0.0
    if leg.duration_seconds > 0:
        music_share = round(min(1.0, music_seconds / leg.duration_seconds), 3)
    if not inside.any():
        return LegQuality(None, music_share)
    speech = 10 * np.log10(np.mean(10 ** (levels[inside] / 10)))
    outside = levels[~heard]
    audible = outside[outside > silence_dbfs + 1]
    if audible.size and audible.size >= outside.size / 2:
        floor = float(np.median(audible))
    elif outside.size:
        floor = float(np.percentile(levels, 10))
    else:  # all speech: nothing to measure the noise on
        return LegQuality(None, music_share)
    return LegQuality(round(float(speech) - floor, 1), music_share)


def quality_flags_of(
    qualities: Mapping[str, LegQuality], low_snr_db: float, music_share: float
) -> dict[str, str]:
    """`low_snr`: a leg's SNR under `low_snr_db`; `music`: a leg with more than `music_share`
    of music or tones. Each with a human detail naming the legs."""
    low = [f"{name}: {q.snr_db:.1f} dB" for name, q in qualities.items()
           if q.snr_db is not None and q.snr_db < low_snr_db]  # fmt: skip
    music = [f"{name}: {q.music_share:.0%} music or tones" for name, q in qualities.items()
             if q.music_share > music_share]  # fmt: skip
    found = {FLAG_LOW_SNR: "; ".join(low), FLAG_MUSIC: "; ".join(music)}
    return {reason: detail for reason, detail in found.items() if detail}


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
    masks = {other: frame_mask(leg, view) for other, leg in legs.items()}
    explained = others_leak(legs, masks, name, view)
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
