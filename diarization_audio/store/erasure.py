"""Erasing a conversation from the store: its rows go, the totals follow, a tombstone stays.

The functions here run inside the write transaction store/tracker.py hands them (as those of
store/speech_labels.py do). An erase removes the conversation's files, speech labels, flags and
failure rows, takes its audio, speech and overlap off the running totals, and writes a tombstone
(id, time, reason, what was removed). The tombstone is what a repeated erase answers with, and
what refuses a later download of the same id unless it is explicitly allowed: it is checked
again where a downloaded file is recorded, so an erase that lands while a download is in flight
wins. A download explicitly allowed lifts the tombstone when its file is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from diarization_audio.errors import Erased
from diarization_audio.store.schema import (
    conversation_flags,
    conversations,
    failures,
    files,
    micros,
    speaker_totals,
    speech,
    store_info,
    tombstones,
)
from diarization_audio.url_secrets import scrub


@dataclass(frozen=True)
class Erasure:
    """What erasing one conversation removed (the same answer every time it is erased)."""

    conversation_id: str
    erased_at: str
    reason: str
    files: int
    duration_seconds: float


def tombstone(conn: Connection, conversation_id: str) -> Erasure | None:
    row = conn.execute(
        select(tombstones).where(tombstones.c.conversation_id == conversation_id)
    ).first()
    if row is None:
        return None
    return Erasure(
        conversation_id=row.conversation_id,
        erased_at=row.erased_at,
        reason=row.reason,
        files=row.files,
        duration_seconds=row.duration_micros / 1_000_000,
    )


def refusal(found: Erasure) -> Erased:
    """The error that refuses storing an erased conversation again."""
    return Erased(
        f"conversation {found.conversation_id!r} was erased at {found.erased_at}; "
        "allow_erased=true stores it again"
    )


def check_or_lift(conn: Connection, conversation_id: str, allow_erased: bool) -> None:
    """Refuse recording a file of an erased conversation, or, when that is explicitly allowed,
    remove its tombstone: the conversation is then stored like any other."""
    found = tombstone(conn, conversation_id)
    if found is None:
        return
    if not allow_erased:
        raise refusal(found)
    conn.execute(delete(tombstones).where(tombstones.c.conversation_id == conversation_id))


def erased_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(tombstones)).scalar_one())


def stored_labels(conn: Connection, conversation_id: str) -> list[str]:
    """The speaker labels of the conversation's stored files."""
    return list(
        conn.execute(
            select(files.c.speaker_label)
            .where(files.c.conversation_id == conversation_id)
            .order_by(files.c.speaker_label)
        ).scalars()
    )


def erase(conn: Connection, conversation_id: str, reason: str, now: str) -> Erasure:
    """Remove every row naming the conversation, update the totals, and write its tombstone
    (the caller has checked there is none). An id never stored gets one too, removing nothing,
    so it is refused from now on. URLs in `reason` are kept as logs show them (url_secrets)."""
    removed = conn.execute(
        select(files.c.speaker_label, files.c.duration_seconds, files.c.file_size_bytes).where(
            files.c.conversation_id == conversation_id
        )
    ).all()
    spoken = dict(
        conn.execute(
            select(speech.c.speaker_label, speech.c.speech_micros).where(
                speech.c.conversation_id == conversation_id
            )
        ).all()
    )
    overlap = conn.execute(
        select(conversations.c.overlap_micros).where(
            conversations.c.conversation_id == conversation_id
        )
    ).scalar()
    total_micros = 0
    for label, seconds, size in removed:
        duration = micros(seconds)
        total_micros += duration
        _subtract_totals(conn, label, files=1, duration=duration, size=size, speech=0)
    for label, amount in spoken.items():
        _subtract_totals(conn, label, files=0, duration=0, size=0, speech=int(amount))
    if overlap:
        conn.execute(
            update(store_info).values(overlap_micros=store_info.c.overlap_micros - overlap)
        )
    for table in (speech, conversation_flags, failures, files, conversations):
        conn.execute(delete(table).where(table.c.conversation_id == conversation_id))
    conn.execute(
        delete(speaker_totals).where(
            speaker_totals.c.files == 0, speaker_totals.c.speech_micros == 0
        )
    )
    reason = scrub(reason)  # a signed link pasted into the reason keeps no secret
    values: dict[str, Any] = {
        "conversation_id": conversation_id,
        "erased_at": now,
        "reason": reason,
        "files": len(removed),
        "duration_micros": total_micros,
    }
    conn.execute(tombstones.insert().values(**values))
    return Erasure(conversation_id, now, reason, len(removed), total_micros / 1_000_000)


def _subtract_totals(
    conn: Connection, label: str, files: int, duration: int, size: int, speech: int
) -> None:
    t = speaker_totals.c
    conn.execute(
        update(speaker_totals)
        .where(t.speaker_label == label)
        .values(
            files=t.files - files,
            duration_micros=t.duration_micros - duration,
            size_bytes=t.size_bytes - size,
            speech_micros=t.speech_micros - speech,
        )
    )
