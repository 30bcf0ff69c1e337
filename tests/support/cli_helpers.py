"""Helpers for the command-line script tests: CSVs of source-server URLs, stored-file facts,
and the environment a script (or a cron job) reads its settings from."""

from __future__ import annotations

import csv
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from diarization_audio.cli.batch import main as batch_main
from diarization_audio.service.process import service_environment
from diarization_audio.settings import Settings, get_settings
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.stores import make_settings

HEADER = ["conversation_id", "agent_audio_url", "customer_audio_url"]
# Two-second corpus files (conftest's corpus_dir), in a different format for each speaker.
CORPUS = ["mp3.mp3", "wav.wav", "flac.flac", "ogg.ogg", "m4a.m4a", "aac.aac", "opus.opus"]
CORPUS_SECONDS = 2.0


def conversation_rows(source: SourceServer, count: int, prefix: str = "conv") -> list[list[str]]:
    """`count` CSV rows of real audio; every fifth conversation has no customer audio."""
    rows = []
    for n in range(count):
        agent = source.file_url(CORPUS[n % len(CORPUS)])
        customer = "" if n % 5 == 4 else source.file_url(CORPUS[(n + 1) % len(CORPUS)])
        rows.append([f"{prefix}_{n:03d}", agent, customer])
    return rows


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def audio_hits(source: SourceServer) -> int:
    """Requests the source server answered for audio, over every route that serves a file."""
    return sum(count for path, count in source.hits.items() if not path.startswith("/status"))


def wav_durations(directory: Path) -> dict[str, float]:
    """Name -> duration in seconds of every stored .wav file, read from its header."""
    durations = {}
    for path in sorted(directory.glob("*.wav")):
        with wave.open(str(path)) as wav:
            durations[path.name] = wav.getnframes() / wav.getframerate()
    return durations


def run_batch(csv_path: Path, *servers: str, extra: tuple[str, ...] = ()) -> int:
    """The batch script on `csv_path` against `servers`, quietly, its failed rows beside it."""
    options = [part for server in servers for part in ("--server", server)]
    return batch_main([str(csv_path), *options, "--no-progress",
                       "--failed-rows-dir", str(csv_path.parent), *extra])  # fmt: skip


def use_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Make the scripts in this process read `settings` from the environment, as in real use."""
    for name, value in service_environment(settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def populate(settings: Settings, server_url: str, source: SourceServer, count: int) -> None:
    """Store `count` conversations through the running service, plus one 'supervisor' file."""
    csv_path = write_csv(Path(settings.log_dir) / "populate.csv", conversation_rows(source, count))
    assert run_batch(csv_path, server_url) == 0  # its failed rows would go to the log folder
    response = httpx.post(
        server_url + "/download/single",
        data={"conversation_id": "conv_000", "audio_url": source.file_url("flac.flac"),
              "speaker_label": "supervisor"},
        trust_env=False,
        timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text


@contextmanager
def populated_service(base: Path, source: SourceServer) -> Iterator[tuple[Settings, ServerProcess]]:
    """A running service on `base` holding six conversations (one without customer audio) and
    a supervisor file: 12 two-second files in all."""
    settings = make_settings(base)
    with pytest.MonkeyPatch.context() as patch, ServerProcess(settings) as server:
        use_settings(patch, settings)
        populate(settings, server.base_url, source, 6)
        yield settings, server
    get_settings.cache_clear()
