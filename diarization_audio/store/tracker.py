"""The metadata store: the only code that reads or writes the database of stored files.

What is written (files, failures, speech labels) and what is read, each in one short
transaction of store/database.py; the reads themselves are in store/queries.py and
store/reports.py, the labels' in store/speech_labels.py. A downloader's `publish` step
(renaming the finished WAV into place) runs inside the write transaction, so a file on disk
and its record change together.

`conversations_metadata.json` is an export of the store, rewritten by `JsonExporter` a couple
of seconds after changes (and by `--export-json`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import tzinfo
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, select, update

from diarization_audio.objects import Place
from diarization_audio.progress import Totals, statistics_of
from diarization_audio.store import erasure, json_export, queries, reports, speech_labels
from diarization_audio.store.database import BATCH_ROWS, BUMP_REVISION, CURRENT_REVISION, Database
from diarization_audio.store.database import database_url as database_url
from diarization_audio.store.erasure import Erasure
from diarization_audio.store.exporter import JsonExporter as JsonExporter
from diarization_audio.store.json_export import Entry, Export
from diarization_audio.store.layout import remove_stored
from diarization_audio.store.schema import (
    StoredFile,
    conversations,
    failures,
    files,
    micros,
    recount,
    speaker_totals,
    store_info,
)
from diarization_audio.store.speech_labels import LegLabels, StoredConversation

T = TypeVar("T")
log = logging.getLogger(__name__)
_OLD_FILE = select(files.c.file_size_bytes, files.c.duration_seconds).where(*queries.ONE_FILE)


def _conversations_upsert(insert: Any, keep_agent: bool) -> Any:
    """Adds the given duration_micros to a conversation's (kept as the sum of its files'), and
    marks it written at the transaction's revision, for the JSON export."""
    statement = insert(conversations).values(changed_revision=CURRENT_REVISION)
    changes: dict[str, Any] = {
        "updated_at": statement.excluded.updated_at,
        "duration_micros": conversations.c.duration_micros + statement.excluded.duration_micros,
        "changed_revision": CURRENT_REVISION,
    }
    if keep_agent:
        changes["agent_id"] = statement.excluded.agent_id
    return statement.on_conflict_do_update(
        index_elements=[conversations.c.conversation_id], set_=changes
    )


def _files_upsert(insert: Any) -> Any:
    statement = insert(files)
    keys = {"conversation_id", "speaker_label"}
    return statement.on_conflict_do_update(
        index_elements=[files.c.conversation_id, files.c.speaker_label],
        set_={c.name: statement.excluded[c.name] for c in files.c if c.name not in keys},
    )


def _totals_upsert(insert: Any) -> Any:
    """Adds the given counts to a speaker's running totals."""
    statement = insert(speaker_totals)
    t = speaker_totals.c
    return statement.on_conflict_do_update(
        index_elements=[t.speaker_label],
        set_={
            "files": t.files + statement.excluded.files,
            "duration_micros": t.duration_micros + statement.excluded.duration_micros,
            "size_bytes": t.size_bytes + statement.excluded.size_bytes,
        },
    )


# The INSERT ... ON CONFLICT DO UPDATE statements of the writes, each made from its store's
# dialect's `insert` (SQLite's and PostgreSQL's both have on_conflict_do_update).
_UPSERTS: dict[str, Callable[[Any], Any]] = {
    "conversations": lambda insert: _conversations_upsert(insert, keep_agent=False),
    "conversations+agent": lambda insert: _conversations_upsert(insert, keep_agent=True),
    "files": _files_upsert,
    "totals": _totals_upsert,
}


class MetadataTracker(Database):
    """The store of stored files, failures and totals; safe across threads, processes, hosts."""

    def __init__(self, url: str, export_path: Path | str, tz: tzinfo | str = "UTC") -> None:
        super().__init__(url, export_path, tz)
        # Built once for this store's dialect: building one costs more than running it.
        self._upserts = {name: build(self._insert()) for name, build in _UPSERTS.items()}

    # Writing ---------------------------------------------------------------------------------

    def record_file(
        self,
        conversation_id: str,
        speaker_label: str,
        stored: StoredFile,
        publish: Callable[[], None] | None = None,
        agent_id: str | None = None,
        *,
        allow_erased: bool = False,
    ) -> None:
        """Add or replace one speaker's file of a conversation.

        `publish` runs inside the write transaction, after the rows are written and before the
        commit: if it raises, nothing is recorded. A replaced file loses its speech labels.
        An erased conversation is refused with Erased (nothing published) unless
        `allow_erased`, which lifts its tombstone.
        """
        now = self.now()
        with self._writing() as conn:
            # Checked in the transaction that publishes: an erase commits before or after it.
            erasure.check_or_lift(conn, conversation_id, allow_erased)
            old = conn.execute(
                _OLD_FILE, {"the_conversation": conversation_id, "the_label": speaker_label}
            ).first()
            delta_files, delta_micros, delta_bytes = (
                1,
                micros(stored.duration_seconds),
                stored.file_size_bytes,
            )
            if old is not None:
                delta_files = 0
                delta_micros -= micros(old.duration_seconds)
                delta_bytes -= old.file_size_bytes
                speech_labels.drop_labels(conn, self._insert(), conversation_id, speaker_label)
            self._upsert_conversations(conn, [conversation_id], now, agent_id, delta_micros)
            self._upsert_files(conn, [self._file_row(conversation_id, speaker_label, stored)])
            self._add_totals(conn, speaker_label, delta_files, delta_micros, delta_bytes)
            if publish is not None:
                publish()

    def record_many(self, items: Iterable[tuple[str, str, StoredFile]]) -> int:
        """Record many (conversation_id, speaker_label, file) at once, in order; for back-fills.

        The same as `record_file` for each, in one transaction; returns how many were given.
        """
        now = self.now()
        rows = [self._file_row(cid, label, stored) for cid, label, stored in items]
        with self._writing() as conn:
            for start in range(0, len(rows), BATCH_ROWS):
                batch = rows[start : start + BATCH_ROWS]
                self._upsert_conversations(conn, [r["conversation_id"] for r in batch], now)
                self._upsert_files(conn, batch)
            recount(conn)
        return len(rows)

    def record_failure(
        self, conversation_id: str, speaker_label: str, url: str, code: str, detail: str
    ) -> None:
        """Keep one failed attempt (the caller removes secrets from `url` and `detail`)."""
        now = self.now()
        with self._writing(bump=False) as conn:
            conn.execute(
                failures.insert().values(
                    conversation_id=conversation_id, speaker_label=speaker_label, url=url,
                    error_code=code, detail=detail, failed_at=now, failed_epoch=self.epoch(now),
                )
            )  # fmt: skip

    def erase(self, conversation_id: str, reason: str, place: Place) -> Erasure:
        """Erase a conversation: its rows, its totals and its stored WAVs (in `place`, a folder or
        a bucket), leaving a tombstone.

        The files are deleted inside the transaction, before it commits: if one cannot be, the
        erase fails and nothing is recorded as erased (run it again). Erasing an id again
        answers the first erase and changes nothing.
        """
        now = self.now()
        with self._writing(bump=False) as conn:
            earlier = erasure.tombstone(conn, conversation_id)
            if earlier is not None:
                return earlier
            conn.execute(BUMP_REVISION)
            labels = erasure.stored_labels(conn, conversation_id)
            done = erasure.erase(conn, conversation_id, reason, now)
            remove_stored(place, conversation_id, labels)
        log.info("erased conversation=%s files=%d duration=%.2fs reason=%r", conversation_id,
                 done.files, done.duration_seconds, done.reason)  # fmt: skip
        return done

    def erased(self, conversation_id: str) -> Erasure | None:
        """The conversation's tombstone, if it was erased."""
        with self._reading() as conn:
            return erasure.tombstone(conn, conversation_id)

    def _upsert_conversations(
        self,
        conn: Connection,
        ids: list[str],
        now: str,
        agent_id: str | None = None,
        added_micros: int = 0,
    ) -> None:
        # An id given once is kept by later posts that omit it.
        statement = self._upserts["conversations" if agent_id is None else "conversations+agent"]
        conn.execute(
            statement,
            [{"conversation_id": cid, "created_at": now, "updated_at": now, "agent_id": agent_id,
              "duration_micros": added_micros}
             for cid in dict.fromkeys(ids)],
        )  # fmt: skip

    def _upsert_files(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        conn.execute(self._upserts["files"], rows)

    def _add_totals(
        self, conn: Connection, label: str, count: int, duration: int, size: int
    ) -> None:
        conn.execute(
            self._upserts["totals"],
            {"speaker_label": label, "files": count, "duration_micros": duration,
             "size_bytes": size},
        )  # fmt: skip

    # Reading ---------------------------------------------------------------------------------

    def check(self) -> int:
        """Open the store (failing loudly if it cannot be used); returns its conversations."""
        with self._reading() as conn:
            return queries.count(conn)

    def get_file(self, conversation_id: str, speaker_label: str) -> StoredFile | None:
        with self._reading() as conn:
            return queries.stored_file(conn, conversation_id, speaker_label)

    def get_conversation(self, conversation_id: str) -> Entry | None:
        with self._reading() as conn:
            found = queries.entries(conn, [conversation_id])
        return found[0] if found else None

    def erased_among(self, conversation_ids: Iterable[str]) -> list[str]:
        """Those of `conversation_ids` that have been erased (a tombstone stands for them)."""
        with self._reading() as conn:
            return [cid for cid in conversation_ids if erasure.tombstone(conn, cid) is not None]

    def list_conversations(self, limit: int, offset: int) -> tuple[int, list[Entry]]:
        """One page of conversations in the order they were first stored, and the total."""
        with self._reading() as conn:
            return queries.count(conn), queries.page(conn, limit, offset)

    def totals(self) -> Totals:
        with self._reading() as conn:
            return queries.totals(conn)

    def snapshot(self) -> tuple[list[dict[str, Any]], Totals]:
        """Every stored file (as `file_rows`) and the totals, from one consistent view."""
        with self._reading() as conn:
            return queries.file_rows(conn), queries.totals(conn)

    def statistics(self, target_hours: float = 100.0, speech: bool = False) -> dict[str, Any]:
        """The `/statistics` answer: hours of audio and of speech, progress, recent failures.

        With `speech`, the progress toward the target counts speech hours.
        """
        with self._reading() as conn:
            totals = queries.totals(conn)
            summary = reports.speech_summary(conn)
            erased = erasure.erased_count(conn)
        spoken = sum(summary["speaker_micros"].values())
        result = statistics_of(totals, target_hours, self.now(), spoken if speech else None)
        result["speech"] = reports.speech_statistics(summary, totals.micros)
        result["failures"] = self.failure_summary()
        result["erased_conversations"] = erased
        return result

    def failure_summary(self, recent: int = 0) -> dict[str, Any]:
        """Failed attempts: in all, in the last 24 hours by error code, and the latest few."""
        since = time.time() - reports.LAST_DAY_SECONDS
        with self._reading() as conn:
            return reports.failure_summary(conn, since, recent)

    def report(self, since_day: str, recent_failures: int) -> reports.Report:
        """The reports' figures (days from `since_day`), from one consistent view."""
        now = time.time()
        with self._reading() as conn:
            totals = queries.totals(conn)
            return reports.report(conn, totals, since_day, now, recent_failures)

    def file_rows(self) -> list[dict[str, Any]]:
        """One flat row per stored file with its conversation's timestamps, in stored order."""
        with self._reading() as conn:
            return queries.file_rows(conn)

    def file_rows_locked(self, read: Callable[[], T]) -> tuple[list[dict[str, Any]], T]:
        """The rows and `read()`'s result with no write in between: both under the write lock.

        For checks that compare the store with the files on disk, which a write changes
        together; every writer waits meanwhile, so `read` must be quick.
        """
        with self._writing(bump=False) as conn:
            return queries.file_rows(conn), read()

    # Speech labels ---------------------------------------------------------------------------

    def legs(self, conversation_id: str) -> dict[str, tuple[str, str]]:
        """speaker label -> (stored file path, its checksum) for one conversation."""
        with self._reading() as conn:
            return queries.legs(conn, conversation_id)

    def save_labels(
        self,
        conversation_id: str,
        legs: dict[str, LegLabels],
        overlap_seconds: float,
        flags: dict[str, str],
        provenance: dict[str, object],
    ) -> float | None:
        """Keep a conversation's labels; returns the seconds of speech the store gained by them
        (negative when it lost some), or None when one of its files changed meanwhile."""
        now = self.now()
        with self._writing() as conn:
            gained = speech_labels.save_labels(
                conn, self._insert(), conversation_id, legs, overlap_seconds, flags,
                provenance, now,
            )  # fmt: skip
        return None if gained is None else gained / 1_000_000

    def speech_summary(self) -> dict[str, Any]:
        with self._reading() as conn:
            return reports.speech_summary(conn)

    def unlabelled(self) -> list[str]:
        """Conversations with a stored file that has no labels yet (e.g. imported ones)."""
        with self._reading() as conn:
            return speech_labels.unlabelled(conn)

    def labelled_by_other(self, provenance: dict[str, object]) -> list[str]:
        """Conversations whose labels another detector, or another version of it, made than
        `provenance` (labels.activity.provenance) names."""
        with self._reading() as conn:
            return speech_labels.labelled_by_other(conn, provenance)

    def flags(self) -> list[tuple[str, str, str]]:
        with self._reading() as conn:
            return speech_labels.flagged(conn)

    def stored_conversations(self) -> Iterator[StoredConversation]:
        """Every conversation with its legs, labels and flags, in stored order, read from one
        view of the store (`StoredConversation.labelled` tells the labelled ones)."""
        with self._reading() as conn:
            yield from speech_labels.stored_conversations(conn)

    # The JSON export -------------------------------------------------------------------------

    def export_due(self) -> bool:
        """Whether the store changed since the JSON document was last written."""
        with self._reading() as conn:
            revision, exported = conn.execute(
                select(store_info.c.revision, store_info.c.exported_revision)
            ).one()
        return bool(exported < revision)

    def export_json(self, force: bool = False, path: Path | None = None) -> Export | None:
        """Write the JSON document from one consistent view of the store.

        Without `force`, only when the store changed since the last export (by any process or
        host; None when there was nothing to do), copying the entries unchanged since from the
        document it wrote (json_export.kept_entries). `force`, or another `path`, writes all.
        """
        target = path or self.export_path
        started = time.perf_counter()
        info = store_info.c
        with self._reading() as conn:
            revision, exported, identity = conn.execute(
                select(info.revision, info.exported_revision, info.exported_file)
            ).one()
            if not force and exported >= revision:
                return None
            count = queries.count(conn)
            reuse = not force and target == self.export_path
            same, last, first_changed = (
                queries.unchanged_since(conn, exported) if reuse else (0, None, 0)
            )
            with json_export.kept_entries(target, identity, same, last) as kept:
                query = queries.joined(None if kept is None else first_changed)
                rows = conn.execution_options(yield_per=BATCH_ROWS).execute(query).mappings()
                written = json_export.write_document(
                    target, count, self.now(), json_export.entries_from_rows(rows), kept
                )
        if target == self.export_path:
            with self._writing(bump=False) as conn:
                conn.execute(
                    update(store_info)
                    .where(info.exported_revision <= revision)
                    .values(exported_revision=revision, exported_file=written.identity)
                )
        seconds = time.perf_counter() - started
        return Export(target, count, written.size_bytes, seconds, revision, same if kept else 0)
