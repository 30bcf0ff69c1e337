"""Two-party calls of recorded speech under line conditions, and a scorer of speech labels.

The agent is Allison Smith's English prompts; the customer varies per call between June
Wallack's French-Canadian prompts, a LibriVox reader and CMU's AN4/cards utterances; the hold
plays opsound music (Asterisk prompts and music: CC-BY-SA-3.0; pocketsphinx test data: BSD-2;
each package's copyright in detail: bench/call_sources.py). `python -m bench.call_corpus` scores
today's detectors on the corpus.

Turns alternate with pauses of 0.3-1.5 s between one's last word and the other's first; some
turns overlap (the next speaker starts 0.3-1.0 s before the other's last word ends); the
listener says a short word (0.2-0.8 s of speech, from its own voice, or June's for the two
English customer sources, which have none) inside a long span of the other's turn. Each leg has
its own gain (-12..-3 dB on clips brought to -20 dBFS of speech, each clip within 1.5 dB of
that). Every call opens with 7-8 s in which no one speaks (a ringback's place), keeps a 2.8 s
pause for keyed digits after its third turn and a hold of 15-25 s once half its talk is over,
all silent unless a condition fills them (see bench/call_conditions.py). `seconds` is the talk;
the call is longer by those stretches. A leg in the LibriVox or AN4 voice carries white noise at
its clips' own noise floor (their median 10th-percentile level, about 25 dB under their speech)
from start to end, as a line would: without it each clip's floor would step out of digital
silence and any level detector would hear the step as speech.

The reference of each leg is the speech of each clip placed on it (the rule in
bench/call_sources.py), with pauses under 0.3 s between clips bridged as within them.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from pyannote.core import Annotation, Segment, Timeline  # type: ignore[import-untyped]
from pyannote.metrics.diarization import DiarizationErrorRate

from bench.call_conditions import CONDITIONS, LEGS, Call, Sample, dbfs_gain, hiss, prepare
from bench.call_sources import (
    CUSTOMER_VOICES,
    MIN_PAUSE,
    NOISY_VOICES,
    RATE,
    Clip,
    Spans,
    backchannels,
    intersect,
    merge,
    seconds_of,
    turns,
)
from diarization_audio.labels.activity import analyse_call, label_legs
from diarization_audio.labels.params import VadParams

Detector = Callable[[dict[str, Path]], dict[str, list[tuple[float, float]]]]
KEYPAD_SECONDS = 2.8  # room for ten digits of 100 ms on, 100 ms off, and a margin either side
SHORT_CONDITIONS = (
    "clean",
    "leak+echo",
    "noise-step",
    "music-on-hold",
    "tones",
    "background-voice",
    "combined",
)


@dataclass(frozen=True)
class Size:
    """How many calls of how many seconds of talk, under which conditions."""

    calls: int
    seconds: float
    conditions: tuple[str, ...]


SIZES = {"full": Size(6, 90.0, tuple(CONDITIONS)), "short": Size(2, 45.0, SHORT_CONDITIONS)}


def _pick(rng: np.random.Generator, pool: Sequence[Clip]) -> Clip:
    return pool[int(rng.integers(len(pool)))]


def build_call(index: int, seconds: float, seed: int) -> Call:
    """Call `index` of the corpus for `seed`: about `seconds` of talk, see the module docstring."""
    rng = np.random.default_rng([seed, index])
    customer = CUSTOMER_VOICES[(seed + index) % len(CUSTOMER_VOICES)]
    voices = {"agent": "allison", "customer": customer}
    pools = {leg: turns(voice) for leg, voice in voices.items()}
    words = {"agent": backchannels("allison"), "customer": backchannels(customer)}
    words["customer"] = words["customer"] or backchannels("june")
    gains = {leg: rng.uniform(-12.0, -3.0) for leg in LEGS}
    lead_in = rng.uniform(7.0, 8.0)
    placed: list[tuple[str, float, Clip]] = []
    free = dict.fromkeys(LEGS, 0.0)  # when each leg's last clip (with its silence) has ended
    t, turn, skipped, overlaps, said = lead_in, 0, 0.0, 0, 0  # t: the next turn's first word
    hold = keypad = (0.0, 0.0)
    while t - lead_in - skipped < seconds:
        leg, other = LEGS[turn % 2], LEGS[1 - turn % 2]
        spoken = _pick(rng, pools[leg])
        start = max(t - spoken.speech[0], free[leg])
        placed.append((leg, start, spoken))
        free[leg] = start + spoken.seconds
        long_spans = [(s, e) for s, e in spoken.spans if e - s >= 1.8]
        if long_spans and (rng.random() < 0.25 or (said == 0 and turn >= 1)):
            s, e = long_spans[int(rng.integers(len(long_spans)))]
            word = _pick(rng, words[other])
            length = word.speech[1] - word.speech[0]
            at = start + s + rng.uniform(0.6, max(0.6, e - s - 0.6 - length)) - word.speech[0]
            if at >= free[other]:
                placed.append((other, at, word))
                free[other] = at + word.seconds
                said += 1
        last_word = start + spoken.speech[1]
        last_span = spoken.spans[-1][1] - spoken.spans[-1][0]
        talked = last_word - lead_in - skipped
        if turn == 2 or (hold == (0.0, 0.0) and talked >= seconds / 2 and turn > 2):
            gap = KEYPAD_SECONDS if turn == 2 else rng.uniform(15.0, 25.0)
            begin = max(free.values()) + 0.2
            if turn == 2:
                keypad = (begin, begin + gap)
            else:
                hold = (begin, begin + gap)
            free = dict.fromkeys(LEGS, begin + gap)
            skipped += begin + gap - last_word
            t = begin + gap + rng.uniform(0.3, 0.8)
        elif last_span > 0.5 and (rng.random() < 0.3 or (overlaps == 0 and turn >= 3)):
            t = last_word - rng.uniform(0.3, min(1.0, last_span - 0.2))
            overlaps += 1
        else:
            t = last_word + rng.uniform(0.3, 1.5)
        turn += 1
    total = round((max(free.values()) + rng.uniform(0.5, 1.5)) * RATE)
    legs = {leg: np.zeros(total) for leg in LEGS}
    spans: dict[str, Spans] = {leg: [] for leg in LEGS}
    floors: dict[str, list[float]] = {leg: [] for leg in LEGS}
    for leg, start, spoken in placed:
        first = round(start * RATE)
        gain_db = gains[leg] + rng.uniform(-1.5, 1.5)
        legs[leg][first : first + spoken.samples.size] += spoken.samples * 10 ** (gain_db / 20)
        spans[leg] += [(first / RATE + s, first / RATE + e) for s, e in spoken.spans]
        floors[leg].append(spoken.floor_dbfs + gain_db)
    for leg, voice in voices.items():
        if voice in NOISY_VOICES:  # the recordings' own floor, heard all along as on a line
            legs[leg] += dbfs_gain(hiss(rng, total), float(np.median(floors[leg])))
    reference = {leg: _bridged(found) for leg, found in spans.items()}
    return Call(f"s{seed}c{index}-{customer}", seed * 1000 + index, voices, legs, reference,
                lead_in, hold, keypad)  # fmt: skip


def _bridged(spans: Spans) -> Spans:
    joined = merge([(s, e + MIN_PAUSE - 1e-6) for s, e in spans])
    return [(round(s, 3), round(e - MIN_PAUSE + 1e-6, 3)) for s, e in joined]


def build_calls(count: int, seconds: float, seed: int) -> list[Call]:
    """`count` calls of about `seconds` of talk each; the same for the same arguments."""
    return [build_call(index, seconds, seed) for index in range(count)]


@dataclass(frozen=True)
class Score:
    """Diarization error of a set of samples, as fractions of their reference speech, and the
    share of their non-speech sounds labelled as speech (None when they have none)."""

    der: float
    missed: float
    false_alarm: float
    confusion: float
    speech_seconds: float
    non_speech_false_alarm: float | None
    non_speech_seconds: float


def _annotation(spans: Mapping[str, Sequence[tuple[float, float]]]) -> Annotation:
    found = Annotation()
    for leg, segments in spans.items():
        for start, end in segments:
            found[Segment(start, end), leg] = leg  # one track per leg: same times, two speakers
    return found


def score(samples: Sequence[Sample], labels: Sequence[Mapping[str, Spans]]) -> Score:
    """pyannote.metrics' DER (collar 0.25 s, overlap scored, UEM the whole call) over
    `samples`, `labels[i]` being sample i's leg -> labelled segments."""
    metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
    labelled = non_speech = 0.0
    for sample, found in zip(samples, labels, strict=True):
        uem = Timeline([Segment(0.0, sample.duration)])
        metric(_annotation(sample.reference), _annotation(found), uem=uem)
        for leg, region in sample.non_speech.items():
            labelled += seconds_of(intersect(found.get(leg, []), region))
            non_speech += seconds_of(region)

    def part(name: str) -> float:
        return float(cast(float, metric[name]))

    total = part("total")
    return Score(
        der=float(abs(metric)),
        missed=part("missed detection") / total,
        false_alarm=part("false alarm") / total,
        confusion=part("confusion") / total,
        speech_seconds=total,
        non_speech_false_alarm=labelled / non_speech if non_speech > 0 else None,
        non_speech_seconds=non_speech,
    )


@dataclass(frozen=True)
class ResultRow:
    """One detector's score under one condition, and the CPU it spent labelling."""

    detector: str
    condition: str
    der: float
    missed: float
    false_alarm: float
    confusion: float
    non_speech_false_alarm: float | None
    cpu_seconds: float
    cpu_per_call_hour: float


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def evaluate(
    detectors: Mapping[str, Detector],
    calls: Sequence[Call] | None = None,
    conditions: Sequence[str] = tuple(CONDITIONS),
    work: Path | None = None,
) -> list[ResultRow]:
    """Each detector on each call under each condition, scored per (detector, condition).

    `calls` defaults to the full corpus; the legs are written under `work` (a temporary
    directory when None). CPU per call-hour divides by the calls' durations, not the legs'.
    """
    calls = build_calls(SIZES["full"].calls, SIZES["full"].seconds, 0) if calls is None else calls
    hours = sum(call.duration for call in calls) / 3600
    with tempfile.TemporaryDirectory(prefix="call_corpus_") as scratch:
        base = Path(scratch) if work is None else work
        rows = []
        for condition in conditions:
            samples = [prepare(c, condition, base / condition / c.call_id) for c in calls]
            for name, detect in detectors.items():
                started = _cpu()
                labels = [detect(sample.files) for sample in samples]
                cpu = _cpu() - started
                found = score(samples, labels)
                rows.append(ResultRow(
                    name, condition, found.der, found.missed, found.false_alarm,
                    found.confusion, found.non_speech_false_alarm, cpu, cpu / hours,
                ))  # fmt: skip
    return rows


def format_table(rows: Sequence[ResultRow]) -> str:
    """`rows` as a Markdown table, fractions in percent."""
    lines = [
        "| detector | condition | DER | missed | false alarm | confusion | FA on non-speech "
        "| CPU s | CPU s per call-hour |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        non_speech = "-" if r.non_speech_false_alarm is None else f"{r.non_speech_false_alarm:.1%}"
        lines.append(
            f"| {r.detector} | {r.condition} | {r.der:.1%} | {r.missed:.1%} | "
            f"{r.false_alarm:.1%} | {r.confusion:.1%} | {non_speech} | {r.cpu_seconds:.2f} | "
            f"{r.cpu_per_call_hour:.2f} |"
        )
    return "\n".join(lines)


def project_detector(method: str) -> Detector:
    """The service's labelling as it is: `label_legs` over `analyse_call` with `method`."""
    params = VadParams(method=method)

    def detect(files: dict[str, Path]) -> dict[str, list[tuple[float, float]]]:
        return label_legs(analyse_call(files, params), params)

    return detect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.call_corpus", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--calls", type=int, help="number of calls (default: the size's)")
    parser.add_argument("--seconds", type=float, help="seconds of talk per call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS))
    parser.add_argument("--work", type=Path, help="keep the legs' WAVs here")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    started = time.perf_counter()
    calls = build_calls(args.calls or size.calls, args.seconds or size.seconds, args.seed)
    built = time.perf_counter() - started
    detectors = {method: project_detector(method) for method in ("silero", "energy", "webrtc")}
    rows = evaluate(detectors, calls, args.conditions or size.conditions, args.work)
    total = sum(call.duration for call in calls)
    speech = sum(seconds_of(call.reference[leg]) for call in calls for leg in LEGS)
    print(format_table(rows))
    print(
        f"\n{len(calls)} calls, {total:.0f} s, {speech:.0f} s of speech; arranged in "
        f"{built:.1f} s, all done in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
