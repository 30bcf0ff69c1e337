"""The metadata store: the only code that reads or writes the database of stored files.

SQLite by default, in a file beside the JSON document (DATABASE_FILE), or PostgreSQL when
DATABASE_URL names one, so that service processes on several hosts share one record. Every
write is one short transaction that first moves the store's revision on: on SQLite it starts
with `BEGIN IMMEDIATE` (writers queue on the busy timeout instead of failing with "database is
locked"), on PostgreSQL the revision row's lock orders writers the same way. A downloader's
`publish` step (renaming the finished WAV into place) runs inside that transaction, so a file
on disk and its record change together.

`conversations_metadata.json` is an export of the store, rewritten by `JsonExporter` a couple
of seconds after changes (and by `--export-json`). On first start in a folder that has only a
JSON document of the earlier design, the document is imported, every entry and timestamp
as it was. A database that cannot be opened, or whose schema version this code does not know,
stops everything with a message naming it; nothing is created or overwritten then.

"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from diarization_audio.errors import MetadataCorrupt, StorageError
from diarization_audio.settings import Settings
from diarization_audio.store import reports, speech_labels
from diarization_audio.store.json_export import (
    Entry,
    Export,
    Totals,
    document_rows,
    entries_from_rows,
    file_dict,
    read_document,
    statistics_of,
    write_document,
)
from diarization_audio.store.json_export import JsonExporter as JsonExporter
from diarization_audio.store.layout import stored_name
from diarization_audio.store.schema import (
    SCHEMA_VERSION,
    StoredFile,
    conversations,
    create_schema,
    failures,
    files,
    micros,
    migrate,
    recount,
    schema_version,
    speaker_totals,
    store_info,
)
from diarization_audio.store.speech_labels import LegLabels, StoredConversation
from diarization_audio.url_secrets import source_sha256

log = logging.getLogger(__name__)

BUSY_TIMEOUT_SECONDS = 120
FAILURE_WINDOW = timedelta(hours=24)
BATCH_ROWS = 2000
WAL_ATTEMPTS = 100  # x 0.1 s
_INIT_LOCK_KEY = 0x6D657461  # PostgreSQL advisory lock taken while a store is created
_FILE_FIELDS = list(StoredFile.model_fields)
T = TypeVar("T")


def database_url(settings: Settings) -> str:
    """DATABASE_URL, else SQLite at DATABASE_FILE, else a file beside the JSON document."""
    if settings.database_url:
        url = settings.database_url
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):  # the psycopg 3 driver, not SQLAlchemy's default
                return "postgresql+psycopg://" + url.removeprefix(plain)
        return url
    path = settings.database_file or Path(settings.metadata_file).with_suffix(".sqlite3")
    return f"sqlite:///{Path(path).resolve()}"


# Statements run for every file, made once: making one costs more than running it.
_BUMP_REVISION = update(store_info).values(revision=store_info.c.revision + 1)
_ONE_FILE = (
    files.c.conversation_id == bindparam("the_conversation"),
    files.c.speaker_label == bindparam("the_label"),
)
_OLD_FILE = select(files.c.file_size_bytes, files.c.duration_seconds).where(*_ONE_FILE)
_STORED_FILE = select(*(files.c[name] for name in _FILE_FIELDS)).where(*_ONE_FILE)


def _conversations_upsert(insert: Any, keep_agent: bool) -> Any:
    """Adds the given duration_micros to a conversation's (kept as the sum of its files')."""
    statement = insert(conversations)
    changes: dict[str, Any] = {
        "updated_at": statement.excluded.updated_at,
        "duration_micros": conversations.c.duration_micros + statement.excluded.duration_micros,
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


class MetadataTracker:
    """The store of stored files, failures and totals; safe across threads, processes, hosts."""

    def __init__(self, url: str, export_path: Path | str, tz: tzinfo | str = "UTC") -> None:
        self.url = make_url(url)
        self.export_path = Path(export_path)
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.name = self.url.render_as_string(hide_password=True)
        self._sqlite = self.url.get_backend_name() == "sqlite"
        self.engine = self._engine()
        self._opened = False
        # Built once for this store's dialect: building one costs more than running it.
        self._upserts = {name: build(self._insert()) for name, build in _UPSERTS.items()}
        self._open_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, export_path: Path | None = None) -> MetadataTracker:
        return cls(
            database_url(settings), export_path or settings.metadata_file, settings.log_timezone
        )

    def _engine(self) -> Engine:
        if not self._sqlite:
            return create_engine(self.url, pool_pre_ping=True, pool_size=8, max_overflow=16)
        engine = create_engine(
            self.url, connect_args={"timeout": BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # transactions begin where this module says
            # With WAL, NORMAL survives any crash of the process; a power cut may undo the last
            # commits, whose WAVs (not flushed either) are then fetched again. FULL would add
            # an fsync to every record.
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            writing = conn.get_execution_options().get("writing", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

        return engine

    def close(self) -> None:
        self.engine.dispose()

    def now(self) -> str:
        return datetime.now(self.tz).isoformat(timespec="seconds")

    def epoch(self, stamp: str) -> float:
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.tz)
        return moment.timestamp()

    # Transactions ----------------------------------------------------------------------------

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Database errors become the product's errors, naming the store, in one place."""
        try:
            yield
        except sa_exc.DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if isinstance(exc, sa_exc.OperationalError) or exc.connection_invalidated:
                raise StorageError(
                    f"the metadata database is unavailable: {reason}", log_detail=self.name
                ) from exc
            raise MetadataCorrupt(
                f"the metadata database cannot be used: {reason}; refusing to touch it",
                log_detail=self.name,
            ) from exc

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read transaction: one consistent view of the store."""
        self.open()
        with self._translated(), self.engine.connect() as conn:
            if not self._sqlite:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextmanager
    def _writing(self, bump: bool = True) -> Iterator[Connection]:
        """A write transaction holding the store's write lock; moves the revision on."""
        self.open()
        with self._translated(), self._write_transaction() as conn:
            if bump:
                conn.execute(_BUMP_REVISION)
            yield conn

    @contextmanager
    def _write_transaction(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(writing=True)
            with conn.begin():
                if not self._sqlite:
                    conn.execute(select(store_info.c.revision).with_for_update())
                yield conn

    # Opening, creating, importing, migrating -------------------------------------------------

    def open(self) -> None:
        """Make sure the store exists and is of this code's version (once per process)."""
        if self._opened:
            return
        with self._open_lock:
            if self._opened:
                return
            if self._sqlite:
                Path(self.url.database or ".").parent.mkdir(parents=True, exist_ok=True)
            with self._translated():
                with self._init_transaction() as conn:
                    version = schema_version(conn, self.name)
                    if version is None:
                        self._create(conn)
                    elif version != SCHEMA_VERSION:
                        migrate(conn, self.name, version)
                if self._sqlite:
                    self._use_wal()
            self._opened = True

    def _use_wal(self) -> None:
        """Write-ahead logging: readers never wait for the writer (kept in the file once set).

        Switching needs the file to itself; while other processes open the same new store at
        the same moment it may be refused, so it is tried again for a while. The store works
        either way; WAL only lets readers and the writer overlap.
        """
        for _ in range(WAL_ATTEMPTS):
            raw = self.engine.raw_connection()
            try:
                if raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                    return
                if raw.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                    return
            except sqlite3.OperationalError:
                pass
            finally:
                raw.close()
            time.sleep(0.1)
        log.warning("%s stays in rollback-journal mode: others kept it busy", self.name)

    @contextmanager
    def _init_transaction(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(writing=True)
            with conn.begin():
                if not self._sqlite:
                    conn.execute(select(func.pg_advisory_xact_lock(_INIT_LOCK_KEY)))
                yield conn

    def _create(self, conn: Connection) -> None:
        """A new store; the JSON document of the earlier design, if there is one, imported."""
        document = read_document(self.export_path)  # refuses a corrupt one before any change
        create_schema(conn)
        if document is not None and document["conversations"]:
            conversation_rows, stored = document_rows(document, self.export_path)
            file_rows = [self._file_row(cid, label, f) for cid, label, f in stored]
            for table, rows in ((conversations, conversation_rows), (files, file_rows)):
                for start in range(0, len(rows), BATCH_ROWS):
                    conn.execute(table.insert(), rows[start : start + BATCH_ROWS])
            recount(conn)
            conn.execute(_BUMP_REVISION)
            _keep_copy(self.export_path)
            log.info("imported %d conversations from %s into %s", len(conversation_rows),
                     self.export_path, self.name)  # fmt: skip
        log.info("created metadata store %s (schema version %d)", self.name, SCHEMA_VERSION)

    # Writing ---------------------------------------------------------------------------------

    def record_file(
        self,
        conversation_id: str,
        speaker_label: str,
        stored: StoredFile,
        publish: Callable[[], None] | None = None,
        agent_id: str | None = None,
    ) -> None:
        """Add or replace one speaker's file of a conversation.

        `publish` runs inside the write transaction, after the rows are written and before the
        commit: if it raises, nothing is recorded. A replaced file loses its speech labels.
        """
        now = self.now()
        with self._writing() as conn:
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

    def _insert(self) -> Any:
        return sqlite.insert if self._sqlite else postgresql.insert

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

    def _file_row(self, conversation_id: str, label: str, stored: StoredFile) -> dict[str, Any]:
        row = {name: getattr(stored, name) for name in _FILE_FIELDS}
        if row["source_sha256"] is None:  # recorded before sources were hashed
            row["source_sha256"] = source_sha256(stored.url)
        row.update(conversation_id=conversation_id, speaker_label=label,
                   downloaded_epoch=self.epoch(stored.downloaded_at))  # fmt: skip
        return row

    # Reading ---------------------------------------------------------------------------------

    def check(self) -> int:
        """Open the store (failing loudly if it cannot be used); returns its conversations."""
        with self._reading() as conn:
            return self._count(conn)

    def get_file(self, conversation_id: str, speaker_label: str) -> StoredFile | None:
        with self._reading() as conn:
            row = conn.execute(
                _STORED_FILE, {"the_conversation": conversation_id, "the_label": speaker_label}
            ).first()
        return None if row is None else StoredFile.model_construct(**row._asdict())

    def get_conversation(self, conversation_id: str) -> Entry | None:
        with self._reading() as conn:
            found = self._entries(conn, [conversation_id])
        return found[0] if found else None

    def list_conversations(self, limit: int, offset: int) -> tuple[int, list[Entry]]:
        """One page of conversations in the order they were first stored, and the total."""
        with self._reading() as conn:
            total = self._count(conn)
            ids = list(
                conn.execute(
                    select(conversations.c.conversation_id)
                    .order_by(conversations.c.seq)
                    .limit(limit)
                    .offset(offset)
                ).scalars()
            )
            return total, self._entries(conn, ids)

    def totals(self) -> Totals:
        with self._reading() as conn:
            return self._totals(conn)

    def snapshot(self) -> tuple[list[dict[str, Any]], Totals]:
        """Every stored file (as `file_rows`) and the totals, from one consistent view."""
        with self._reading() as conn:
            return self._file_rows(conn), self._totals(conn)

    def _totals(self, conn: Connection) -> Totals:
        micros_sum, size_sum = conn.execute(
            select(
                func.coalesce(func.sum(speaker_totals.c.duration_micros), 0),
                func.coalesce(func.sum(speaker_totals.c.size_bytes), 0),
            )
        ).one()
        by_time = select(files.c.downloaded_at).limit(1)
        return Totals(
            conversations=self._count(conn),
            micros=int(micros_sum),
            size_bytes=int(size_sum),
            first=conn.execute(by_time.order_by(files.c.downloaded_epoch.asc())).scalar(),
            last=conn.execute(by_time.order_by(files.c.downloaded_epoch.desc())).scalar(),
        )

    def statistics(self, target_hours: float = 100.0, speech: bool = False) -> dict[str, Any]:
        """The `/statistics` answer: hours of audio and of speech, progress, recent failures.

        With `speech`, the progress toward the target counts speech hours.
        """
        with self._reading() as conn:
            totals = self._totals(conn)
            summary = speech_labels.speech_summary(conn)
        spoken = sum(summary["speaker_micros"].values())
        result = statistics_of(totals, target_hours, self.now(), spoken if speech else None)
        result["speech"] = speech_labels.speech_statistics(summary, totals.micros)
        result["failures"] = self.failure_summary()
        return result

    def failure_summary(self, recent: int = 0) -> dict[str, Any]:
        """Failed attempts: in all, in the last 24 hours by error code, and the latest few."""
        since = time.time() - FAILURE_WINDOW.total_seconds()
        with self._reading() as conn:
            return reports.failure_summary(conn, since, recent)

    def report(self, since_day: str, recent_failures: int) -> reports.Report:
        """The dashboard's figures (days from `since_day`), from one consistent view."""
        since = time.time() - FAILURE_WINDOW.total_seconds()
        with self._reading() as conn:
            totals = self._totals(conn)
            return reports.report(conn, totals, since_day, since, recent_failures)

    def file_rows(self) -> list[dict[str, Any]]:
        """One flat row per stored file with its conversation's timestamps, in stored order."""
        with self._reading() as conn:
            return self._file_rows(conn)

    def file_rows_locked(self, read: Callable[[], T]) -> tuple[list[dict[str, Any]], T]:
        """The rows and `read()`'s result with no write in between: both under the write lock.

        For checks that compare the store with the files on disk, which a write changes
        together; every writer waits meanwhile, so `read` must be quick.
        """
        with self._writing(bump=False) as conn:
            return self._file_rows(conn), read()

    def _count(self, conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(conversations)).scalar_one())

    def _joined(self) -> Any:
        c = conversations.c
        return (
            select(c.conversation_id, c.created_at, c.updated_at, files.c.speaker_label,
                   *(files.c[name] for name in _FILE_FIELDS))
            .join_from(conversations, files, c.conversation_id == files.c.conversation_id)
            .order_by(c.seq, files.c.speaker_label)
        )  # fmt: skip

    def _file_rows(self, conn: Connection) -> list[dict[str, Any]]:
        rows = []
        for row in conn.execute(self._joined()).mappings():
            rows.append(
                {"conversation_id": row["conversation_id"], "speaker_label": row["speaker_label"],
                 "filename": stored_name(row["conversation_id"], row["speaker_label"]),
                 **file_dict(row), "conversation_created_at": row["created_at"],
                 "conversation_updated_at": row["updated_at"]}
            )  # fmt: skip
        return rows

    def _entries(self, conn: Connection, ids: list[str]) -> list[Entry]:
        if not ids:
            return []
        found = conn.execute(
            self._joined().where(conversations.c.conversation_id.in_(ids))
        ).mappings()
        return [entry for _, entry in entries_from_rows(found)]

    # Speech labels ---------------------------------------------------------------------------

    def legs(self, conversation_id: str) -> dict[str, tuple[str, str]]:
        """speaker label -> (stored file path, its checksum) for one conversation."""
        with self._reading() as conn:
            rows = conn.execute(
                select(files.c.speaker_label, files.c.filepath, files.c.sha256).where(
                    files.c.conversation_id == conversation_id
                )
            )
            return {r.speaker_label: (r.filepath, r.sha256) for r in rows}

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
            return speech_labels.speech_summary(conn)

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
        host); returns None when there was nothing to do.
        """
        target = path or self.export_path
        started = time.perf_counter()
        with self._reading() as conn:
            revision, exported = conn.execute(
                select(store_info.c.revision, store_info.c.exported_revision)
            ).one()
            if not force and exported >= revision:
                return None
            count = self._count(conn)
            rows = conn.execution_options(yield_per=BATCH_ROWS).execute(self._joined())
            size = write_document(target, count, self.now(), entries_from_rows(rows.mappings()))
        if target == self.export_path:
            with self._writing(bump=False) as conn:
                conn.execute(
                    update(store_info)
                    .where(store_info.c.exported_revision < revision)
                    .values(exported_revision=revision)
                )
        return Export(target, count, size, time.perf_counter() - started, revision)


def _keep_copy(path: Path) -> None:
    """Keep the imported document as `<file>.v1` (a hard link where possible)."""
    copy = path.with_name(path.name + ".v1")
    if copy.exists():
        return
    try:
        os.link(path, copy)
    except OSError:
        shutil.copy2(path, copy)
