"""The JSON document `conversations_metadata.json`: its entries, the statistics, its one writer.

The database (metadata_tracker.py) is the record; this document is an export of it that people,
`jq` and pandas read directly:

    {"schema_version": 2, "updated_at": "...", "conversation_count": 2,
     "conversations": {"<id>": {"conversation_id", "created_at", "updated_at",
                                "speakers": {"<label>": <stored file>}, "total": {...}}}}

Version 1 was the same document when it was the store itself; it also carried a journal of
recent changes at its head. `read_document` reads either version, for the one-time import.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, Protocol

import orjson
from filelock import FileLock, Timeout
from pydantic import ValidationError

from diarization_audio.errors import AudioError, InvalidInput, MetadataCorrupt, StorageError
from diarization_audio.store.schema import MB, StoredFile, size_mb

FILE_FIELDS = list(StoredFile.model_fields)

log = logging.getLogger(__name__)
BUSY_TIMEOUT_SECONDS = 120
EXPORT_REST_FACTOR = 4

DOCUMENT_VERSION = 2

Entry = dict[str, Any]


def entry_totals(speakers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    size = sum(f["file_size_bytes"] for f in speakers.values())
    seconds = sum(f["duration_seconds"] for f in speakers.values())
    return {
        "files": len(speakers),
        "file_size_bytes": size,
        "size_mb": round(size / MB, 3),
        "duration_seconds": round(seconds, 3),
        "duration_minutes": round(seconds / 60, 3),
        "duration_hours": round(seconds / 3600, 5),
    }


def make_entry(
    conversation_id: str, created_at: str, updated_at: str, speakers: dict[str, dict[str, Any]]
) -> Entry:
    """One conversation as the document and the API show it; `speakers` holds file_dict()s."""
    return {
        "conversation_id": conversation_id,
        "created_at": created_at,
        "updated_at": updated_at,
        "speakers": speakers,
        "total": entry_totals(speakers),
    }


def file_dict(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored file's fields, from a row holding them, as StoredFile.model_dump() gives them.

    Built directly rather than through the model: the export makes one per stored file.
    """
    found = {name: row[name] for name in FILE_FIELDS}
    found["file_size_mb"] = size_mb(found["file_size_bytes"])
    return found


@dataclass(frozen=True)
class Totals:
    """What `/statistics` needs of the whole collection."""

    conversations: int = 0
    micros: int = 0
    size_bytes: int = 0
    first: str | None = None
    last: str | None = None


MAX_TARGET_HOURS = 1e9  # beyond any collection; keeps the arithmetic finite


def check_target(target_hours: float) -> float:
    if not (isinstance(target_hours, (int, float)) and math.isfinite(target_hours)):
        raise InvalidInput(f"target_hours must be a positive number, got {target_hours!r}")
    if not 0 < target_hours <= MAX_TARGET_HOURS:
        raise InvalidInput(
            f"target_hours must be a positive number up to {MAX_TARGET_HOURS:g}, "
            f"got {target_hours!r}"
        )
    return float(target_hours)


def statistics_of(
    totals: Totals, target_hours: float, now: str, speech_micros: int | None = None
) -> dict[str, Any]:
    """The `/statistics` answer from the collection's totals.

    With `speech_micros`, progress toward the target is counted in speech hours rather than
    audio hours (`progress.measured_in` says which).
    """
    target_hours = check_target(target_hours)
    count = totals.conversations
    seconds = totals.micros / 1_000_000
    size_bytes = totals.size_bytes
    measured = seconds if speech_micros is None else speech_micros / 1_000_000
    hours = measured / 3600
    remaining = max(target_hours - hours, 0.0)
    average_hours = hours / count if count else 0.0
    needed = math.ceil(round(remaining / average_hours, 9)) if average_hours > 0 else 0
    return {
        "summary": {
            "total_conversations": count,
            "total_hours": round(hours, 4),
            "total_minutes": round(seconds / 60, 2),
            "total_size_mb": round(size_bytes / MB, 2),
            "total_size_gb": round(size_bytes / MB / 1024, 3),
            "average_duration_minutes": round(seconds / 60 / count, 2) if count else 0.0,
            "average_size_mb": round(size_bytes / MB / count, 2) if count else 0.0,
            "first_download": totals.first,
            "last_download": totals.last,
        },
        "progress": {
            "measured_in": "audio" if speech_micros is None else "speech",
            "target_hours": target_hours,
            "current_hours": round(hours, 4),
            "remaining_hours": round(remaining, 4),
            "progress_percentage": round(min(hours / target_hours * 100, 100.0), 2),
            "estimated_conversations_needed": needed,
            "target_reached": hours >= target_hours,
        },
        "timestamp": now,
    }


# Reading (the one-time import) and writing ------------------------------------------------


def read_document(path: Path) -> dict[str, Any] | None:
    """The document at `path` (None when there is none); MetadataCorrupt when unusable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(
            f"cannot read the metadata file: {exc.strerror}", log_detail=str(path)
        ) from exc
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MetadataCorrupt(
            f"the metadata file is not valid JSON ({exc}); refusing to import it",
            log_detail=str(path),
        ) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("conversations"), dict):
        raise MetadataCorrupt(
            "the metadata file has no 'conversations' object; refusing to import it",
            log_detail=str(path),
        )
    return doc


def write_document(
    path: Path, count: int, updated_at: str | None, entries: Iterable[tuple[str, Entry]]
) -> int:
    """Write the document atomically, streaming `entries` in order; returns its size in bytes.

    Memory stays flat whatever the collection's size: entries are serialised one at a time
    into a temporary file beside `path`, which is fsynced and renamed into place.
    """
    head = orjson.dumps(
        {"schema_version": DOCUMENT_VERSION, "updated_at": updated_at, "conversation_count": count},
        option=orjson.OPT_INDENT_2,
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(head[:-2] + b',\n  "conversations": {')
            separator = b"\n    "
            for conversation_id, entry in entries:
                body = orjson.dumps(entry, option=orjson.OPT_INDENT_2)
                handle.write(separator + orjson.dumps(conversation_id) + b": ")
                handle.write(body.replace(b"\n", b"\n    "))
                separator = b",\n    "
            handle.write(b"\n  }\n}\n" if separator != b"\n    " else b"}\n}\n")
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(
            f"cannot write the metadata file: {exc.strerror}", log_detail=str(path)
        ) from exc
    return size


def document_rows(
    document: dict[str, Any], path: Path
) -> tuple[list[dict[str, str]], list[tuple[str, str, StoredFile]]]:
    """A read document as conversation rows (in its order) and (id, label, file) triples.

    Entries without any stored file are left out; anything else that does not fit is refused
    with MetadataCorrupt naming the conversation, so an import takes all or nothing.
    """
    conversation_rows, stored = [], []
    for conversation_id, entry in document["conversations"].items():
        speakers = entry.get("speakers") if isinstance(entry, dict) else None
        if not speakers:
            log.warning("import: conversation %r has no stored file; skipped", conversation_id)
            continue
        try:
            conversation_rows.append(
                {"conversation_id": conversation_id, "created_at": str(entry["created_at"]),
                 "updated_at": str(entry["updated_at"])}
            )  # fmt: skip
            for label, record in speakers.items():
                stored.append((conversation_id, label, StoredFile.model_validate(record)))
        except (AttributeError, KeyError, TypeError, ValueError, ValidationError) as exc:
            raise MetadataCorrupt(
                f"the metadata file's conversation {conversation_id!r} cannot be imported "
                f"({exc}); refusing to import it",
                log_detail=str(path),
            ) from exc
    return conversation_rows, stored


def entries_from_rows(rows: Iterable[Any]) -> Iterator[tuple[str, Entry]]:
    """Joined conversation/file rows, in conversation order, as one entry per conversation."""
    for conversation_id, group in groupby(rows, key=lambda row: row["conversation_id"]):
        speakers, first = {}, None
        for row in group:
            first = first or row
            speakers[row["speaker_label"]] = file_dict(row)
        assert first is not None
        yield (
            conversation_id,
            make_entry(conversation_id, first["created_at"], first["updated_at"], speakers),
        )


# Keeping the export current --------------------------------------------------------------


@dataclass(frozen=True)
class Export:
    """One JSON export: where, how many conversations, how big, how long it took."""

    path: Path
    conversations: int
    size_bytes: int
    seconds: float
    revision: int


class Exportable(Protocol):
    """What the exporter needs of the store (metadata_tracker.MetadataTracker)."""

    export_path: Path

    def export_due(self) -> bool: ...

    def export_json(self, force: bool = False, path: Path | None = None) -> Export | None: ...


class JsonExporter:
    """Keeps the JSON document at most `interval` seconds behind the store, off request paths
    (or, for a store so large that one export takes longer than a fifth of that, four times the
    export's own duration).

    Every process of the service runs one; a lock beside the document lets one process at a
    time write it, and the store's exported revision tells the others there is nothing to do.
    """

    def __init__(self, tracker: Exportable, interval: float) -> None:
        self.tracker = tracker
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="json-export", daemon=True)
        self._lock = FileLock(str(tracker.export_path) + ".lock", timeout=0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop, after one last export so the document is current when the service ends."""
        self._stop.set()
        self._thread.join()
        self.export(wait=True)

    def _run(self) -> None:
        pause = self.interval
        while not self._stop.wait(pause):
            done = self.export(wait=False)
            # A large store takes seconds to export: rest long enough after each export that
            # exporting takes at most a fifth of one core, however often the store changes.
            pause = max(self.interval, EXPORT_REST_FACTOR * done.seconds) if done else self.interval

    def export(self, wait: bool) -> Export | None:
        try:
            if not self.tracker.export_due():
                return None
            with self._lock.acquire(timeout=BUSY_TIMEOUT_SECONDS if wait else 0):
                done = self.tracker.export_json()
        except Timeout:
            return None  # another process is writing it
        except (AudioError, OSError) as exc:
            log.warning("JSON export failed: %s", getattr(exc, "message", exc))
            return None
        if done is not None:
            log.debug("exported %d conversations to %s (%.2f s)", done.conversations,
                      done.path, done.seconds)  # fmt: skip
        return done


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
