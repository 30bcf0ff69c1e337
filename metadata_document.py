"""The metadata document's shape: entries and their totals, statistics, the recent changes.

Pure functions over the parsed document; metadata_tracker.py does every read and write of the
file. The layout and the guarantees are described there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from errors import InvalidInput

SCHEMA_VERSION = 1
MB = 1024 * 1024
# How much of the history the document's head keeps for processes that are behind: at most
# this many revisions, holding at most this many entries in all. A bigger write (an import)
# is not kept: processes behind it read the whole document again.
JOURNAL_REVISIONS = 16
JOURNAL_ENTRIES = 64

Document = dict[str, Any]
Entry = dict[str, Any]


def empty_document() -> Document:
    return {"schema_version": SCHEMA_VERSION, "updated_at": None, "conversations": {}}


def entry_totals(speakers: dict[str, dict[str, Any]]) -> dict[str, Any]:
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


def revision_of(doc: Document) -> int:
    revision = doc.get("revision")
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else 0


def next_journal(doc: Document, revision: int, changed: dict[str, Entry]) -> list[dict[str, Any]]:
    """The `recent_changes` of the next revision: the last few writes, newest last."""
    if len(changed) > JOURNAL_ENTRIES:
        return []  # an import: processes behind it read the whole document again
    kept = _changes(doc)
    kept.append({"revision": revision, "conversations": changed})
    kept = kept[-JOURNAL_REVISIONS:]
    while sum(len(c["conversations"]) for c in kept) > JOURNAL_ENTRIES:
        kept.pop(0)
    return kept


def _changes(doc: Document) -> list[dict[str, Any]]:
    """The well-formed items of a document's `recent_changes`, oldest first."""
    found = doc.get("recent_changes")
    if not isinstance(found, list):
        return []
    return [
        c for c in found
        if isinstance(c, dict) and isinstance(c.get("revision"), int)
        and isinstance(c.get("conversations"), dict)
    ]  # fmt: skip


def catch_up(
    old: Document, head: Document, totals: Aggregate | None
) -> tuple[Document, Aggregate | None] | None:
    """`old` brought to `head`'s revision from the head's recent changes, with its totals.

    None when that cannot be trusted: the revision did not move forward (something else wrote
    the file, or an older copy was put back), a revision in between is not in the head, or the
    result does not hold as many conversations as the head says.
    """
    have = revision_of(old)
    if not have:
        return None
    want = revision_of(head)
    changes = {c["revision"]: c["conversations"] for c in _changes(head)}
    if want <= have or any(r not in changes for r in range(have + 1, want + 1)):
        return None
    conversations = dict(old["conversations"])
    for revision in range(have + 1, want + 1):
        for conversation_id, entry in changes[revision].items():
            if totals is not None:
                totals = totals.replace(conversations.get(conversation_id), entry)
            conversations[conversation_id] = entry
    if len(conversations) != head.get("conversation_count"):
        return None
    head["conversations"] = conversations
    return head, totals
