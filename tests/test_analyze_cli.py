"""analyze_storage.py and metadata_tracker.py as scripts, on a store filled by the real service."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from support import ROOT
from support.cli_helpers import (
    conversation_rows,
    populated_service,
    use_settings,
    wav_durations,
    write_csv,
)
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.speech_calls import RATE, speak, to_int16, write_wav
from support.stores import copy_store, make_settings, recorded_conversations

from diarization_audio.cli import store as metadata_tracker
from diarization_audio.cli.report import main
from diarization_audio.labels.labeller import label_conversation, thresholds_of
from diarization_audio.service.process import service_environment
from diarization_audio.settings import Settings
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.tracker import MetadataTracker


@pytest.fixture(scope="module")
def populated(
    tmp_path_factory: pytest.TempPathFactory, source_server: SourceServer
) -> Iterator[tuple[Settings, ServerProcess]]:
    """Twelve files stored through a real service, which keeps running for the module."""
    with populated_service(tmp_path_factory.mktemp("populated"), source_server) as populated:
        yield populated


@pytest.fixture
def store(
    populated: tuple[Settings, ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """This test's own copy of the populated store, which the scripts read through settings."""
    original, _ = populated
    copy = make_settings(tmp_path)
    shutil.copytree(original.audio_storage_dir, copy.audio_storage_dir)
    copy_store(original, copy)
    use_settings(monkeypatch, copy)
    return copy


def report(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> dict[str, object]:
    assert main(["--json", *args]) == code
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_numbers_match_the_stored_files(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hours, speakers, durations, sizes, rate and projection agree with the WAV files on disk."""
    files = wav_durations(Path(store.audio_storage_dir))
    assert len(files) == 12
    hours = sum(files.values()) / 3600
    per_conversation: dict[str, float] = {}
    for name, seconds in files.items():
        conversation = name.rsplit("_", 1)[0]
        per_conversation[conversation] = per_conversation.get(conversation, 0) + seconds
    lengths = sorted(per_conversation.values())

    data = report(capsys, "--target", "0.01")
    progress, rate = data["progress"], data["rate"]
    assert isinstance(progress, dict) and isinstance(rate, dict)
    assert progress["current_hours"] == round(hours, 4)
    assert progress["remaining_hours"] == round(0.01 - hours, 4)
    assert progress["estimated_conversations_needed"] == math.ceil((0.01 - hours) / (hours / 6))
    assert rate["hours_last_24h"] == round(hours, 4)
    projected = datetime.now() + timedelta(days=(0.01 - hours) / round(hours, 4))
    assert rate["projected_target_date"] in {
        (projected + timedelta(days=d)).date().isoformat() for d in (-1, 0, 1)
    }

    def hours_of(suffix: str) -> float:
        return round(sum(s for name, s in files.items() if name.endswith(suffix)) / 3600, 4)

    assert data["speakers"] == {
        "agent": {"files": 6, "hours": hours_of("_agent.wav")},
        "customer": {"files": 5, "hours": hours_of("_customer.wav")},
        "other": {"files": 1, "hours": hours_of("_supervisor.wav")},
    }
    p90 = statistics.quantiles(lengths, n=10, method="inclusive")[8]
    median = statistics.median(lengths)
    # Each figure is the length to the millisecond shown, of files whose durations are stored to
    # the millisecond: within 1 ms of the WAV headers' (a quantile half-way between two stored
    # lengths, summed in whole microseconds, may round either way).
    assert data["durations"] == pytest.approx({
        "conversations": 6, "min": lengths[0], "median": median, "p90": p90, "max": lengths[-1],
    }, abs=0.001 + 1e-9)  # fmt: skip
    on_disk = sum(p.stat().st_size for p in Path(store.audio_storage_dir).glob("*.wav"))
    storage = data["storage"]
    assert isinstance(storage, dict)
    assert (storage["wav_files"], storage["wav_bytes"], storage["recorded_bytes"]) == (
        12, on_disk, on_disk,
    )  # fmt: skip
    assert data["consistency"] == {
        "ok": True, "missing_files": [], "size_mismatches": [], "unknown_files": []
    }  # fmt: skip


def test_human_report_and_summary_line(store: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """The printed report has the bar and every section; --summary-line is one line."""
    assert main(["--target", "100"]) == 0
    out = capsys.readouterr().out
    for section in ("Progress toward 100 h", "Hours by speaker", "Conversation durations",
                    "Storage", "Consistency", "  OK: every entry has its file"):  # fmt: skip
        assert section in out
    assert "  [----------------------------------------] 0.01%" in out
    assert main(["--target", "100", "--summary-line"]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith("0.0067/100 h (0.01%), 6 conversations,")


def test_speech_report_shows_the_legs_snr_and_music(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """--speech prints /statistics' SNR and music summary: median SNR over the measured legs
    (the stored tones are speech from end to end, so only a leg with pauses over noise has
    one), the low_snr and music counts; --json carries the same section."""
    rng = np.random.default_rng(1)
    samples = rng.normal(0, 0.003, 6 * RATE)  # noise at -50 dBFS, speech at -20 in the middle
    words = np.resize(speak("the parcel left the warehouse on monday", "en-us"), 2 * RATE)
    samples[2 * RATE : 4 * RATE] += words * 0.1 / np.sqrt(np.mean(words**2))
    path = write_wav(Path(store.audio_storage_dir) / "noisy_agent.wav", to_int16(samples))
    tracker = MetadataTracker.from_settings(store)
    tracker.record_file("noisy", "agent", StoredFile(
        filepath=str(path), url="http://127.0.0.1/noisy.wav", file_size_bytes=path.stat().st_size,
        duration_seconds=6.0, sample_rate=RATE, channels=1,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        downloaded_at=tracker.now(),
    ))  # fmt: skip
    assert label_conversation(tracker, "noisy", thresholds_of(store)) is not None
    expected = tracker.statistics(speech=True)["speech"]
    tracker.close()
    quality = expected["quality"]
    assert quality["snr_measured_legs"] == 1 and 25 < quality["snr_median_db"] < 35
    assert report(capsys, "--speech")["speech"] == expected
    assert main(["--speech"]) == 0
    out = capsys.readouterr().out
    unknown = expected["labelled_files"] - quality["snr_measured_legs"]
    assert (
        f"  SNR        median {quality['snr_median_db']:.1f} dB over "
        f"{quality['snr_measured_legs']} legs ({unknown} without speech or measured before); "
        f"{expected['flags'].get('low_snr', 0)} conversations low_snr\n"
    ) in out
    assert "  music      0 legs with music or tones; 0 conversations music\n" in out


def test_consistency_check_finds_missing_changed_and_unknown_files(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deleted file, a file of another size and a stray .wav are each reported; --strict fails."""
    storage = Path(store.audio_storage_dir)
    (storage / "conv_001_customer.wav").unlink()
    with open(storage / "conv_002_agent.wav", "ab") as handle:
        handle.write(b"\0" * 10)
    shutil.copy(storage / "conv_003_agent.wav", storage / "stray.wav")
    (storage / ".conv_009_agent.123.tmp.wav").write_bytes(b"in progress")  # not a problem

    check = report(capsys)["consistency"]
    size = (storage / "conv_002_agent.wav").stat().st_size
    assert check == {
        "ok": False,
        "missing_files": ["conv_001_customer.wav"],
        "size_mismatches": [
            {"file": "conv_002_agent.wav", "recorded_bytes": size - 10, "actual_bytes": size}
        ],
        "unknown_files": ["stray.wav"],
    }
    assert main([]) == 0
    assert "  3 problems:" in capsys.readouterr().out
    assert main(["--strict"]) == 4
    err = capsys.readouterr().err
    assert err == "error: the metadata and the stored files disagree (see above)\n"


def test_export_csv_has_every_field_of_every_file(
    store: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--export-csv writes conversations_metadata.csv with one row per file and every field."""
    monkeypatch.chdir(tmp_path)
    assert main(["--export-csv"]) == 0
    with open(tmp_path / "conversations_metadata.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = {
        (cid, label): {"conversation_id": cid, "speaker_label": label,
                       "filename": f"{cid}_{label}.wav", **record,
                       "conversation_created_at": entry["created_at"],
                       "conversation_updated_at": entry["updated_at"]}
        for cid, entry in recorded_conversations(store).items()
        for label, record in entry["speakers"].items()
    }  # fmt: skip
    assert len(rows) == len(expected) == 12
    for row in rows:
        wanted = expected[(row["conversation_id"], row["speaker_label"])]
        assert row == {key: str(value) for key, value in wanted.items()}


def test_save_and_check_target(
    store: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--save keeps exactly the printed report; --check-target exits 3 below the target, 0 at it."""
    monkeypatch.chdir(tmp_path)
    printed = report(capsys, "--save", "--target", "1000", "--check-target", code=3)
    (saved,) = tmp_path.glob("storage_report_*.json")
    assert json.loads(saved.read_text()) == printed
    assert main(["--summary-line", "--target", "0.001", "--check-target"]) == 0


def test_corrupt_metadata_is_one_line_and_exit_1(
    store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that is not a database is reported in one line, in both scripts, and kept."""
    path = Path(store.metadata_file).with_suffix(".sqlite3")
    path.write_bytes(b"not a database " * 100)
    assert main([]) == 1
    assert metadata_tracker.main([]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(
        line.startswith("error: the metadata database cannot be used") and str(path) in line
        for line in lines
    ), lines
    assert path.read_bytes() == b"not a database " * 100


def test_metadata_tracker_prints_the_statistics_endpoint_numbers(
    populated: tuple[Settings, ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    """`python3 metadata_tracker.py` prints the same summary and progress as GET /statistics."""
    settings, server = populated
    assert metadata_tracker.main(["--metadata-file", str(settings.metadata_file),
                                  "--target", "0.002"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    answer = httpx.get(server.base_url + "/statistics", params={"target_hours": 0.002},
                       trust_env=False).json()  # fmt: skip
    assert printed["summary"] == answer["summary"] and printed["progress"] == answer["progress"]
    assert printed["summary"]["total_conversations"] == 6


def test_reports_stay_consistent_while_the_service_writes(
    tmp_path: Path,
    settings: Settings,
    server_process: ServerProcess,
    source: SourceServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Reports taken during a batch never show a half-written store or a false problem."""
    use_settings(monkeypatch, settings)
    csv_path = write_csv(tmp_path / "batch.csv", conversation_rows(source, 13))
    batch = subprocess.Popen(
        [sys.executable, "batch_download_from_csv.py", str(csv_path), "--no-progress",
         "--server", server_process.base_url, "--failed-rows-dir", str(tmp_path)],
        cwd=ROOT, env=service_environment(settings), stdout=subprocess.DEVNULL,
    )  # fmt: skip
    counts: list[int] = []
    try:
        while batch.poll() is None or not counts:
            summary = report(capsys, "--strict")["summary"]
            assert isinstance(summary, dict)
            counts.append(summary["total_conversations"])
    finally:
        if batch.poll() is None:
            batch.kill()
    assert batch.wait() == 0
    assert counts == sorted(counts) and len(counts) > 1
    assert report(capsys, "--strict")["summary"] == report(capsys)["summary"]
    assert len(wav_durations(Path(settings.audio_storage_dir))) == 24
