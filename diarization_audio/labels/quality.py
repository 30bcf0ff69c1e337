"""The measures a team filters on: each leg's SNR and music share, and the flags they raise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from diarization_audio.labels.activity import (
    DEFAULT_PARAMS,
    LegAudio,
    VadParams,
    detect_speech,
)
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
