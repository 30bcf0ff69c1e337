"""Reads of the stored files and conversations: counts, totals, one file, pages of entries.

The functions here run inside the read transactions store/tracker.py hands them, so what one
caller reads together comes from one consistent view of the store.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from diarization_audio.progress import Totals
from diarization_audio.store.json_export import FILE_FIELDS, Entry, entries_from_rows, file_dict
from diarization_audio.store.layout import stored_name
from diarization_audio.store.schema import StoredFile, conversations, files, speaker_totals

# Statements run for every file, made once: making one costs more than running it.
ONE_FILE = (
    files.c.conversation_id == bindparam("the_conversation"),
    files.c.speaker_label == bindparam("the_label"),
)
_STORED_FILE = select(*(files.c[name] for name in FILE_FIELDS)).where(*ONE_FILE)


def count(conn: Connection) -> int:
    """How many conversations are stored."""
    return int(conn.execute(select(func.count()).select_from(conversations)).scalar_one())


def totals(conn: Connection) -> Totals:
    """Conversations, audio, bytes, and the first and last download, from the running totals."""
    micros_sum, size_sum = conn.execute(
        select(
            func.coalesce(func.sum(speaker_totals.c.duration_micros), 0),
            func.coalesce(func.sum(speaker_totals.c.size_bytes), 0),
        )
    ).one()
    by_time = select(files.c.downloaded_at).limit(1)
    return Totals(
        conversations=count(conn),
        micros=int(micros_sum),
        size_bytes=int(size_sum),
        first=conn.execute(by_time.order_by(files.c.downloaded_epoch.asc())).scalar(),
        last=conn.execute(by_time.order_by(files.c.downloaded_epoch.desc())).scalar(),
    )


def stored_file(conn: Connection, conversation_id: str, speaker_label: str) -> StoredFile | None:
    row = conn.execute(
        _STORED_FILE, {"the_conversation": conversation_id, "the_label": speaker_label}
    ).first()
    return None if row is None else StoredFile.model_construct(**row._asdict())


def joined(from_seq: int | None = None) -> Any:
    """Every stored file with its conversation's timestamps, in stored order (from the
    conversation stored `from_seq`-th on, if given)."""
    c = conversations.c
    statement = (
        select(c.conversation_id, c.created_at, c.updated_at, files.c.speaker_label,
               *(files.c[name] for name in FILE_FIELDS))
        .join_from(conversations, files, c.conversation_id == files.c.conversation_id)
        .order_by(c.seq, files.c.speaker_label)
    )  # fmt: skip
    return statement if from_seq is None else statement.where(c.seq >= from_seq)


def unchanged_since(conn: Connection, revision: int) -> tuple[int, str | None, int]:
    """The conversations before the first one written after `revision`, in stored order (all
    of them if none was): how many, the last one's id, and the `seq` the written ones start at."""
    c = conversations.c
    written = select(func.min(c.seq)).where(c.changed_revision > revision).scalar_subquery()
    end = select(func.coalesce(func.max(c.seq), 0) + 1).scalar_subquery()
    first = int(conn.execute(select(func.coalesce(written, end))).scalar_one())
    before = conn.execute(select(func.count()).where(c.seq < first)).scalar_one()
    last = select(c.conversation_id).where(c.seq < first).order_by(c.seq.desc()).limit(1)
    return int(before), conn.execute(last).scalar(), first


def file_rows(conn: Connection) -> list[dict[str, Any]]:
    """One flat row per stored file with its conversation's timestamps, in stored order."""
    rows = []
    for row in conn.execute(joined()).mappings():
        rows.append(
            {"conversation_id": row["conversation_id"], "speaker_label": row["speaker_label"],
             "filename": stored_name(row["conversation_id"], row["speaker_label"]),
             **file_dict(row), "conversation_created_at": row["created_at"],
             "conversation_updated_at": row["updated_at"]}
        )  # fmt: skip
    return rows


def entries(conn: Connection, ids: list[str]) -> list[Entry]:
    """The conversations named, as the JSON document and the API show them."""
    if not ids:
        return []
    found = conn.execute(joined().where(conversations.c.conversation_id.in_(ids))).mappings()
    return [entry for _, entry in entries_from_rows(found)]


def page(conn: Connection, limit: int, offset: int) -> list[Entry]:
    """One page of conversations in the order they were first stored."""
    ids = conn.execute(
        select(conversations.c.conversation_id)
        .order_by(conversations.c.seq)
        .limit(limit)
        .offset(offset)
    ).scalars()
    return entries(conn, list(ids))


def legs(conn: Connection, conversation_id: str) -> dict[str, tuple[str, str]]:
    """speaker label -> (stored file path, its checksum) for one conversation."""
    rows = conn.execute(
        select(files.c.speaker_label, files.c.filepath, files.c.sha256).where(
            files.c.conversation_id == conversation_id
        )
    )
    return {r.speaker_label: (r.filepath, r.sha256) for r in rows}
