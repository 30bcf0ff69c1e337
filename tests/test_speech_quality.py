"""Per-leg SNR and music share measured on WAVs made at test time, the flags they raise, and
the labeller storing both with its thresholds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from support.speech_calls import RATE, speak, to_int16, write_wav
from support.stores import make_settings, stored_wav

from diarization_audio.labels.activity import detect_speech, label_legs
from diarization_audio.labels.analysis import analyse_pcm, analyse_wav
from diarization_audio.labels.labeller import label_conversation, thresholds_of
from diarization_audio.labels.quality import LegQuality, leg_quality, quality_flags_of
from diarization_audio.store.tracker import MetadataTracker

SPANS = [(1.0, 3.0), (4.5, 7.0), (8.0, 9.5)]
SENTENCES = ("please hold while I check the order", "the parcel left the warehouse on monday")


def rms(dbfs: float) -> float:
    return float(10 ** (dbfs / 20))


def leg_wav(directory: Path, name: str, samples: np.ndarray) -> Path:
    return write_wav(directory / f"{name}.wav", to_int16(samples))


def noisy_bursts(seconds: float, speech_dbfs: float, noise_dbfs: float | None) -> np.ndarray:
    """Spoken sentences filling SPANS at `speech_dbfs` (RMS over the spans) over white noise at
    `noise_dbfs` (None: digital silence)."""
    talk = np.concatenate([speak(text, "en-us") for text in SENTENCES])
    signal = np.zeros(round(seconds * RATE))
    for start, end in SPANS:
        part = slice(round(start * RATE), round(end * RATE))
        signal[part] = np.resize(talk, part.stop - part.start)
    inside = np.concatenate([signal[round(s * RATE) : round(e * RATE)] for s, e in SPANS])
    signal *= rms(speech_dbfs) / np.sqrt(np.mean(inside**2))
    if noise_dbfs is not None:
        signal += np.random.default_rng(7).normal(0, rms(noise_dbfs), signal.size)
    return signal


def test_snr_is_the_speech_level_over_the_noise_floor(tmp_path: Path) -> None:
    """Speech at -20 dBFS over noise at -50 dBFS measures 30 dB, on the detector's own turns."""
    leg = analyse_wav(leg_wav(tmp_path, "leg", noisy_bursts(11.0, -20.0, -50.0)))
    segments = detect_speech(leg)
    assert len(segments) == len(SPANS)
    for (start, end), (want_start, want_end) in zip(segments, SPANS, strict=True):
        assert abs(start - want_start) < 0.3 and abs(end - want_end) < 0.3
    quality = leg_quality(leg, segments)
    assert quality.snr_db == pytest.approx(30.0, abs=1.5)
    assert quality.music_share == 0.0


def test_snr_follows_the_noise_db_for_db_on_spoken_speech(tmp_path: Path) -> None:
    """A spoken sentence over noise 15 dB louder measures 15 dB less SNR (within 1.5 dB)."""
    voice = speak("I would like to check the status of my order please", "en-us")
    speech = np.concatenate((np.zeros(RATE), 0.3 * voice, np.zeros(RATE)))
    measured = []
    for noise_dbfs in (-65.0, -50.0):
        noise = np.random.default_rng(3).normal(0, rms(noise_dbfs), speech.size)
        leg = analyse_wav(leg_wav(tmp_path, f"spoken{noise_dbfs}", speech + noise))
        quality = leg_quality(leg, detect_speech(leg))
        assert quality.snr_db is not None
        measured.append(quality.snr_db)
    assert measured[0] - measured[1] == pytest.approx(15.0, abs=1.5)


def test_legs_without_speech_or_without_noise(tmp_path: Path) -> None:
    """No speech: no SNR. Speech between stretches of digital silence: the floor falls back to
    the leg's 10th-percentile level (silence), so the SNR is very high. All speech: no SNR."""
    quiet = analyse_wav(leg_wav(tmp_path, "quiet", noisy_bursts(11.0, -100.0, -50.0)))
    assert detect_speech(quiet) == []
    assert leg_quality(quiet, []) == LegQuality(None, 0.0)
    clean = analyse_wav(leg_wav(tmp_path, "clean", noisy_bursts(11.0, -20.0, None)))
    snr = leg_quality(clean, detect_speech(clean)).snr_db
    assert snr is not None and snr > 60
    assert leg_quality(clean, [(0.0, 11.0)]).snr_db is None


def test_music_share_is_the_detectors_music_frames_over_the_duration(tmp_path: Path) -> None:
    """The share comes from LegAudio.music_frames (whatever detector fills it); 0 with no audio."""
    leg = analyse_wav(leg_wav(tmp_path, "leg", noisy_bursts(10.0, -20.0, -50.0)))
    assert leg.music_frames == 0
    frames = round(2.5 / leg.frame_seconds)
    assert leg_quality(dataclasses.replace(leg, music_frames=frames), []).music_share == 0.25
    empty = analyse_pcm(np.zeros(0, np.int16))
    assert leg_quality(dataclasses.replace(empty, music_frames=3), []).music_share == 0.0


def test_flags_name_each_leg_past_its_threshold() -> None:
    """low_snr under the threshold (not at it), music over it; unknown SNR never flags."""
    qualities = {
        "agent": LegQuality(snr_db=25.0, music_share=0.234),
        "customer": LegQuality(snr_db=6.24, music_share=0.2),
        "third": LegQuality(snr_db=None, music_share=0.0),
        "fourth": LegQuality(snr_db=10.0, music_share=0.0),
    }
    assert quality_flags_of(qualities, low_snr_db=10.0, music_share=0.2) == {
        "low_snr": "customer: 6.2 dB",
        "music": "agent: 23% music or tones",
    }
    assert quality_flags_of(qualities, low_snr_db=30.0, music_share=0.5) == {
        "low_snr": "agent: 25.0 dB; customer: 6.2 dB; fourth: 10.0 dB"
    }


def test_the_labeller_stores_each_legs_measures_and_flags_by_its_settings(
    tmp_path: Path,
) -> None:
    """label_conversation stores each leg's SNR and music share as leg_quality measures them,
    and flags low_snr by the LOW_SNR_DB it is given: 40 dB flags a 30 dB leg, 10 dB does not."""
    samples = {"agent": noisy_bursts(11.0, -20.0, -50.0), "customer": np.zeros(11 * RATE)}
    samples["customer"][int(3.2 * RATE) : int(4.3 * RATE)] = np.random.default_rng(5).normal(
        0, rms(-25.0), int(4.3 * RATE) - int(3.2 * RATE)
    )
    samples["customer"] += np.random.default_rng(6).normal(0, rms(-60.0), 11 * RATE)
    paths = {leg: leg_wav(tmp_path, leg, signal) for leg, signal in samples.items()}
    analyses = {leg: analyse_wav(path) for leg, path in paths.items()}
    labels = label_legs(analyses)
    expected = {leg: leg_quality(analyses[leg], labels[leg]) for leg in paths}
    for low_snr_db, flagged in ((10.0, False), (40.0, True)):
        settings = make_settings(tmp_path / str(low_snr_db), low_snr_db=low_snr_db)
        tracker = MetadataTracker.from_settings(settings)
        for leg, path in paths.items():
            tracker.record_file("c1", leg, stored_wav(path))
        assert label_conversation(tracker, "c1", thresholds_of(settings)) is not None
        [conversation] = tracker.stored_conversations()
        tracker.close()
        measured = {leg.speaker_label: (leg.snr_db, leg.music_share) for leg in conversation.legs}
        assert measured == {leg: (q.snr_db, q.music_share) for leg, q in expected.items()}
        assert ("low_snr" in conversation.flags) is flagged
    assert expected["agent"].snr_db is not None and 20 < expected["agent"].snr_db < 40
    assert conversation.flags["low_snr"].startswith("agent: ")
