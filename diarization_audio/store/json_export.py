"""The JSON document `conversations_metadata.json`: its entries, reading it, its one writer.

The database (store/tracker.py) is the record; this document is an export of it that people,
`jq` and pandas read directly:

    {"schema_version": 2, "updated_at": "...", "conversation_count": 2,
     "conversations": {"<id>": {"conversation_id", "created_at", "updated_at",
                                "speakers": {"<label>": <stored file>}, "total": {...}}}}

Version 1 was the same document when it was the store itself; it also carried a journal of
recent changes at its head. `read_document` reads either version, for the one-time import.

An export copies the leading entries that did not change since the export before it from the
document that export wrote (`kept_entries`), byte for byte, and writes the rest from the store:
the conversations are in the order first stored, so a new one only adds to the end. The copy
is used only while the file is still the one that export wrote (same inode, size and
modification time, as the store recorded them), so an edited or replaced document is written
whole again.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
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
# The document's layout, as write_document makes it: every entry of "conversations" begins with
# ENTRY_START, and nothing else does (JSON strings escape newlines; deeper keys are indented more).
ENTRY_START = b'\n    "'
DOCUMENT_END = b"\n  }\n}\n"
_HEAD = re.compile(
    rb'\{\n  "schema_version": 2,\n  "updated_at": (?:null|"[^"\\\n]*"),\n'
    rb'  "conversation_count": (\d+),\n  "conversations": \{'
)
HEAD_BYTES = 256  # the head, before the first entry, fits
COPY_BYTES = 1 << 20

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


def file_identity(status: os.stat_result) -> str:
    """Which file this is: its inode, size and modification time (rewriting it changes them)."""
    return f"{status.st_ino}:{status.st_size}:{status.st_mtime_ns}"


@dataclass(frozen=True)
class KeptEntries:
    """The first `count` entries of an exported document: bytes `start:stop` of `source`."""

    source: IO[bytes]
    start: int
    stop: int
    count: int

    def copy_to(self, handle: IO[bytes]) -> None:
        """OSError if the file shrank meanwhile (an export never changes one in place)."""
        self.source.seek(self.start)
        left = self.stop - self.start
        while left:
            chunk = self.source.read(min(left, COPY_BYTES))
            if not chunk:
                raise OSError(errno.EIO, "the document copied from shrank meanwhile")
            handle.write(chunk)
            left -= len(chunk)


@dataclass(frozen=True)
class Written:
    """A document written: its size, and its file's identity (`file_identity`)."""

    size_bytes: int
    identity: str


@contextmanager
def kept_entries(
    path: Path, identity: str | None, count: int, last_id: str | None
) -> Iterator[KeptEntries | None]:
    """The first `count` entries of the document at `path`, the last of them `last_id`'s, while
    the file is the one an export wrote (`identity`); None where they cannot be reused.

    The file stays open meanwhile: another document renamed into place changes nothing here.
    """
    with ExitStack() as stack:
        yield _kept(stack, path, identity, count, last_id)


def _kept(
    stack: ExitStack, path: Path, identity: str | None, count: int, last_id: str | None
) -> KeptEntries | None:
    if identity is None or count == 0 or last_id is None:
        return None
    # Read, not mapped: a file cut short while mapped would kill the process with SIGBUS.
    try:
        source = stack.enter_context(path.open("rb"))
        status = os.fstat(source.fileno())
        if file_identity(status) != identity:
            return None
        head = _HEAD.match(source.read(HEAD_BYTES))
        stop = status.st_size - len(DOCUMENT_END)
        end = _read(source, stop, status.st_size)
        if head is None or int(head[1]) < count or end != DOCUMENT_END:
            return None
        # Where entries `count` and `count + 1` begin (the document's own count says how many).
        wanted = int(head[1]) - count + 1
        starts = _entry_starts(source, head.end(), stop, wanted)
        if len(starts) < wanted:
            return None
        following = starts[-2] if wanted > 1 else stop
        # The store's conversations up to `last_id` are the document's, less any erased since:
        # the `count`-th entry being `last_id`'s says none of those was.
        key = ENTRY_START[:-1] + orjson.dumps(last_id) + b": {"
        if _read(source, starts[-1], starts[-1] + len(key)) != key:
            return None
        if following == stop:
            return KeptEntries(source, head.end(), stop, count)
        if _read(source, following - 1, following) != b",":
            return None
        return KeptEntries(source, head.end(), following - 1, count)
    except OSError:
        return None


def _read(source: IO[bytes], start: int, stop: int) -> bytes:
    source.seek(start)
    return source.read(stop - start)


def _entry_starts(source: IO[bytes], start: int, stop: int, wanted: int) -> list[int]:
    """Where the last `wanted` entries between `start` and `stop` begin, the last first (fewer
    when there are not that many), reading back from `stop` a block at a time."""
    found: list[int] = []
    base, window, unsearched = stop, b"", 0  # window holds bytes base:, searched from its end
    while len(found) < wanted and base > start:
        lower = max(start, base - COPY_BYTES)
        block = _read(source, lower, base)
        if len(block) != base - lower:
            return []
        window, unsearched, base = block + window[:unsearched], unsearched + len(block), lower
        while len(found) < wanted and (at := window.rfind(ENTRY_START, 0, unsearched)) >= 0:
            found.append(base + at)
            unsearched = at
    return found


def write_document(
    path: Path,
    count: int,
    updated_at: str | None,
    entries: Iterable[tuple[str, Entry]],
    kept: KeptEntries | None = None,
) -> Written:
    """Write the document atomically: the `kept` entries copied, then `entries` streamed in
    order.

    Memory stays flat whatever the collection's size: entries are serialised one at a time
    into a temporary file beside `path`, which is fsynced and renamed into place.
    """
    head = orjson.dumps(
        {"schema_version": DOCUMENT_VERSION, "updated_at": updated_at, "conversation_count": count},
        option=orjson.OPT_INDENT_2,
    )

    def write(handle: IO[bytes]) -> Written:
        handle.write(head[:-2] + b',\n  "conversations": {')
        separator = b"\n    "
        if kept is not None:
            kept.copy_to(handle)
            separator = b",\n    "
        for conversation_id, entry in entries:
            body = orjson.dumps(entry, option=orjson.OPT_INDENT_2)
            handle.write(separator + orjson.dumps(conversation_id) + b": ")
            handle.write(body.replace(b"\n", b"\n    "))
            separator = b",\n    "
        handle.write(DOCUMENT_END if separator != b"\n    " else b"}\n}\n")
        # Synced before its identity is read: a network filesystem may set the modification
        # time only when the data reaches the server.
        handle.flush()
        os.fsync(handle.fileno())
        return Written(handle.tell(), file_identity(os.fstat(handle.fileno())))

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
    """One JSON export: where, how many conversations (how many of them copied from the
    document before), how big, how long it took."""

    path: Path
    conversations: int
    size_bytes: int
    seconds: float
    revision: int
    kept: int = 0
