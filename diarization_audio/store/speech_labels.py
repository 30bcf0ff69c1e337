"""Speech labels in the metadata store: who spoke when on each leg, and quality flags.

The functions here run inside the transactions store/tracker.py hands them (as those of
store/schema.py do); nothing else writes these tables (store/reports.py sums them). Labels
belong to one version of a file: a row names the file's checksum, and a replaced file loses
its labels in the transaction that records the replacement, so stale labels are never read as
current.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from diarization_audio.store.schema import (
    conversation_flags,
    conversations,
    files,
    labellers,
    micros,
    speaker_totals,
    speech,
    store_info,
)
from diarization_audio.wav import Segment

FLAG_DUPLICATE = "duplicate"


@dataclass(frozen=True)
class LegLabels:
    """One leg's labels, as the labeller computed them from one version of its file."""

    file_sha256: str
    pcm_sha256: str
    segments: Sequence[Segment]
    clipped_share: float
    paired: bool  # labelled beside another leg (crosstalk suppressed), not alone
    snr_db: float | None = None  # speech_quality.LegQuality; None: no speech on the leg
    music_share: float | None = None  # None: not measured


@dataclass(frozen=True)
class StoredLeg:
    speaker_label: str
    filepath: str
    duration_seconds: float
    sha256: str
    segments: tuple[Segment, ...]
    snr_db: float | None = None  # None: no speech, or labelled before the measure existed
    music_share: float | None = None  # None: labelled before the measure existed


@dataclass(frozen=True)
class StoredConversation:
    """A conversation's stored legs with their labels and flags, as an export reads them.

    `labelled` says whether every leg's current file has labels; a leg without them has no
    segments, and `labeller` is the provenance (JSON) of the first leg's labels, if any.
    """

    conversation_id: str
    agent_id: str | None
    legs: tuple[StoredLeg, ...]
    flags: dict[str, str]
    labeller: str | None
    labelled: bool


def encode_segments(segments: Sequence[Segment]) -> str:
    return json.dumps(
        [[round(a * 1000), round(b * 1000)] for a, b in segments], separators=(",", ":")
    )


def decode_segments(text: str) -> tuple[Segment, ...]:
    return tuple((a / 1000, b / 1000) for a, b in json.loads(text))


def speech_micros_of(segments: Sequence[Segment]) -> int:
    return sum(micros(round(b, 3)) - micros(round(a, 3)) for a, b in segments)


Insert = Callable[[Any], Any]


def _labeller_id(conn: Connection, insert: Insert, provenance: Mapping[str, object]) -> int:
    text = json.dumps(provenance, sort_keys=True, separators=(",", ":"))
    conn.execute(insert(labellers).values(provenance=text).on_conflict_do_nothing())
    return int(
        conn.execute(select(labellers.c.id).where(labellers.c.provenance == text)).scalar_one()
    )


def _add_speech_total(conn: Connection, insert: Insert, label: str, amount: int) -> None:
    if amount:
        statement = insert(speaker_totals).values(
            speaker_label=label, files=0, duration_micros=0, size_bytes=0, speech_micros=amount
        )
        t = speaker_totals.c
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[t.speaker_label],
                set_={"speech_micros": t.speech_micros + statement.excluded.speech_micros},
            )
        )


def _set_overlap(conn: Connection, conversation_id: str, overlap: int) -> None:
    old = conn.execute(
        select(conversations.c.overlap_micros).where(
            conversations.c.conversation_id == conversation_id
        )
    ).scalar()
    if old is None or old == overlap:
        return
    conn.execute(
        update(conversations)
        .where(conversations.c.conversation_id == conversation_id)
        .values(overlap_micros=overlap)
    )
    conn.execute(
        update(store_info).values(overlap_micros=store_info.c.overlap_micros + overlap - old)
    )


def drop_labels(conn: Connection, insert: Insert, conversation_id: str, speaker_label: str) -> int:
    """Forget one leg's labels (its file is being replaced) and the conversation's pairing;
    returns the microseconds of speech they held."""
    old = conn.execute(
        select(speech.c.speech_micros).where(
            speech.c.conversation_id == conversation_id, speech.c.speaker_label == speaker_label
        )
    ).scalar()
    if old is None:
        return 0
    conn.execute(
        delete(speech).where(
            speech.c.conversation_id == conversation_id, speech.c.speaker_label == speaker_label
        )
    )
    _add_speech_total(conn, insert, speaker_label, -int(old))
    _set_overlap(conn, conversation_id, 0)
    conn.execute(
        delete(conversation_flags).where(conversation_flags.c.conversation_id == conversation_id)
    )
    return int(old)


def save_labels(
    conn: Connection,
    insert: Insert,
    conversation_id: str,
    legs: Mapping[str, LegLabels],
    overlap_seconds: float,
    flags: Mapping[str, str],
    provenance: Mapping[str, object],
    now: str,
) -> int | None:
    """Store a conversation's labels and flags; returns the microseconds of speech the store
    gained by it (negative when it lost some), or None (nothing written) if a file changed since.

    Flags are replaced as a whole; a leg whose decoded audio is already stored under another
    conversation adds the `duplicate` flag.
    """
    current = dict(
        conn.execute(
            select(files.c.speaker_label, files.c.sha256).where(
                files.c.conversation_id == conversation_id
            )
        ).all()
    )
    if any(current.get(label) != leg.file_sha256 for label, leg in legs.items()):
        return None
    labeller = _labeller_id(conn, insert, provenance)
    all_flags = dict(flags)
    gained = 0
    for label, leg in legs.items():
        gained -= drop_labels(conn, insert, conversation_id, label)
        amount = speech_micros_of(leg.segments)
        gained += amount
        conn.execute(
            speech.insert().values(
                conversation_id=conversation_id, speaker_label=label,
                file_sha256=leg.file_sha256, pcm_sha256=leg.pcm_sha256, speech_micros=amount,
                segment_count=len(leg.segments), segments=encode_segments(leg.segments),
                clipped_share=leg.clipped_share, paired=int(leg.paired), labeller_id=labeller,
                labelled_at=now, snr_db=leg.snr_db, music_share=leg.music_share,
            )
        )  # fmt: skip
        _add_speech_total(conn, insert, label, amount)
        twin = conn.execute(
            select(speech.c.conversation_id, speech.c.speaker_label)
            .where(
                speech.c.pcm_sha256 == leg.pcm_sha256, speech.c.conversation_id != conversation_id
            )
            .limit(1)
        ).first()
        if twin is not None:
            all_flags[FLAG_DUPLICATE] = (
                f"{label} is the same audio as {twin.conversation_id}/{twin.speaker_label}"
            )
    _set_overlap(conn, conversation_id, micros(overlap_seconds))
    conn.execute(
        delete(conversation_flags).where(conversation_flags.c.conversation_id == conversation_id)
    )
    if all_flags:
        conn.execute(
            conversation_flags.insert(),
            [
                {
                    "conversation_id": conversation_id,
                    "reason": reason,
                    "detail": detail,
                    "flagged_at": now,
                }
                for reason, detail in sorted(all_flags.items())
            ],
        )
    return gained


def unlabelled(conn: Connection) -> list[str]:
    """Conversations with a file whose current version has no labels."""
    missing = (
        select(files.c.conversation_id)
        .outerjoin(
            speech,
            (speech.c.conversation_id == files.c.conversation_id)
            & (speech.c.speaker_label == files.c.speaker_label)
            & (speech.c.file_sha256 == files.c.sha256),
        )
        .where(speech.c.conversation_id.is_(None))
        .distinct()
    )
    return list(conn.execute(missing).scalars())


def _detector(provenance: Mapping[str, object]) -> tuple[object, object]:
    return provenance.get("detector"), provenance.get("version")


def labelled_by_other(conn: Connection, provenance: Mapping[str, object]) -> list[str]:
    """Conversations with labels made by another detector, or another version of it, than
    `provenance` names (its other parameters are not compared), in the order first stored."""
    wanted = _detector(provenance)
    others = [
        labeller_id
        for labeller_id, text in conn.execute(select(labellers.c.id, labellers.c.provenance))
        if _detector(json.loads(text)) != wanted
    ]
    if not others:
        return []
    found = (
        select(conversations.c.conversation_id)
        .where(
            conversations.c.conversation_id.in_(
                select(speech.c.conversation_id).where(speech.c.labeller_id.in_(others))
            )
        )
        .order_by(conversations.c.seq)
    )
    return list(conn.execute(found).scalars())


def flagged(conn: Connection) -> list[tuple[str, str, str]]:
    """Every flag: (conversation_id, reason, detail), by conversation."""
    f = conversation_flags.c
    rows = conn.execute(
        select(f.conversation_id, f.reason, f.detail).order_by(f.conversation_id, f.reason)
    )
    return [(r.conversation_id, r.reason, r.detail) for r in rows]


def stored_conversations(conn: Connection) -> Iterator[StoredConversation]:
    """Every conversation with a stored file, labelled or not, flagged or not, in the order
    first stored: what to leave out (and why) is the reader's choice, never made here."""
    flags: dict[str, dict[str, str]] = {}
    for cid, reason, detail in flagged(conn):
        flags.setdefault(cid, {})[reason] = detail
    rows = conn.execution_options(yield_per=500).execute(
        select(
            conversations.c.conversation_id, conversations.c.agent_id, files.c.speaker_label,
            files.c.filepath, files.c.duration_seconds, files.c.sha256, speech.c.file_sha256,
            speech.c.segments, speech.c.snr_db, speech.c.music_share, labellers.c.provenance,
        )
        .join(files, files.c.conversation_id == conversations.c.conversation_id)
        .outerjoin(
            speech,
            (speech.c.conversation_id == files.c.conversation_id)
            & (speech.c.speaker_label == files.c.speaker_label),
        )
        .outerjoin(labellers, labellers.c.id == speech.c.labeller_id)
        .order_by(conversations.c.seq, files.c.speaker_label)
    )  # fmt: skip
    current: list[Any] = []
    for row in itertools.chain(rows, [None]):
        if current and (row is None or row.conversation_id != current[0].conversation_id):
            yield _stored_conversation(current, flags.get(current[0].conversation_id, {}))
            current = []
        if row is not None:
            current.append(row)


def _stored_conversation(rows: Sequence[Any], flags: dict[str, str]) -> StoredConversation:
    first = rows[0]
    # Labels of an earlier version of a file are not this file's (drop_labels removes them
    # when a file is replaced; the check keeps a reader safe all the same).
    current = [r.segments is not None and r.file_sha256 == r.sha256 for r in rows]
    return StoredConversation(
        conversation_id=first.conversation_id,
        agent_id=first.agent_id,
        legs=tuple(
            StoredLeg(
                r.speaker_label,
                r.filepath,
                r.duration_seconds,
                r.sha256,
                decode_segments(r.segments) if ok else (),
                r.snr_db if ok else None,
                r.music_share if ok else None,
            )
            for r, ok in zip(rows, current, strict=True)
        ),
        flags=flags,
        labeller=first.provenance,
        labelled=all(current),
    )
