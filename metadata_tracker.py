"""The live metadata file: the only code that reads or writes conversations_metadata.json.

The document is one JSON object:

    {"schema_version": 1, "updated_at": "...", "conversations": {"<id>": <entry>, ...}}

and each entry holds the conversation's timestamps, one sub-entry per speaker label and the
conversation's totals. Every write happens under an inter-process lock, goes to a temporary
file that is flushed and fsynced, keeps the previous version as `<file>.bak` (a hard link, so
it costs nothing) and is renamed into place: readers never see a torn document, and writers in
several processes never lose each other's updates. Reads take no lock and are cached on the
file's identity (inode, size, mtime), so an unchanged file is parsed once per process. The
totals behind `/statistics` are kept beside the cached document and updated by each write, so
answering them does not walk every conversation again.

Run as a script, it prints the collection statistics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from filelock import FileLock, Timeout
from pydantic import ValidationError

from errors import AudioError, InvalidInput, MetadataCorrupt, StorageError
from settings import Settings, get_settings

SCHEMA_VERSION = 1
MB = 1024 * 1024
LOCK_TIMEOUT_SECONDS = 120

Document = dict[str, Any]
Entry = dict[str, Any]


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


def _empty_document() -> Document:
    return {"schema_version": SCHEMA_VERSION, "updated_at": None, "conversations": {}}


def _totals(speakers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    size = sum(int(f["file_size_bytes"]) for f in speakers.values())
    seconds = sum(float(f["duration_seconds"]) for f in speakers.values())
    return {
        "files": len(speakers),
        "file_size_bytes": size,
        "size_mb": round(size / MB, 3),
        "duration_seconds": round(seconds, 3),
        "duration_minutes": round(seconds / 60, 3),
        "duration_hours": round(seconds / 3600, 5),
    }


def _earliest_latest(stamps: list[str]) -> tuple[str | None, str | None]:
    """Earliest and latest ISO timestamps; plain string order when every stamp has one shape."""
    if not stamps:
        return None, None
    shapes = {(len(s), s[-6:]) for s in stamps}
    if len(shapes) == 1:
        return min(stamps), max(stamps)
    return min(stamps, key=datetime.fromisoformat), max(stamps, key=datetime.fromisoformat)


def _micros(seconds: object) -> int:
    # Whole microseconds: sums stay exact whatever order entries are added and removed in.
    return round(float(seconds) * 1_000_000)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Aggregate:
    """What `/statistics` needs from a document: counted once, then kept up to date by writes."""

    conversations: int = 0
    micros: int = 0
    size_bytes: int = 0
    first: str | None = None
    last: str | None = None

    @classmethod
    def of(cls, doc: Document) -> Aggregate:
        entries = [e for e in doc["conversations"].values() if e.get("speakers")]
        stamps = [f["downloaded_at"] for e in entries for f in e["speakers"].values()]
        first, last = _earliest_latest(stamps)
        return cls(
            conversations=len(entries),
            micros=sum(_micros(e["total"]["duration_seconds"]) for e in entries),
            size_bytes=sum(int(e["total"]["file_size_bytes"]) for e in entries),
            first=first,
            last=last,
        )

    def replace(self, old: Entry | None, new: Entry) -> Aggregate | None:
        """The aggregate after `old` (None: absent) became `new`; None when it must be recounted.

        Only replacing the earliest or the latest download needs a recount: every other change
        is a subtraction and an addition.
        """
        old_stamps = _stamps(old)
        if self.first in old_stamps or self.last in old_stamps:
            return None
        stamps = [s for s in (self.first, self.last) if s is not None] + _stamps(new)
        try:
            first, last = _earliest_latest(stamps)
        except ValueError:  # a stamp that is not ISO 8601: let the full count decide
            return None
        return Aggregate(
            conversations=self.conversations - _counts(old) + _counts(new),
            micros=self.micros - _entry_micros(old) + _entry_micros(new),
            size_bytes=self.size_bytes - _entry_bytes(old) + _entry_bytes(new),
            first=first,
            last=last,
        )


def _stamps(entry: Entry | None) -> list[str]:
    if not entry or not entry.get("speakers"):
        return []
    return [f["downloaded_at"] for f in entry["speakers"].values()]


def _counts(entry: Entry | None) -> int:
    return 1 if entry and entry.get("speakers") else 0


def _entry_micros(entry: Entry | None) -> int:
    return _micros(entry["total"]["duration_seconds"]) if entry and entry.get("speakers") else 0


def _entry_bytes(entry: Entry | None) -> int:
    return int(entry["total"]["file_size_bytes"]) if entry and entry.get("speakers") else 0


def compute_statistics(doc: Document, target_hours: float, now: str) -> dict[str, Any]:
    """The `/statistics` answer for one snapshot of the document."""
    return statistics_of(Aggregate.of(doc), target_hours, now)


def statistics_of(totals: Aggregate, target_hours: float, now: str) -> dict[str, Any]:
    """The `/statistics` answer from a document's aggregate."""
    if not (isinstance(target_hours, (int, float)) and math.isfinite(target_hours)):
        raise InvalidInput(f"target_hours must be a positive number, got {target_hours!r}")
    if target_hours <= 0:
        raise InvalidInput(f"target_hours must be a positive number, got {target_hours!r}")
    count = totals.conversations
    seconds = totals.micros / 1_000_000
    size_bytes = totals.size_bytes
    hours = seconds / 3600
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
            "target_hours": float(target_hours),
            "current_hours": round(hours, 4),
            "remaining_hours": round(remaining, 4),
            "progress_percentage": round(min(hours / target_hours * 100, 100.0), 2),
            "estimated_conversations_needed": needed,
            "target_reached": hours >= target_hours,
        },
        "timestamp": now,
    }


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
            return _empty_document()
        except OSError as exc:
            raise StorageError(f"cannot read metadata file {self.path}: {exc}") from exc
        with handle:
            st = os.fstat(handle.fileno())
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            with self._cache_guard:
                if self._cache is not None and self._cache[0] == identity:
                    return self._cache[1]
            raw = handle.read()
        doc = self._parse(raw)
        with self._cache_guard:
            self._cache = (identity, doc)
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
            for conversation_id, speaker_label, record in records:
                old = conversations.get(conversation_id)
                speakers = dict(old["speakers"]) if old else {}
                speakers[speaker_label] = record.to_dict()
                entry: Entry = {
                    "conversation_id": conversation_id,
                    "created_at": old["created_at"] if old else now,
                    "updated_at": now,
                    "speakers": speakers,
                    "total": _totals(speakers),
                }
                conversations[conversation_id] = entry
                entries.append(entry)
                if totals is not None:
                    totals = totals.replace(old, entry)
            if publish is not None:
                publish()
            new_doc = {"schema_version": SCHEMA_VERSION, "updated_at": now,
                       "conversations": conversations}  # fmt: skip
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
