"""Two-leg calls whose speech is known exactly, for the speech-activity tests and benchmark.

Sentences are spoken by espeak-ng at run time and placed at chosen times on each leg: turns
alternate, some overlap, the listener sometimes says a short word in the middle of the other's
turn. The truth is each placed utterance's span trimmed to where its audio is not silent. The
conditions add what real calls add (the other leg's voice leaking in with a delayed echo,
background noise, 8 kHz telephone codecs), and every leg then goes through the service's own
ffmpeg conversion to 16 kHz mono before it is labelled.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
from pyannote.core import Annotation, Segment, Timeline  # type: ignore[import-untyped]
from pyannote.metrics.diarization import DiarizationErrorRate

from bench.call_conditions import CODECS, convert_legs
from diarization_audio.ingest.ffmpeg import resolve_ffmpeg
from diarization_audio.wav import SAMPLE_RATE as TARGET_SAMPLE_RATE

RATE = TARGET_SAMPLE_RATE
LEGS = ("agent", "customer")
Signal = npt.NDArray[np.float64]
Spans = list[tuple[float, float]]

SENTENCES = (
    "Thank you for calling customer service my name is Alex",
    "I would like to check the status of my order please",
    "Sure let me look that up for you",
    "Can you give me the order number",
    "It starts with four seven two and ends with nine",
    "I see it here the package left our warehouse yesterday",
    "That is great news when should it arrive",
    "It should be delivered by Thursday afternoon",
    "Is there anything else I can help you with today",
    "Actually I also wanted to update my billing address",
    "No problem what is the new address",
    "It is twelve Maple Street in Springfield",
    "I have updated that for you",
    "Will the change apply to my next invoice",
    "Yes it will apply from the next billing cycle",
    "Perfect that is all I needed",
    "The technician will call you before the visit",
    "My internet connection keeps dropping every evening",
    "Have you tried restarting the router",
    "I did that twice and it did not help",
)
BACKCHANNELS = ("yes", "okay", "right", "I see", "sure")
VOICES = {"agent": ("en-us", "en+m3", "en-gb"), "customer": ("en+f3", "en-us+f2", "en+f4")}

CONDITIONS = ("clean", "leak", "noise", "mulaw", "amrnb", "leak+noise+amrnb")
# Beyond the targets: other people talking near the phone, which no level detector can tell
# from the caller (the benchmark reports it so the weakness stays in view).
EXTRA_CONDITIONS = ("babble",)
BABBLE_VOICES = ("en-gb-scotland", "en-029", "en-gb-x-rp+f2")


def espeak_binary() -> str:
    found = shutil.which("espeak-ng")
    if found is None:
        raise RuntimeError("espeak-ng is not installed (make system-packages installs it)")
    return found


@lru_cache(maxsize=256)
def speak(text: str, voice: str) -> Signal:
    """`text` spoken by espeak-ng in `voice`, as 16 kHz float samples scaled to full scale 1."""
    spoken = subprocess.run(
        [espeak_binary(), "-v", voice, "--stdout", text], capture_output=True, check=True
    ).stdout
    pcm = subprocess.run(
        [resolve_ffmpeg(None), "-nostdin", "-hide_banner", "-loglevel", "error",
         "-f", "wav", "-i", "pipe:0", "-ac", "1", "-ar", str(RATE), "-f", "s16le", "pipe:1"],
        input=spoken, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0


def spoken_turns(seconds: float, turn: float, first_turn: int, voice: str) -> Signal:
    """`seconds` of one speaker taking every other turn of `turn` seconds (from turn
    `first_turn`), each filled with speech, silent between; 16 kHz, peaks at -6 dBFS."""
    talk = np.concatenate([speak(text, voice) for text in SENTENCES[:3]])
    talk *= 0.5 / np.abs(talk).max()
    samples = np.zeros(round(seconds * RATE))
    for index, start in enumerate(range(first_turn, int(seconds / turn), 2)):
        first = round(start * turn * RATE)
        last = min(first + round(turn * RATE), samples.size)
        samples[first:last] = np.roll(talk, -index * RATE)[: last - first]
    return samples


def audible_span(samples: Signal, below_peak_db: float = 40.0) -> tuple[int, int]:
    """First and last sample of the 10 ms frames within `below_peak_db` of the loudest one."""
    frame = RATE // 100
    count = samples.size // frame
    power = (samples[: count * frame].reshape(count, frame) ** 2).mean(axis=1)
    loud = np.flatnonzero(power >= power.max() * 10 ** (-below_peak_db / 10))
    return int(loud[0]) * frame, (int(loud[-1]) + 1) * frame


@dataclass
class Call:
    """Each leg's own voice alone, and the truth: where each leg speaks, in seconds."""

    seed: int
    legs: dict[str, Signal]
    truth: dict[str, Spans]

    @property
    def duration(self) -> float:
        return self.legs[LEGS[0]].size / RATE


def make_call(seed: int, seconds: float = 60.0) -> Call:
    """A call of about `seconds`: alternating turns, pauses, overlaps and backchannels."""
    rng = np.random.default_rng(seed)
    voices = {leg: str(rng.choice(VOICES[leg])) for leg in LEGS}
    gains = {leg: 10 ** (rng.uniform(-12.0, -3.0) / 20) for leg in LEGS}
    placed: list[tuple[str, float, Signal]] = []
    free = dict.fromkeys(LEGS, 0.0)  # when each leg may speak again
    t, turn = rng.uniform(0.3, 1.0), 0
    while t < seconds - 5:
        leg, other = LEGS[turn % 2], LEGS[(turn + 1) % 2]
        start = max(t, free[leg])
        audio = speak(str(rng.choice(SENTENCES)), voices[leg])
        placed.append((leg, start, audio))
        length = audio.size / RATE
        free[leg] = start + length + 0.5
        if rng.random() < 0.25 and length > 2.0:  # the listener says a short word meanwhile
            word = speak(str(rng.choice(BACKCHANNELS)), voices[other])
            at = max(start + rng.uniform(0.8, length - 0.8), free[other])
            placed.append((other, at, word))
            free[other] = at + word.size / RATE + 0.5
        if rng.random() < 0.3:  # the next speaker starts before this one ends
            t = start + length - rng.uniform(0.3, min(1.0, length / 2))
        else:
            t = start + length + rng.uniform(0.4, 1.5)
        turn += 1
    total = int((max(s + a.size / RATE for _, s, a in placed) + rng.uniform(0.5, 1.5)) * RATE)
    legs = {leg: np.zeros(total) for leg in LEGS}
    truth: dict[str, Spans] = {leg: [] for leg in LEGS}
    for leg, start, audio in placed:
        first = round(start * RATE)
        legs[leg][first : first + audio.size] += audio * gains[leg]
        on, off = audible_span(audio)
        truth[leg].append(((first + on) / RATE, (first + off) / RATE))
    return Call(seed, legs, {leg: sorted(spans) for leg, spans in truth.items()})


def _delayed(samples: Signal, seconds: float) -> Signal:
    shift = round(seconds * RATE)
    return np.concatenate((np.zeros(shift), samples[: samples.size - shift]))


def _noise(rng: np.random.Generator, size: int) -> Signal:
    """White, pink or brown noise of unit power."""
    colour = rng.choice(("white", "pink", "brown"))
    spectrum = np.fft.rfft(rng.standard_normal(size))
    frequency = np.maximum(np.fft.rfftfreq(size, 1 / RATE), 20.0)
    if colour == "pink":
        spectrum /= np.sqrt(frequency)
    elif colour == "brown":
        spectrum /= frequency
    noise = np.fft.irfft(spectrum, size)
    return np.asarray(noise / np.sqrt(np.mean(noise**2)))


def _babble(rng: np.random.Generator, size: int) -> Signal:
    """Two people talking on and on in the background, `size` samples long."""
    talk = np.zeros(size)
    for voice in BABBLE_VOICES[:2]:
        at = int(rng.uniform(0.0, 2.0) * RATE)
        while at < size:
            audio = speak(str(rng.choice(SENTENCES)), voice)[: size - at]
            talk[at : at + audio.size] += audio
            at += audio.size + int(rng.uniform(0.2, 0.8) * RATE)
    return talk


def _speech_power(samples: Signal, spans: Spans) -> float:
    parts = [samples[int(s * RATE) : int(e * RATE)] for s, e in spans]
    return float(np.mean(np.concatenate(parts) ** 2))


def degrade(call: Call, condition: str) -> dict[str, Signal]:
    """Each leg as the condition has it, before any codec: leaks with echo and/or noise."""
    rng = np.random.default_rng(call.seed * 1000 + (CONDITIONS + EXTRA_CONDITIONS).index(condition))
    legs = {leg: audio.copy() for leg, audio in call.legs.items()}
    for leg, other in (LEGS, LEGS[::-1]):
        if "leak" in condition:
            leak_db = rng.uniform(-30.0, -20.0)
            echo_db = leak_db - rng.uniform(3.0, 8.0)
            echo = _delayed(call.legs[other], rng.uniform(0.05, 0.25))
            legs[leg] += 10 ** (leak_db / 20) * call.legs[other] + 10 ** (echo_db / 20) * echo
        if "noise" in condition:
            snr_db = rng.uniform(15.0, 20.0)
            power = _speech_power(call.legs[leg], call.truth[leg]) / 10 ** (snr_db / 10)
            legs[leg] += np.sqrt(power) * _noise(rng, legs[leg].size)
        if "babble" in condition:
            snr_db = rng.uniform(10.0, 15.0)
            power = _speech_power(call.legs[leg], call.truth[leg]) / 10 ** (snr_db / 10)
            talk = _babble(rng, legs[leg].size)
            legs[leg] += np.sqrt(power / np.mean(talk**2)) * talk
    return legs


def to_int16(samples: Signal) -> npt.NDArray[np.int16]:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: npt.NDArray[np.int16], rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


def leg_files(call: Call, condition: str, directory: Path) -> dict[str, Path]:
    """Each leg of `call` under `condition`, encoded as the condition says, then converted to
    16 kHz mono WAV by the service's own ffmpeg invocation; returns leg -> converted WAV."""
    codec = next((name for name in CODECS if name in condition), None)
    return convert_legs(degrade(call, condition), codec, directory)


def annotation(spans: Mapping[str, Sequence[tuple[float, float]]]) -> Annotation:
    found = Annotation()
    for leg, segments in spans.items():
        for start, end in segments:
            found[Segment(start, end)] = leg
    return found


@dataclass(frozen=True)
class Score:
    """Diarization error of a set of calls, as fractions of the reference speech."""

    der: float
    missed: float
    false_alarm: float
    confusion: float
    speech_seconds: float


class Scorer:
    """Accumulates pyannote.metrics' DER (collar 0.25 s, overlap scored) over calls."""

    def __init__(self) -> None:
        self.metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)

    def add(self, truth: Mapping[str, Spans], labels: Mapping[str, Spans], seconds: float) -> None:
        uem = Timeline([Segment(0.0, seconds)])
        self.metric(annotation(truth), annotation(labels), uem=uem)

    def _seconds(self, component: str) -> float:
        return float(cast(float, self.metric[component]))

    def score(self) -> Score:
        total = self._seconds("total")
        return Score(
            der=float(abs(self.metric)),
            missed=self._seconds("missed detection") / total,
            false_alarm=self._seconds("false alarm") / total,
            confusion=self._seconds("confusion") / total,
            speech_seconds=total,
        )
