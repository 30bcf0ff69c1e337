"""Speech turns per leg: the turn rules, crosstalk suppression, quality flags, one-pass analysis."""

from __future__ import annotations

import subprocess
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest
from audio_factory import ffmpeg_exe

from speech_activity import (
    LegAudio,
    Segment,
    analyse_pcm,
    analyse_wav,
    detect_speech,
    label_legs,
    overlap_seconds,
    provenance,
    quality_flags,
    speech_seconds,
)

RATE = 16000
rng = np.random.default_rng(7)


def voice(
    seconds: float, spans: list[Segment], level: float = 0.3, pitch: float = 180.0
) -> np.ndarray:
    """A voice-like sound (a pitch with syllable-rate modulation) inside `spans`, else nothing."""
    t = np.arange(round(seconds * RATE)) / RATE
    gate = np.zeros_like(t)
    for start, end in spans:
        gate[(t >= start) & (t < end)] = 1.0
    syllables = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    harmonics = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6))
    return level * gate * syllables * harmonics / 2


def noise(seconds: float, level: float = 0.002) -> np.ndarray:
    return rng.normal(0, level, round(seconds * RATE))


def pcm(signal: np.ndarray) -> np.ndarray:
    return np.clip(np.round(signal * 32767), -32768, 32767).astype(np.int16)


def leg(signal: np.ndarray) -> LegAudio:
    return analyse_pcm(pcm(signal))


def covered(segments: list[Segment], start: float, end: float) -> float:
    """How much of [start, end) the segments cover."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in segments)


def test_pauses_under_a_third_of_a_second_stay_inside_a_turn() -> None:
    """A 0.25 s pause is bridged, a 0.4 s pause splits the turn, a 0.15 s blip is dropped."""
    spans = [(1.0, 2.0), (2.25, 3.0), (3.4, 4.5), (6.0, 6.15)]
    turns = detect_speech(leg(voice(8, spans) + noise(8)))
    assert len(turns) == 2, turns
    (a0, a1), (b0, b1) = turns
    assert a0 == pytest.approx(1.0, abs=0.08) and a1 == pytest.approx(3.0, abs=0.08)
    assert b0 == pytest.approx(3.4, abs=0.08) and b1 == pytest.approx(4.5, abs=0.08)


def test_leaks_and_echo_are_suppressed_and_overlap_survives_on_both_legs() -> None:
    """Each leg keeps its own speech; the other's voice leaking in at -24 dB, and its echo,
    do not count; the second both speak at once counts on both legs."""
    seconds = 12.0
    agent = voice(seconds, [(0.5, 4.0), (7.0, 9.0)], pitch=150)
    customer = voice(seconds, [(3.0, 6.5), (9.5, 11.5)], pitch=220)
    echo = np.concatenate([np.zeros(int(0.12 * RATE)), agent[: -int(0.12 * RATE)]])
    leak = 10 ** (-24 / 20)
    legs = {
        "agent": leg(agent + leak * customer + noise(seconds)),
        "customer": leg(customer + leak * agent + 0.5 * leak * echo + noise(seconds)),
    }
    alone = detect_speech(legs["customer"])
    assert covered(alone, 0.5, 3.0) > 1.5  # alone, the customer's leg hears the agent
    labels = label_legs(legs)
    assert covered(labels["customer"], 0.5, 2.9) < 0.1
    assert covered(labels["customer"], 7.0, 9.0) < 0.1
    assert covered(labels["agent"], 4.2, 6.5) < 0.1
    assert covered(labels["agent"], 0.5, 4.0) == pytest.approx(3.5, abs=0.15)
    assert covered(labels["customer"], 3.0, 6.5) == pytest.approx(3.5, abs=0.15)
    assert overlap_seconds(labels["agent"], labels["customer"]) == pytest.approx(1.0, abs=0.15)
    assert quality_flags(legs, labels) == {}


def test_frame_accuracy_on_a_call_with_known_turns() -> None:
    """On a call of alternating turns with leaks and noise, labels match the truth on at
    least 97% of the time (missed speech plus false alarm at most 3%)."""
    seconds = 60.0
    truth_a = [(s, s + 4.0) for s in np.arange(0.0, 60, 9.0)]
    truth_c = [(s + 3.7, s + 8.2) for s in np.arange(0.0, 55, 9.0)]
    a, c = voice(seconds, truth_a), voice(seconds, truth_c, level=0.15, pitch=240)
    leak = 10 ** (-22 / 20)
    labels = label_legs({"agent": leg(a + leak * c + noise(seconds, 0.01)),
                         "customer": leg(c + leak * a + noise(seconds, 0.005))})  # fmt: skip
    grid = np.arange(0, seconds, 0.01)
    for name, truth in (("agent", truth_a), ("customer", truth_c)):
        want = np.zeros(len(grid), bool)
        got = np.zeros(len(grid), bool)
        for start, end in truth:
            want |= (grid >= start) & (grid < end)
        for start, end in labels[name]:
            got |= (grid >= start) & (grid < end)
        assert np.mean(want != got) <= 0.03, (name, labels[name])


def test_a_leg_that_is_only_the_other_ones_leak_is_flagged() -> None:
    """A customer leg carrying nothing but the agent's voice 20 dB down keeps no speech."""
    agent = voice(10, [(0.5, 4.5), (5.5, 9.5)])
    legs = {"agent": leg(agent + noise(10, 0.0003)),
            "customer": leg(0.1 * agent + noise(10, 0.0003))}  # fmt: skip
    labels = label_legs(legs)
    assert speech_seconds(labels["customer"]) == 0.0
    flags = quality_flags(legs, labels)
    assert set(flags) == {"leak", "no_speech"}, flags
    assert flags["leak"].startswith("customer is mostly the other leg's voice")


def test_identical_silent_and_clipped_legs_are_flagged() -> None:
    """Two copies of one leg are the same audio; a silent leg has no speech; clipping shows."""
    one = voice(6, [(1, 5)]) + noise(6)
    same = {"agent": leg(one), "customer": leg(one)}
    assert "same_audio" in quality_flags(same, label_legs(same))
    silent = {"agent": leg(one), "customer": leg(noise(6))}
    flags = quality_flags(silent, label_legs(silent))
    assert flags == {"no_speech": "customer has 0.0 s of speech in 6.0 s"}
    clipped = {"agent": leg(8 * one), "customer": leg(voice(6, [(0.5, 0.9)]) + noise(6))}
    assert "clipping" in quality_flags(clipped, label_legs(clipped))


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


def test_the_samples_hash_ignores_the_files_header(tmp_path: Path) -> None:
    """The same samples in two WAVs with different headers hash alike; other samples do not."""
    samples = pcm(voice(3, [(0.5, 2.5)]) + noise(3))
    plain = write_wav(tmp_path / "plain.wav", samples)
    tagged = tmp_path / "tagged.wav"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(plain),
         "-metadata", "title=call 17", "-c:a", "pcm_s16le", str(tagged)],
        check=True,
    )  # fmt: skip
    assert plain.read_bytes() != tagged.read_bytes()
    assert analyse_wav(plain).pcm_sha256 == analyse_wav(tagged).pcm_sha256
    other = write_wav(tmp_path / "other.wav", samples[::-1])
    assert analyse_wav(other).pcm_sha256 != analyse_wav(plain).pcm_sha256
    assert analyse_wav(plain).frame_db.tolist() == analyse_pcm(samples).frame_db.tolist()


def test_a_long_leg_is_read_in_pieces(tmp_path: Path) -> None:
    """Analysing a 30-minute leg (58 MB) holds a few MB at a time, not the file."""
    minute = pcm(voice(60, [(5, 25), (30, 55)]) + noise(60))
    path = tmp_path / "long.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        for _ in range(30):
            wav.writeframes(minute.tobytes())
    tracemalloc.start()
    analysed = analyse_wav(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert analysed.duration_seconds == 1800.0
    assert peak < 16 * 1024 * 1024, peak  # the file is 57.6 MB
    assert len(detect_speech(analysed)) == 60


def test_provenance_names_the_detector_and_every_parameter() -> None:
    """The labels' provenance says which detector, version and thresholds produced them."""
    made = provenance()
    assert made["detector"] == "energy-hysteresis" and made["version"] == 1
    assert made["min_gap"] == 0.3 and made["min_speech"] == 0.2
