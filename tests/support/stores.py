"""Stores for the tests: their settings, what they hold, and files to record in them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from diarization_audio.settings import Settings, settings_under
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.tracker import MetadataTracker
from diarization_audio.store.tracker import database_url as store_url

# Quick retries and short timeouts: a failing source costs a test a moment, not a minute.
QUICK: dict[str, object] = {
    "download_timeout_seconds": 3,
    "download_deadline_seconds": 20,
    "download_retries": 2,
    "download_retry_backoff_seconds": 0.01,
    "download_retry_max_wait_seconds": 0.5,
    "convert_timeout_seconds": 60,
    "min_free_disk_mb": 1,
    "metadata_export_seconds": 0.2,
}


def make_settings(base: Path, **overrides: object) -> Settings:
    """Settings that keep every file under `base` and retry quickly; ignores any .env file."""
    return settings_under(base, **{**QUICK, **overrides})


def exported_document(
    settings: Settings, until: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    """The JSON export once `until(document)` holds: it trails the store by design."""
    path = Path(settings.metadata_file)
    deadline = time.monotonic() + timeout
    while True:
        document: dict[str, Any] | None = None
        with contextlib.suppress(FileNotFoundError):
            document = json.loads(path.read_text())
        if document is not None and until(document):
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not reach the expected state: {document}")
        time.sleep(0.05)


def recorded_conversations(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every conversation the store holds (the record, not its JSON export), by id."""
    tracker = MetadataTracker.from_settings(settings)
    try:
        _, entries = tracker.list_conversations(1_000_000, 0)
    finally:
        tracker.close()
    return {entry["conversation_id"]: entry for entry in entries}


def copy_store(original: Settings, copy: Settings) -> None:
    """Copy a live SQLite store with SQLite's own backup, as a consistent snapshot."""
    source = sqlite3.connect(make_url(store_url(original)).database or "")
    target = sqlite3.connect(make_url(store_url(copy)).database or "")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def labelled_statistics(http: Any, timeout: float = 30, **params: object) -> dict[str, Any]:
    """GET /statistics (through a TestClient or an httpx.Client) once every stored file has its
    speech labels, which follow each answer by a moment."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = http.get("/statistics", params=params).json()
        if stats["speech"]["unlabelled_files"] == 0:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"files still unlabelled after {timeout:g} s: {stats['speech']}")
        time.sleep(0.02)


def stored(n: int, seconds: float = 60.0, stamp: str | None = None) -> StoredFile:
    """The n-th of a run of distinct stored files, about `seconds` long (n thousandths more,
    so every file has its own duration), stored n seconds apart unless `stamp` says when."""
    return StoredFile(
        filepath=f"/store/c{n}.wav",
        url=f"http://127.0.0.1/{n}.mp3",
        file_size_bytes=32000 * int(seconds) + n,
        duration_seconds=seconds + n / 1000,
        sample_rate=16000,
        channels=1,
        sha256=f"{n:064x}",
        downloaded_at=stamp or f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}+05:30",
    )


def stored_wav(path: Path) -> StoredFile:
    """The record of a 16 kHz mono WAV written at `path`, as the service would store it."""
    with wave.open(str(path)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    return StoredFile(
        filepath=str(path), url=f"http://127.0.0.1/{path.name}",
        file_size_bytes=path.stat().st_size, duration_seconds=seconds, sample_rate=16000,
        channels=1, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        downloaded_at="2026-12-06T10:00:00+05:30",
    )  # fmt: skip
