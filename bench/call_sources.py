"""Recorded human speech (and music on hold) from Debian packages, as 16 kHz clips with spans.

Sources, as their Debian copyright files (/usr/share/doc/PACKAGE/copyright) state them:

- asterisk-core-sounds-en-wav: /usr/share/asterisk/sounds/en_US_f_Allison/*.wav, telephone
  prompts recorded by Allison Smith (2003-2010), 8 kHz; CC-BY-SA-3.0.
- asterisk-core-sounds-fr-wav: /usr/share/asterisk/sounds/fr_CA_f_June/*.wav, the same prompts
  in French recorded by June Wallack (2006-2008), 8 kHz; CC-BY-SA-3.0.
- pocketsphinx-testdata: /usr/share/pocketsphinx/test/data/, LibriVox read speech (librivox/,
  one reader, "Sense and Sensibility"), AN4 utterances (goforward.raw, numbers.raw,
  something.raw) and the cards/ recordings, all 16 kHz; the copyright file covers every file
  with "Copyright: 1995-2014 Carnegie Mellon University, 2014-2015 Alpha Cephei Inc.", BSD-2
  (tidigits/ is left out: TI-DIGITS is an LDC corpus, whatever the package says).
- asterisk-moh-opsound-wav: /usr/share/asterisk/moh/*.wav, music on hold by Paul Shuler
  (Macroform), Manolo Camp and Reno Project (2008-2009), 8 kHz; CC-BY-SA-3.0 "through explicit
  permission from their authors".

Nothing is copied into the repository: the corpus is built from the installed files at run
time (`make system-packages` installs them).

The reference of a clip is derived from the clean clip itself: 10 ms frames, a frame is speech
when it is within 40 dB of the clip's loudest frame, and pauses shorter than 0.3 s are bridged
(the NIST convention the labeller also uses), so internal pauses of 0.3 s or more split a clip
into several spans. The LibriVox and AN4 recordings carry a noise floor less than 40 dB below
their peaks (about -45 dBFS against -12), so for those two a frame must also stand 15 dB above
the clip's floor (its 10th-percentile frame level). A lone run under 50 ms (a click) is not
speech.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from diarization_audio.wav import SAMPLE_RATE as TARGET_SAMPLE_RATE

RATE = TARGET_SAMPLE_RATE
FRAME = RATE // 100  # 10 ms
Signal = npt.NDArray[np.float64]
Spans = list[tuple[float, float]]

SOUNDS = Path("/usr/share/asterisk/sounds")
SPHINX = Path("/usr/share/pocketsphinx/test/data")
MOH = Path("/usr/share/asterisk/moh")
PACKAGES = {  # a file each package installs, to tell whether it is there
    "asterisk-core-sounds-en-wav": SOUNDS / "en_US_f_Allison" / "hello.wav",
    "asterisk-core-sounds-fr-wav": SOUNDS / "fr_CA_f_June" / "hello.wav",
    "pocketsphinx-testdata": SPHINX / "goforward.raw",
    "asterisk-moh-opsound-wav": MOH / "macroform-cold_day.wav",
}
# Prompts that are not speech (tones, beeps, monkeys) or a whole menu recital.
NOT_SPEECH = ("ascending-2tone", "descending-2tone", "beep", "beeperr", "confbridge-join",
              "confbridge-leave", "tt-monkeys", "tt-monkeysintro")  # fmt: skip
BELOW_PEAK_DB = 40.0
ABOVE_FLOOR_DB = 15.0
MIN_PAUSE = 0.3  # seconds: shorter pauses are bridged
MIN_SPEECH = 0.05  # seconds: a lone click is not speech
ACTIVE_DBFS = -20.0  # each clip's speech is brought to this level before the leg's own gain


def _voice_files(voice: str) -> list[Path]:
    if voice in ("allison", "june"):
        folder = SOUNDS / ("en_US_f_Allison" if voice == "allison" else "fr_CA_f_June")
        return [p for p in sorted(folder.glob("*.wav")) if p.stem not in NOT_SPEECH]
    if voice == "librivox":
        return sorted((SPHINX / "librivox").glob("*.wav"))
    if voice == "cmu":
        return [SPHINX / f"{name}.raw" for name in ("goforward", "numbers", "something")] + sorted(
            (SPHINX / "cards").glob("*.wav")
        )
    raise ValueError(f"unknown voice {voice!r}")


VOICES = ("allison", "june", "librivox", "cmu")
CUSTOMER_VOICES = ("june", "librivox", "cmu")
NOISY_VOICES = ("librivox", "cmu")  # recordings with a noise floor less than 40 dB down


def missing_packages() -> list[str]:
    """The Debian packages whose files the corpus needs and this machine lacks."""
    return [name for name, path in PACKAGES.items() if not path.exists()]


def _read(path: Path) -> tuple[Signal, int]:
    """A source file's samples scaled to full scale 1, and its rate (raw files are 16 kHz)."""
    if path.suffix == ".raw":
        return np.fromfile(path, dtype="<i2").astype(np.float64) / 32768.0, RATE
    with wave.open(str(path), "rb") as reader:
        rate, data = reader.getframerate(), reader.readframes(reader.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0, rate


@lru_cache(maxsize=1)
def _halfband() -> Signal:
    """A linear-phase low-pass at 4 kHz for 16 kHz samples (Blackman-windowed sinc, 95 taps)."""
    n = np.arange(95) - 47
    taps = 0.5 * np.sinc(n / 2) * np.blackman(95)
    return np.asarray(2 * taps / taps.sum())  # x2: zero-stuffing halves the level


def to_rate(samples: Signal, rate: int) -> Signal:
    """`samples` at 16 kHz; 8 kHz input is upsampled by two with numpy alone."""
    if rate == RATE:
        return samples
    if rate * 2 != RATE:
        raise ValueError(f"no resampler from {rate} Hz")
    stuffed = np.zeros(samples.size * 2)
    stuffed[::2] = samples
    return np.asarray(np.convolve(stuffed, _halfband(), mode="same"))


def frame_db(samples: Signal) -> Signal:
    """The level of each 10 ms frame in dB relative to full scale (power, floor -120)."""
    count = samples.size // FRAME
    power = (samples[: count * FRAME].reshape(count, FRAME) ** 2).mean(axis=1)
    return np.asarray(10 * np.log10(power + 1e-12))


def speech_spans(samples: Signal, noisy: bool = False) -> Spans:
    """Where a clean clip speaks, by the rule in the module docstring, in seconds; `noisy`
    for a source with a noise floor within 40 dB of its peaks."""
    levels = frame_db(samples)
    threshold = levels.max() - BELOW_PEAK_DB
    if noisy:
        threshold = max(threshold, float(np.percentile(levels, 10)) + ABOVE_FLOOR_DB)
    loud = np.flatnonzero(levels >= threshold)
    spans: Spans = []
    for frame in loud:
        start, end = frame * 0.01, (frame + 1) * 0.01
        if spans and start - spans[-1][1] < MIN_PAUSE - 1e-9:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return [(round(s, 2), round(e, 2)) for s, e in spans if e - s >= MIN_SPEECH - 1e-9]


@dataclass(frozen=True, eq=False)
class Clip:
    """A recording at 16 kHz, its speech brought to `ACTIVE_DBFS`, and where it speaks."""

    name: str
    samples: Signal
    spans: Spans
    floor_dbfs: float  # its 10th-percentile frame level: the recording's own noise floor

    @property
    def seconds(self) -> float:
        return self.samples.size / RATE

    @property
    def speech(self) -> tuple[float, float]:
        """From its first word's start to its last word's end, in seconds into the clip."""
        return self.spans[0][0], self.spans[-1][1]


def fade(samples: Signal, seconds: float = 0.01) -> Signal:
    """Ends ramped over `seconds`: a cut through a noise floor would otherwise click."""
    ramp = np.linspace(0.0, 1.0, min(round(seconds * RATE), samples.size // 2))
    out = samples.copy()
    out[: ramp.size] *= ramp
    out[out.size - ramp.size :] *= ramp[::-1]
    return out


@lru_cache(maxsize=1024)
def clip(path: Path) -> Clip:
    """`path` decoded, at 16 kHz, normalised, with its spans (cached: calls reuse clips)."""
    native, rate = _read(path)
    samples = to_rate(native, rate)
    spans = speech_spans(samples, noisy=path.is_relative_to(SPHINX))
    speech = np.concatenate([samples[round(s * RATE) : round(e * RATE)] for s, e in spans])
    gain = 10 ** (ACTIVE_DBFS / 20) / np.sqrt(np.mean(speech**2))
    normalised = samples * gain
    floor = float(np.percentile(frame_db(normalised), 10))
    return Clip(f"{path.parent.name}/{path.name}", fade(normalised), spans, floor)


def excerpt(source: Clip, start: float, end: float) -> Clip:
    """The part of `source` from `start` to `end` seconds, with the spans that fall in it."""
    spans = [
        (round(max(s, start) - start, 2), round(min(e, end) - start, 2))
        for s, e in source.spans
        if s < end and e > start
    ]
    piece = source.samples[round(start * RATE) : round(end * RATE)]
    return Clip(f"{source.name}@{start:.2f}", fade(piece), spans, source.floor_dbfs)


@lru_cache(maxsize=8)
def turns(voice: str) -> tuple[Clip, ...]:
    """The voice's clips fit for a turn: 1 to 7 s of speech."""
    found = (clip(path) for path in _voice_files(voice))
    return tuple(c for c in found if 1.0 <= c.speech[1] - c.speech[0] <= 7.0)


@lru_cache(maxsize=8)
def backchannels(voice: str) -> tuple[Clip, ...]:
    """Short words of the voice (0.2 to 0.8 s of speech with a pause either side), cut out of
    its clips with up to 0.1 s of their own silence around them."""
    found = []
    for whole in (clip(path) for path in _voice_files(voice)):
        edges = [0.0] + [t for span in whole.spans for t in span] + [whole.seconds]
        for i, (start, end) in enumerate(whole.spans):
            before, after = start - edges[2 * i], edges[2 * i + 3] - end
            if 0.2 <= end - start <= 0.8 and min(before, after) >= 0.05:
                margin = min(0.1, before / 2, after / 2)
                found.append(excerpt(whole, start - margin, end + margin))
    return tuple(found)


def moh_piece(rng: np.random.Generator, seconds: float) -> tuple[str, Signal]:
    """`seconds` of one music-on-hold file from a random point past its first 10 s, at 16 kHz,
    read from the 8 kHz file without decoding the rest."""
    files = sorted(MOH.glob("*.wav"))
    path = files[int(rng.integers(len(files)))]
    with wave.open(str(path), "rb") as reader:
        rate, frames = reader.getframerate(), reader.getnframes()
        wanted = int(seconds * rate) + 1
        reader.setpos(int(rng.integers(10 * rate, max(10 * rate + 1, frames - wanted))))
        data = reader.readframes(wanted)
    native = np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0
    return path.stem, to_rate(native, rate)[: round(seconds * RATE)]


def merge(spans: Sequence[tuple[float, float]]) -> Spans:
    """Sorted spans with the overlapping and touching ones joined."""
    merged: Spans = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif end > start:
            merged.append((start, end))
    return merged


def intersect(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> Spans:
    """Where both span lists cover."""
    found, i, j = [], 0, 0
    a, b = merge(a), merge(b)
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            found.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return found


def subtract(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> Spans:
    """Where `a` covers and `b` does not."""
    left: Spans = []
    cuts = merge(b)
    for start, end in merge(a):
        for cut_start, cut_end in cuts:
            if cut_end <= start or cut_start >= end:
                continue
            if cut_start > start:
                left.append((start, cut_start))
            start = max(start, cut_end)
        if start < end:
            left.append((start, end))
    return left


def seconds_of(spans: Sequence[tuple[float, float]]) -> float:
    return float(sum(end - start for start, end in merge(spans)))
