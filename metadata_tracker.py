"""The live metadata file: the only code that reads or writes conversations_metadata.json.

The document is one JSON object:

    {"schema_version": 1, "updated_at": "...", "revision": 7, "conversation_count": 2,
     "recent_changes": [{"revision": 7, "conversations": {"<id>": <entry>}}, ...],
     "conversations": {"<id>": <entry>, ...}}

and each entry holds the conversation's timestamps, one sub-entry per speaker label and the
conversation's totals. Every write happens under an inter-process lock, goes to a temporary
file that is flushed and fsynced, keeps the previous version as `<file>.bak` (a hard link, so
it costs nothing) and is renamed into place: readers never see a torn document, and writers in
several processes never lose each other's updates.

Reads take no lock and are cached on the file's identity (inode, size, mtime), so an unchanged
file is parsed once per process. A process whose cached version is a few revisions behind
(another worker wrote) catches up from `recent_changes`, the entries the last few writes
replaced, read from the head of the file: the whole document is parsed again only when the
process is too far behind, or the file was written by something else than this module (its
revision did not move on). The totals behind `/statistics` are kept beside the cached document
and updated by each change, so answering them does not walk every conversation again.

Run as a script, it prints the collection statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

import orjson
from filelock import FileLock, Timeout
from pydantic import ValidationError

from errors import AudioError, MetadataCorrupt, StorageError
from metadata_document import MB as MB
from metadata_document import (
    SCHEMA_VERSION,
    Aggregate,
    catch_up,
    empty_document,
    entry_totals,
    next_journal,
    revision_of,
    statistics_of,
)
from metadata_document import Document as Document
from metadata_document import Entry as Entry
from metadata_document import compute_statistics as compute_statistics
from settings import Settings, get_settings

LOCK_TIMEOUT_SECONDS = 120
# Where the head ends: the top-level key is the only one indented by exactly two spaces, and
# JSON strings cannot hold a raw newline.
_HEAD_END = b',\n  "conversations": '
_HEAD_CHUNK = 64 * 1024
_HEAD_LIMIT = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileRecord:
    """What is stored about one converted file."""

    filepath: str
    url: str
    file_size_bytes: int
    duration_seconds: float
    sample_rate: int
    channels: int
    sha256: str
    downloaded_at: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["file_size_mb"] = round(self.file_size_bytes / MB, 3)
        data["duration_seconds"] = round(self.duration_seconds, 3)
        return data


class MetadataTracker:
    """Reads and atomically rewrites one metadata file; safe across threads and processes."""

    def __init__(self, path: Path | str, tz: tzinfo | str = "UTC") -> None:
        self.path = Path(path)
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.backup_path = self.path.with_name(self.path.name + ".bak")
        self._file_lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_SECONDS)
        self._thread_lock = threading.Lock()
        self._cache: tuple[tuple[int, int, int], Document] | None = None
        # The aggregate of one document object (compared by identity, never by value).
        self._aggregate: tuple[Document, Aggregate] | None = None
        self._cache_guard = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> MetadataTracker:
        return cls(settings.metadata_file, settings.log_timezone)

    def now(self) -> str:
        return datetime.now(self.tz).isoformat(timespec="seconds")

    # Reading -------------------------------------------------------------------------------

    def snapshot(self) -> Document:
        """The current document (treat it as read-only); raises MetadataCorrupt if unreadable."""
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - closed below, fstat needs the fd
        except FileNotFoundError:
            return empty_document()
        except OSError as exc:
            raise StorageError(f"cannot read metadata file {self.path}: {exc}") from exc
        with handle:
            st = os.fstat(handle.fileno())
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            with self._cache_guard:
                cached = self._cache
                totals = self._aggregate
            if cached is not None and cached[0] == identity:
                return cached[1]
            caught_up = None
            if cached is not None:
                head = _read_head(handle)
                if head is not None:
                    old = cached[1]
                    old_totals = totals[1] if totals is not None and totals[0] is old else None
                    caught_up = catch_up(old, head, old_totals)
            if caught_up is not None:
                doc, new_totals = caught_up
            else:
                handle.seek(0)
                doc, new_totals = self._parse(handle.read()), None
        with self._cache_guard:
            self._cache = (identity, doc)
            if new_totals is not None:
                self._aggregate = (doc, new_totals)
        return doc

    def _parse(self, raw: bytes) -> Document:
        hint = f"; the last good version, if any, is {self.backup_path}"
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MetadataCorrupt(
                f"metadata file {self.path} is not valid JSON ({exc}); refusing to touch it{hint}"
            ) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("conversations"), dict):
            raise MetadataCorrupt(
                f"metadata file {self.path} has no 'conversations' object; refusing to touch it"
                f"{hint}"
            )
        return doc

    def check(self) -> int:
        """Fail loudly if the file cannot be used; returns the number of conversations."""
        return len(self.snapshot()["conversations"])

    def get_conversation(self, conversation_id: str) -> Entry | None:
        entry: Entry | None = self.snapshot()["conversations"].get(conversation_id)
        return entry

    def get_file(self, conversation_id: str, speaker_label: str) -> dict[str, Any] | None:
        entry = self.get_conversation(conversation_id)
        if entry is None:
            return None
        found: dict[str, Any] | None = entry.get("speakers", {}).get(speaker_label)
        return found

    def list_conversations(self, limit: int, offset: int) -> tuple[int, list[Entry]]:
        conversations = self.snapshot()["conversations"]
        total = len(conversations)
        if offset >= total:
            return total, []
        items = list(conversations.values())
        return total, items[offset : offset + limit]

    def iter_files(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(conversation_id, speaker_label, file sub-entry) for every stored file."""
        for cid, entry in self.snapshot()["conversations"].items():
            for label, record in entry.get("speakers", {}).items():
                yield cid, label, record

    def statistics(self, target_hours: float = 100.0) -> dict[str, Any]:
        return statistics_of(self.aggregate(), target_hours, self.now())

    def aggregate(self) -> Aggregate:
        """The current document's totals, counted once per document version."""
        doc = self.snapshot()
        with self._cache_guard:
            if self._aggregate is not None and self._aggregate[0] is doc:
                return self._aggregate[1]
        totals = Aggregate.of(doc)
        with self._cache_guard:
            self._aggregate = (doc, totals)
        return totals

    # Writing -------------------------------------------------------------------------------

    def record_file(
        self,
        conversation_id: str,
        speaker_label: str,
        record: FileRecord,
        publish: Callable[[], None] | None = None,
    ) -> Entry:
        """Add or replace one speaker's file in a conversation and return the new entry.

        `publish` runs under the lock just before the document is written (the downloader
        renames the finished WAV into place there), so the file on disk and its entry always
        change together: concurrent writers of the same file cannot leave metadata describing
        another writer's bytes.
        """
        return self._record([(conversation_id, speaker_label, record)], publish)[0]

    def record_many(self, records: Iterable[tuple[str, str, FileRecord]]) -> list[Entry]:
        """Record several (conversation_id, speaker_label, record) files in one write.

        The same as calling `record_file` for each in order, at the cost of one write: for
        imports and back-fills, where one rewrite of the document per file would dominate.
        """
        return self._record(list(records), None)

    def _record(
        self, records: list[tuple[str, str, FileRecord]], publish: Callable[[], None] | None
    ) -> list[Entry]:
        with self._locked():
            doc = self.snapshot()
            with self._cache_guard:
                cached = self._aggregate
            totals = cached[1] if cached is not None and cached[0] is doc else None
            conversations = dict(doc["conversations"])
            now = self.now()
            entries = []
            changed: dict[str, Entry] = {}
            for conversation_id, speaker_label, record in records:
                old = conversations.get(conversation_id)
                speakers = dict(old["speakers"]) if old else {}
                speakers[speaker_label] = record.to_dict()
                entry: Entry = {
                    "conversation_id": conversation_id,
                    "created_at": old["created_at"] if old else now,
                    "updated_at": now,
                    "speakers": speakers,
                    "total": entry_totals(speakers),
                }
                conversations[conversation_id] = entry
                changed[conversation_id] = entry
                entries.append(entry)
                if totals is not None:
                    totals = totals.replace(old, entry)
            if publish is not None:
                publish()
            revision = revision_of(doc) + 1
            new_doc = {
                "schema_version": SCHEMA_VERSION,
                "updated_at": now,
                "revision": revision,
                "conversation_count": len(conversations),
                "recent_changes": next_journal(doc, revision, changed),
                "conversations": conversations,
            }
            self._write(new_doc)
            if totals is not None:
                with self._cache_guard:
                    self._aggregate = (new_doc, totals)
        return entries

    def _locked(self) -> _Locked:
        return _Locked(self)

    def _write(self, doc: Document) -> None:
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
        directory = self.path.parent
        tmp = directory / f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if self.path.exists():
                self._keep_backup()
            os.replace(tmp, self.path)
            _fsync_directory(directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write metadata file {self.path}: {exc}") from exc
        st = os.stat(self.path)
        with self._cache_guard:
            self._cache = ((st.st_ino, st.st_size, st.st_mtime_ns), doc)

    def _keep_backup(self) -> None:
        """Point `<file>.bak` at the version about to be replaced (a hard link: no copy)."""
        link = self.backup_path.with_name(f".{self.backup_path.name}.{uuid.uuid4().hex}")
        try:
            os.link(self.path, link)
        except OSError:
            return  # a filesystem without hard links keeps no backup rather than failing writes
        os.replace(link, self.backup_path)

    # Checks --------------------------------------------------------------------------------

    def snapshot_locked(self, read: Callable[[], Any]) -> tuple[Document, Any]:
        """The document and `read()`'s result with no write in between: both under the lock.

        For read-only checks that compare the document with the files on disk, which a write
        changes one after the other (file, then document). Every writer waits meanwhile, so
        `read` must be quick, like listing the storage directory.
        """
        with self._locked():
            return self.snapshot(), read()


def _read_head(handle: BinaryIO) -> Document | None:
    """The document without its conversations, read from the start of the file."""
    handle.seek(0)
    buffer = b""
    while len(buffer) < _HEAD_LIMIT:
        chunk = handle.read(_HEAD_CHUNK)
        if not chunk:
            return None
        start = max(len(buffer) - len(_HEAD_END), 0)
        buffer += chunk
        end = buffer.find(_HEAD_END, start)
        if end >= 0:
            try:
                head = orjson.loads(buffer[:end] + b"\n}")
            except orjson.JSONDecodeError:
                return None
            return head if isinstance(head, dict) else None
    return None


class _Locked:
    """Holds the thread lock, then the inter-process file lock."""

    def __init__(self, tracker: MetadataTracker) -> None:
        self.tracker = tracker

    def __enter__(self) -> None:
        self.tracker._thread_lock.acquire()
        try:
            self.tracker.path.parent.mkdir(parents=True, exist_ok=True)
            self.tracker._file_lock.acquire()
        except (Timeout, OSError) as exc:
            self.tracker._thread_lock.release()
            raise StorageError(f"cannot lock metadata file {self.tracker.path}: {exc}") from exc

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.tracker._file_lock.release()
        finally:
            self.tracker._thread_lock.release()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """Print the collection statistics as the service computes them."""
    parser = argparse.ArgumentParser(description="Print statistics of the collected audio.")
    parser.add_argument("--target", type=float, default=100.0, help="target hours (default 100)")
    parser.add_argument("--metadata-file", type=Path, help="metadata file (default from settings)")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        tracker = MetadataTracker(
            args.metadata_file or settings.metadata_file, settings.log_timezone
        )
        stats = tracker.statistics(args.target)
    except ValidationError as exc:
        problem = exc.errors()[0]
        name = str(problem["loc"][0]).upper()
        print(f"error: invalid settings: {name}: {problem['msg']}", file=sys.stderr)
        return 2
    except AudioError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
