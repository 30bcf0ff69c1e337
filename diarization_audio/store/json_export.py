"""The JSON document `conversations_metadata.json`: its entries, reading it, its one writer.

The database (store/tracker.py) is the record; this document is an export of it that people,
`jq` and pandas read directly:

    {"schema_version": 2, "updated_at": "...", "conversation_count": 2,
     "conversations": {"<id>": {"conversation_id", "created_at", "updated_at",
                                "speakers": {"<label>": <stored file>}, "total": {...}}}}

Version 1 was the same document when it was the store itself; it also carried a journal of
recent changes at its head. `read_document` reads either version, for the one-time import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError

from diarization_audio.atomic import write_atomically
from diarization_audio.errors import MetadataCorrupt, StorageError
from diarization_audio.progress import MB
from diarization_audio.store.schema import StoredFile, size_mb

FILE_FIELDS = list(StoredFile.model_fields)

log = logging.getLogger(__name__)

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

    def write(handle: IO[bytes]) -> int:
        handle.write(head[:-2] + b',\n  "conversations": {')
        separator = b"\n    "
        for conversation_id, entry in entries:
            body = orjson.dumps(entry, option=orjson.OPT_INDENT_2)
            handle.write(separator + orjson.dumps(conversation_id) + b": ")
            handle.write(body.replace(b"\n", b"\n    "))
            separator = b",\n    "
        handle.write(b"\n  }\n}\n" if separator != b"\n    " else b"}\n}\n")
        return handle.tell()

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomically(path, write, binary=True)
    except OSError as exc:
        raise StorageError(
            f"cannot write the metadata file: {exc.strerror}", log_detail=str(path)
        ) from exc


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
