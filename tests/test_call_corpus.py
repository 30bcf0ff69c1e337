"""The recorded-speech call corpus: its reference and non-speech spans sit where the sound is,
and the short corpus is scored end to end with the default detector, which must meet the
benchmark's targets on it."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest

from bench.call_conditions import LEGS, Call, Sample, prepare
from bench.call_corpus import (
    SIZES,
    ResultRow,
    build_calls,
    evaluate,
    format_table,
    project_detector,
    score,
)
from bench.call_sources import (
    NOISY_VOICES,
    RATE,
    Signal,
    Spans,
    intersect,
    merge,
    missing_packages,
    subtract,
)
from diarization_audio.labels.params import DEFAULT_PARAMS

SHORT = SIZES["short"]
DER_TARGET = 0.05
NON_SPEECH_TARGET = 0.02


def test_the_recordings_are_installed() -> None:
    """`make test` installs the Debian packages the corpus is made of (never skipped)."""
    assert missing_packages() == [], "run `make system-packages`"


@pytest.fixture(scope="module")
def calls() -> list[Call]:
    return build_calls(SHORT.calls, SHORT.seconds, seed=0)


def _read(path: Path) -> Signal:
    with wave.open(str(path), "rb") as reader:
        assert (reader.getframerate(), reader.getnchannels()) == (RATE, 1)
        data = reader.readframes(reader.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0


def _dbfs(samples: Signal, spans: Spans) -> float:
    """Mean power of `samples` over `spans`, in dBFS."""
    parts = [samples[round(s * RATE) : round(e * RATE)] for s, e in spans]
    return float(10 * np.log10(np.mean(np.concatenate(parts) ** 2) + 1e-12))


def test_building_is_deterministic(calls: list[Call]) -> None:
    """The same seed gives the same calls, sample for sample; another seed does not."""
    again = build_calls(SHORT.calls, SHORT.seconds, seed=0)
    for first, second in zip(calls, again, strict=True):
        assert first.reference == second.reference
        assert all(np.array_equal(first.legs[leg], second.legs[leg]) for leg in LEGS)
    assert build_calls(1, SHORT.seconds, seed=1)[0].reference != calls[0].reference


def test_reference_is_where_the_clean_legs_are_audible(calls: list[Call]) -> None:
    """On clean legs the speech in the reference stands at least 30 dB above everything
    outside it, 18 dB on LibriVox and AN4 legs (their recordings' own floor, about 25 dB under
    their speech, runs the whole leg), and is itself at speech level."""
    for call in calls:
        for leg in LEGS:
            inside = _dbfs(call.legs[leg], call.reference[leg])
            outside = _dbfs(call.legs[leg], subtract([(0.0, call.duration)], call.reference[leg]))
            margin = 18.0 if call.voices[leg] in NOISY_VOICES else 30.0
            assert -40.0 < inside < -15.0, (call.call_id, leg, inside)
            assert inside - outside >= margin, (call.call_id, leg, inside, outside)


def test_calls_have_overlap_backchannel_and_silent_stretches(calls: list[Call]) -> None:
    """Each call has both parties speaking at once, a short word said inside the other's span,
    its ringback lead-in, keypad pause and hold free of speech, and varied customer voices."""
    assert len({call.voices["customer"] for call in calls}) == len(calls)
    for call in calls:
        agent, customer = call.reference["agent"], call.reference["customer"]
        assert intersect(agent, customer), call.call_id
        short_inside = [
            (leg, span)
            for leg, mine, theirs in (("agent", agent, customer), ("customer", customer, agent))
            for span in mine
            if span[1] - span[0] <= 0.8 and intersect([span], theirs) == [span]
        ]
        assert short_inside, call.call_id
        assert 7.0 <= call.lead_in <= 8.0
        assert 15.0 <= call.hold[1] - call.hold[0] <= 25.0
        silent = [(0.0, call.lead_in), call.keypad, call.hold]
        for leg in LEGS:
            assert merge(call.reference[leg]) == call.reference[leg]
            assert call.reference[leg][0][0] >= call.lead_in - 0.01
            assert not intersect(call.reference[leg], silent), (call.call_id, leg)


@pytest.mark.parametrize(
    ("condition", "leg", "above_db"),
    [("noise-step", "agent", 10.0), ("noise-step", "customer", 10.0),
     ("music-on-hold", "agent", 30.0), ("tones", "agent", 30.0), ("tones", "customer", 30.0),
     ("hum", "customer", 20.0)],
)  # fmt: skip
def test_non_speech_spans_are_where_the_condition_put_its_sound(
    calls: list[Call], tmp_path: Path, condition: str, leg: str, above_db: float
) -> None:
    """After the service's conversion, the leg is louder inside its non-speech spans than
    where there is neither speech nor a non-speech sound (hum: than digital silence's -100)."""
    call = calls[0]
    sample = prepare(call, condition, tmp_path)
    audio = _read(sample.files[leg])
    region = sample.non_speech[leg]
    assert region, (condition, leg)
    assert not intersect(region, call.reference[leg])
    rest = subtract([(0.0, call.duration)], [*region, *call.reference[leg]])
    # Widen both by the collar so neither the sound's edges nor speech tails blur the contrast.
    rest = subtract(rest, [(s - 0.3, e + 0.3) for s, e in call.reference[leg] + region])
    inside = _dbfs(audio, region)
    outside = _dbfs(audio, rest) if condition != "hum" else -100.0
    assert inside - outside >= above_db, (condition, leg, inside, outside)
    assert prepare(call, "clean", tmp_path / "clean").non_speech == {"agent": [], "customer": []}


def test_scorer_scores_the_reference_perfect_and_everything_as_false_alarm(
    calls: list[Call], tmp_path: Path
) -> None:
    """The reference as labels scores 0 everywhere; labelling whole legs is all false alarm on
    non-speech and adds false alarm, not misses, to the DER."""
    samples = [prepare(call, "combined", tmp_path / call.call_id) for call in calls]
    perfect = score(samples, [sample.reference for sample in samples])
    assert (perfect.der, perfect.missed, perfect.false_alarm) == (0.0, 0.0, 0.0)
    assert perfect.non_speech_false_alarm == 0.0
    everything = [{leg: [(0.0, s.duration)] for leg in LEGS} for s in samples]
    blanket = score(samples, everything)
    assert blanket.non_speech_false_alarm == pytest.approx(1.0)
    assert blanket.missed == 0.0 and blanket.false_alarm > 0.5
    assert blanket.non_speech_seconds > 30.0


@pytest.fixture(scope="module")
def scored(
    calls: list[Call], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[ResultRow]]:
    """The short corpus labelled by the default detector as the service runs it, and scored."""
    work = tmp_path_factory.mktemp("short")
    detectors = {"default": project_detector(DEFAULT_PARAMS.method)}
    return work, evaluate(detectors, calls, SHORT.conditions, work)


def test_short_corpus_scored_with_the_default_detector(
    scored: tuple[Path, list[ResultRow]],
) -> None:
    """Every short condition gets a row with a DER, false alarm on non-speech exactly where
    the condition has non-speech sounds, and CPU figures; the table shows them all."""
    tmp_path, rows = scored
    assert [row.condition for row in rows] == list(SHORT.conditions)
    by_condition: dict[str, ResultRow] = {row.condition: row for row in rows}
    for row in rows:
        assert math.isfinite(row.der) and row.der >= 0.0
        assert row.der == pytest.approx(row.missed + row.false_alarm + row.confusion)
        assert row.cpu_seconds > 0.0 and row.cpu_per_call_hour > row.cpu_seconds
    assert by_condition["clean"].non_speech_false_alarm is None
    assert by_condition["leak+echo"].non_speech_false_alarm is None
    for condition in ("noise-step", "music-on-hold", "tones", "combined"):
        assert by_condition[condition].non_speech_false_alarm is not None, condition
    table = format_table(rows).splitlines()
    assert len(table) == 2 + len(SHORT.conditions)
    assert [line.split("|")[2].strip() for line in table[2:]] == list(SHORT.conditions)
    assert all(Path(tmp_path / c).is_dir() for c in SHORT.conditions)


def test_sample_files_are_what_the_service_writes(calls: list[Call], tmp_path: Path) -> None:
    """AMR-NB legs come back as 16 kHz mono WAV about as long as the call."""
    sample: Sample = prepare(calls[0], "amrnb", tmp_path)
    for leg in LEGS:
        audio = _read(sample.files[leg])
        assert abs(audio.size / RATE - sample.duration) < 0.1


def test_default_detector_meets_the_targets_on_the_short_corpus(
    scored: tuple[Path, list[ResultRow]],
) -> None:
    """The default detector, as the service runs it, scores DER <= 5% in every short condition
    (clean, leak and echo, a noise step, music on hold, ringback and DTMF, all combined) and
    labels at most 2% of the hiss, music and tones as speech: the benchmark's targets."""
    _, rows = scored
    table = format_table(rows)
    for row in rows:
        assert row.der <= DER_TARGET, table
        assert row.non_speech_false_alarm is None or row.non_speech_false_alarm <= (
            NON_SPEECH_TARGET
        ), table
