"""What a telephone line does to a call: the conditions, and each leg as the service gets it.

Each leg is degraded, encoded with the condition's codec if any, and converted by the
service's own ffmpeg invocation.

Levels are RMS in dB relative to full scale (a full-scale sine is -3 dBFS). Each condition adds
to each leg, from a random stream of its own per call, effect and leg, so a call under
`combined` carries the same hum as under `hum`:

- clean: the arrangement alone.
- leak+echo: the other leg's speech at -30..-20 dB, and again 50-250 ms later 3-8 dB lower.
- noise-step: white or pink hiss at -50 dBFS until 0.3-1.0 s after the first word (7.3-9 s
  into the call), then -65.
- noise-drift: hiss whose level follows a slow sine (period 20-40 s) between -65 and -45 dBFS.
- hum: 50 Hz and its harmonics up to 300 Hz, falling 1/k, at -40 dBFS, over hiss at -70.
- music-on-hold: a piece of an opsound MOH file at -20 dBFS over the agent leg's hold; the
  customer leg waits in room noise at -65 dBFS.
- tones: North American ringback (440+480 Hz, 2 s on, 4 s off) on the agent leg in the 7-8 s
  before the first word (two rings, answered during the second), and 4-10 DTMF digits (100 ms
  on, 100 ms off) on the customer leg in the keypad pause, each at -15..-10 dBFS.
- background-voice: another voice talking on and on behind the customer, 25 dB below the
  customer's speech.
- mulaw, amrnb: the clean legs through 8 kHz G.711 mu-law or AMR-NB 12.2 kbit/s.
- combined: leak+echo, noise-step, hum, music-on-hold, tones and background-voice, then AMR-NB.

Every call has its ringback lead-in, its hold and its keypad pause whatever the condition
(silence where nothing is added), so the speech and the reference are the same in every
condition and the conditions' scores compare.

The non-speech spans of a leg are where a condition put a sound a detector might take for
speech (hiss at -50 dBFS, the whole leg under drift or hum, the music, ringback and DTMF) and
the leg's reference speech, widened by the scorer's 0.25 s collar, is not. Voices (leak, echo,
background) are speech, not non-speech sounds: they count as false alarm in the DER instead.
"""

from __future__ import annotations

import asyncio
import subprocess
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.call_sources import (
    ACTIVE_DBFS,
    CUSTOMER_VOICES,
    RATE,
    Signal,
    Spans,
    fade,
    merge,
    moh_piece,
    subtract,
    turns,
)
from diarization_audio.ingest.ffmpeg import bundled_ffmpeg, resolve_ffmpeg, run_ffmpeg

LEGS = ("agent", "customer")
COLLAR = 0.25  # seconds, the scorer's: boundary slop is not a false alarm on non-speech
CODECS = {  # 8 kHz telephone codecs the bundled ffmpeg can encode (it has no GSM encoder)
    "mulaw": (".wav", ("-ar", "8000", "-c:a", "pcm_mulaw", "-f", "wav")),
    "amrnb": (".amr", ("-ar", "8000", "-c:a", "libopencore_amrnb", "-b:a", "12.2k", "-f", "amr")),
}
EFFECTS = ("leak+echo", "noise-step", "noise-drift", "hum", "music-on-hold", "tones",
           "background-voice")  # fmt: skip
CONDITIONS: dict[str, tuple[tuple[str, ...], str | None]] = {  # name: (effects, codec)
    "clean": ((), None),
    **{effect: ((effect,), None) for effect in EFFECTS},
    "mulaw": ((), "mulaw"),
    "amrnb": ((), "amrnb"),
    "combined": (
        ("leak+echo", "noise-step", "hum", "music-on-hold", "tones", "background-voice"),
        "amrnb",
    ),
}
DTMF = {"1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "4": (770, 1209),
        "5": (770, 1336), "6": (770, 1477), "7": (852, 1209), "8": (852, 1336),
        "9": (852, 1477), "*": (941, 1209), "0": (941, 1336), "#": (941, 1477)}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Call:
    """Each leg's own speech alone, where it speaks, and the call's stretches without words."""

    call_id: str
    seed: int
    voices: dict[str, str]  # leg -> voice (call_sources.VOICES)
    legs: dict[str, Signal]
    reference: dict[str, Spans]  # leg -> sorted speech spans, seconds
    lead_in: float  # no one speaks before this: the ringback's place
    hold: tuple[float, float]  # both parties silent: the music on hold's place
    keypad: tuple[float, float]  # both parties silent: the DTMF digits' place

    @property
    def duration(self) -> float:
        return self.legs[LEGS[0]].size / RATE


@dataclass(frozen=True)
class Sample:
    """One call under one condition, as the service would label it, with what to score against."""

    call_id: str
    condition: str
    files: dict[str, Path]  # leg -> 16 kHz mono WAV written by the service's conversion
    reference: dict[str, Spans]
    non_speech: dict[str, Spans]  # leg -> where a non-speech sound is and speech is not
    duration: float


def dbfs_gain(samples: Signal, dbfs: float) -> Signal:
    """`samples` scaled to an RMS level of `dbfs`."""
    rms = float(np.sqrt(np.mean(samples**2)))
    return samples * (10 ** (dbfs / 20) / rms) if rms > 0 else samples


def hiss(rng: np.random.Generator, size: int) -> Signal:
    """White or pink noise of unit power."""
    spectrum = np.fft.rfft(rng.standard_normal(size))
    if rng.random() < 0.5:
        spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(size, 1 / RATE), 20.0))
    noise = np.fft.irfft(spectrum, size)
    return np.asarray(noise / np.sqrt(np.mean(noise**2)))


def _seconds(start: float, end: float) -> slice:
    return slice(round(start * RATE), round(end * RATE))


def _samples(start: float, end: float) -> int:
    """How many samples `_seconds(start, end)` holds (rounding each end, as it does)."""
    return round(end * RATE) - round(start * RATE)


def _tone(frequencies: tuple[float, ...], samples: int, dbfs: float) -> Signal:
    t = np.arange(samples) / RATE
    return dbfs_gain(np.sin(2 * np.pi * np.outer(frequencies, t)).sum(axis=0), dbfs)


Added = tuple[Signal, Spans]  # what an effect adds to a leg, and where its non-speech sound is
Effect = Callable[[Call, str, np.random.Generator], Added]


def _leak_echo(call: Call, leg: str, rng: np.random.Generator) -> Added:
    other = call.legs[LEGS[1 - LEGS.index(leg)]]
    leak_db = rng.uniform(-30.0, -20.0)
    echo_db = leak_db - rng.uniform(3.0, 8.0)
    shift = round(rng.uniform(0.05, 0.25) * RATE)
    echo = np.concatenate((np.zeros(shift), other[: other.size - shift]))
    return 10 ** (leak_db / 20) * other + 10 ** (echo_db / 20) * echo, []


def _noise_step(call: Call, leg: str, rng: np.random.Generator) -> Added:
    step = rng.uniform(call.lead_in + 0.3, call.lead_in + 1.0)
    level = np.full(call.legs[leg].size, 10 ** (-65 / 20))
    level[_seconds(0.0, step)] = 10 ** (-50 / 20)
    return hiss(rng, level.size) * level, [(0.0, step)]


def _noise_drift(call: Call, leg: str, rng: np.random.Generator) -> Added:
    size = call.legs[leg].size
    t = np.arange(size) / RATE
    level_db = -55.0 + 10.0 * np.sin(2 * np.pi * t / rng.uniform(20.0, 40.0) + rng.uniform(0, 6.3))
    return hiss(rng, size) * 10 ** (level_db / 20), [(0.0, call.duration)]


def _hum(call: Call, leg: str, rng: np.random.Generator) -> Added:
    size = call.legs[leg].size
    t = np.arange(size) / RATE
    hum = np.zeros(size)
    for k in range(1, 7):
        hum += np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.3)) / k
    added = dbfs_gain(hum, -40.0) + dbfs_gain(hiss(rng, size), -70.0)
    return added, [(0.0, call.duration)]


def _music_on_hold(call: Call, leg: str, rng: np.random.Generator) -> Added:
    added = np.zeros(call.legs[leg].size)
    start, end = call.hold[0] + 0.3, call.hold[1] - 0.3
    if leg == "customer":
        added[_seconds(start, end)] = dbfs_gain(hiss(rng, _samples(start, end)), -65.0)
        return added, []
    _, music = moh_piece(rng, end - start)
    at = round(start * RATE)
    added[at : at + music.size] = fade(dbfs_gain(music, -20.0), 0.05)
    return added, [(start, end)]


def _tones(call: Call, leg: str, rng: np.random.Generator) -> Added:
    added = np.zeros(call.legs[leg].size)
    dbfs = rng.uniform(-15.0, -10.0)
    if leg == "agent":
        # Rings start every 6 s; the call is answered during the last one.
        spans = [(s, min(s + 2.0, call.lead_in - 0.3)) for s in (0.0, 6.0) if s < call.lead_in - 1]
        for start, end in spans:
            added[_seconds(start, end)] = _tone((440.0, 480.0), _samples(start, end), dbfs)
        return added, spans
    digits = rng.choice(list(DTMF), size=int(rng.integers(4, 11)))
    first = call.keypad[0] + 0.3
    for i, digit in enumerate(digits):
        at = round((first + 0.2 * i) * RATE)
        tone = _tone(DTMF[str(digit)], round(0.1 * RATE), dbfs)
        added[at : at + tone.size] = tone
    return added, [(first, first + 0.2 * len(digits) - 0.1)]


def _background_voice(call: Call, leg: str, rng: np.random.Generator) -> Added:
    added = np.zeros(call.legs[leg].size)
    if leg == "agent":
        return added, []
    voices = [v for v in CUSTOMER_VOICES if v != call.voices[leg]]
    pool = turns(str(rng.choice(voices)))
    at = round(rng.uniform(0.0, 2.0) * RATE)
    while at < added.size:
        piece = pool[int(rng.integers(len(pool)))].samples[: added.size - at]
        added[at : at + piece.size] += piece
        at += piece.size + round(rng.uniform(0.2, 0.8) * RATE)
    # Clips speak at ACTIVE_DBFS; the leg's speech sits where its own gain put it.
    own = np.concatenate([call.legs[leg][_seconds(s, e)] for s, e in call.reference[leg]])
    own_dbfs = 10 * np.log10(np.mean(own**2))
    return added * 10 ** ((own_dbfs - 25.0 - ACTIVE_DBFS) / 20), []


EFFECT_FUNCTIONS: dict[str, Effect] = {
    "leak+echo": _leak_echo,
    "noise-step": _noise_step,
    "noise-drift": _noise_drift,
    "hum": _hum,
    "music-on-hold": _music_on_hold,
    "tones": _tones,
    "background-voice": _background_voice,
}


def degrade(call: Call, condition: str) -> tuple[dict[str, Signal], dict[str, Spans]]:
    """Each leg under `condition` before any codec, and each leg's non-speech spans."""
    effects, _ = CONDITIONS[condition]
    legs = {leg: audio.copy() for leg, audio in call.legs.items()}
    regions: dict[str, Spans] = {leg: [] for leg in LEGS}
    for effect in effects:
        for leg in LEGS:
            rng = np.random.default_rng([call.seed, EFFECTS.index(effect), LEGS.index(leg)])
            added, region = EFFECT_FUNCTIONS[effect](call, leg, rng)
            legs[leg] += added
            regions[leg] += region
    speech = {leg: [(s - COLLAR, e + COLLAR) for s, e in call.reference[leg]] for leg in LEGS}
    return legs, {leg: subtract(merge(regions[leg]), speech[leg]) for leg in LEGS}


def write_wav(path: Path, samples: Signal) -> Path:
    """`samples` as a 16 kHz mono s16le WAV."""
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm.tobytes())
    return path


def line_encoder() -> str:
    """The ffmpeg that plays the telephone network: always the bundled one, which encodes
    every codec of CODECS (Debian's ffmpeg, which the service prefers, has no AMR-NB
    encoder), so the degraded calls are the same whichever ffmpeg converts them."""
    return bundled_ffmpeg()


def convert_legs(legs: dict[str, Signal], codec: str | None, directory: Path) -> dict[str, Path]:
    """Each leg written, encoded with `codec` (a key of CODECS) if any, then converted to
    16 kHz mono WAV by the service's own ffmpeg invocation; returns leg -> converted WAV."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = resolve_ffmpeg(None)
    converted = {}
    for leg, samples in legs.items():
        source = write_wav(directory / f"{leg}_source.wav", samples)
        if codec is not None:
            suffix, args = CODECS[codec]
            encoded = directory / f"{leg}_encoded{suffix}"
            subprocess.run(
                [line_encoder(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                 "-i", f"file:{source}", "-ac", "1", *args, f"file:{encoded}"],
                check=True,
            )  # fmt: skip
            source = encoded
        target = directory / f"{leg}.wav"
        asyncio.run(run_ffmpeg(binary, source, target, max_seconds=24 * 3600, timeout=600))
        converted[leg] = target
    return converted


def prepare(call: Call, condition: str, directory: Path) -> Sample:
    """`call` under `condition`, each leg written to `directory` as the service would convert
    it, with its reference and its non-speech spans."""
    legs, non_speech = degrade(call, condition)
    files = convert_legs(legs, CONDITIONS[condition][1], directory)
    return Sample(call.call_id, condition, files, call.reference, non_speech, call.duration)


def leg_files(call: Call, condition: str, directory: Path) -> dict[str, Path]:
    """Each leg of `call` under `condition`, encoded as the condition says, then converted to
    16 kHz mono WAV by the service's own ffmpeg invocation; returns leg -> converted WAV."""
    return prepare(call, condition, directory).files
