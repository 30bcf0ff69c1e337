"""The database behind the metadata store: its URL, connections, transactions, and opening it.

SQLite by default, in a file beside the JSON document (DATABASE_FILE), or PostgreSQL when
DATABASE_URL names one, so that service processes on several hosts share one record. Every
write is one short transaction that first moves the store's revision on: on SQLite it starts
with `BEGIN IMMEDIATE` (writers queue on the busy timeout instead of failing with "database is
locked"), on PostgreSQL the revision row's lock orders writers the same way.

On first start in a folder that has only a JSON document of the earlier design, the document
is imported, every entry and timestamp as it was. A database that cannot be opened, or whose
schema version this code does not know, stops everything with a message naming it; nothing is
created or overwritten then. Database errors become the product's errors here, in one place.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Self
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, Executable, create_engine, event, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from diarization_audio.errors import MetadataCorrupt, StorageError
from diarization_audio.settings import Settings
from diarization_audio.store.json_export import FILE_FIELDS, document_rows, read_document
from diarization_audio.store.schema import (
    SCHEMA_VERSION,
    StoredFile,
    conversations,
    create_schema,
    files,
    migrate,
    recount,
    schema_version,
    store_info,
)
from diarization_audio.url_secrets import source_sha256

log = logging.getLogger(__name__)

BUSY_TIMEOUT_SECONDS = 120  # how long a writer waits for the store's (or the export's) lock
BATCH_ROWS = 2000
WAL_ATTEMPTS = 100  # x 0.1 s
# What orders PostgreSQL writers: the revision row; while a store is created, an advisory lock.
_REVISION_LOCK = select(store_info.c.revision).with_for_update()
_INIT_LOCK = select(func.pg_advisory_xact_lock(0x6D657461))
BUMP_REVISION = update(store_info).values(revision=store_info.c.revision + 1)
# The revision a write transaction moved the store to (it moves it first).
CURRENT_REVISION = select(store_info.c.revision).scalar_subquery()


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


class Database:
    """One store's engine and transactions; MetadataTracker holds what is read and written."""

    def __init__(self, url: str, export_path: Path | str, tz: tzinfo | str = "UTC") -> None:
        self.url = make_url(url)
        self.export_path = Path(export_path)
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.name = self.url.render_as_string(hide_password=True)
        self._sqlite = self.url.get_backend_name() == "sqlite"
        self.engine = self._engine()
        self._opened = False
        self._open_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, export_path: Path | None = None) -> Self:
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
                conn.execute(BUMP_REVISION)
            yield conn

    @contextmanager
    def _write_transaction(self, pg_lock: Executable = _REVISION_LOCK) -> Iterator[Connection]:
        """BEGIN IMMEDIATE on SQLite; on PostgreSQL, `pg_lock` taken first."""
        with self.engine.connect() as conn:
            conn.execution_options(writing=True)
            with conn.begin():
                if not self._sqlite:
                    conn.execute(pg_lock)
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
                with self._write_transaction(_INIT_LOCK) as conn:
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
            conn.execute(BUMP_REVISION)
            _keep_copy(self.export_path)
            log.info("imported %d conversations from %s into %s", len(conversation_rows),
                     self.export_path, self.name)  # fmt: skip
        log.info("created metadata store %s (schema version %d)", self.name, SCHEMA_VERSION)

    def _insert(self) -> Any:
        return sqlite.insert if self._sqlite else postgresql.insert

    def _file_row(self, conversation_id: str, label: str, stored: StoredFile) -> dict[str, Any]:
        row = {name: getattr(stored, name) for name in FILE_FIELDS}
        if row["source_sha256"] is None:  # recorded before sources were hashed
            row["source_sha256"] = source_sha256(stored.url)
        row.update(conversation_id=conversation_id, speaker_label=label,
                   downloaded_epoch=self.epoch(stored.downloaded_at))  # fmt: skip
        return row


def _keep_copy(path: Path) -> None:
    """Keep the imported document as `<file>.v1` (a hard link where possible)."""
    copy = path.with_name(path.name + ".v1")
    if copy.exists():
        return
    try:
        os.link(path, copy)
    except OSError:
        shutil.copy2(path, copy)
