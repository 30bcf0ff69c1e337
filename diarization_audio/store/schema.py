"""The metadata store's schema: its tables, its version, and the stored-file record.

One definition serves SQLite and PostgreSQL (SQLAlchemy Core). `SCHEMA_VERSION` is the version
these tables describe; a store of any other version that `MIGRATIONS` cannot bring up to date,
one step each, is refused. store/database.py opens every connection and transaction; the
functions here run inside the ones it hands them.

Tables:
- `store_info`: one row: schema version, `revision` (moved on by every write, so the JSON
  export knows when it is behind), `exported_revision` (the revision the export last wrote).
- `conversations`: one row per conversation that has a stored file; `seq` keeps the order
  in which conversations were first stored.
- `files`: one row per stored WAV (conversation id + speaker label), every field of
  `StoredFile` plus `downloaded_epoch` (the same instant as a number, for ordering and ranges).
- `speaker_totals`: files, microseconds of audio and bytes per speaker label, kept by every
  write in the same transaction, so the collection's totals are read without a scan.
- `failures`: every failed download attempt: who, the URL without its query string, the error
  code and detail, when.

Since version 2, speech labels (who spoke when, derived from each leg's own audio):
- `speech`: one row per labelled file: which version of the file (`file_sha256`), the hash of
  its decoded samples, its speech turns (JSON `[[start_ms, end_ms], ...]`), their total and
  count, its clipped share, whether it was labelled beside another leg, and which detector with
  which parameters produced it (`labellers`).
- `labellers`: each detector configuration once (its provenance as JSON).
- `conversation_flags`: quality flags per conversation (reason, human detail).
- `conversations.agent_id` (keeps one agent's calls in one dataset split),
  `conversations.overlap_micros`, `speaker_totals.speech_micros` and `store_info.overlap_micros`
  (kept by every labelling write, so speech hours are read without a scan).

Since version 4, for reports that stay fast at 100,000 conversations (store/reports.py):
- `conversations.duration_micros`: the audio of all the conversation's files, kept by every
  write of a file, and indexed, so the distribution of conversation lengths is read from the
  index alone.
- `files_by_day`: files indexed by the day of `downloaded_at` (its first ten characters, the
  date in the writer's LOG_TIMEZONE) with their duration, so hours per day are summed from
  the index alone.

Since version 5, the measures a training team filters on (labels/quality.py):
- `speech.snr_db` (the leg's speech-band SNR; NULL when it has no speech) and
  `speech.music_share` (its share of music or tones), indexed by SNR for the median. Legs
  labelled before version 5 hold NULL in both until they are labelled again: unknown.

Since version 6, erasure (store/erasure.py):
- `tombstones`: one row per erased conversation: its id, when, the reason given, and what the
  erase removed (files, microseconds of audio), so a repeated erase answers the same and a
  download of the same id is refused unless explicitly allowed.

Since version 7, for a JSON export that rewrites only what changed (store/json_export.py):
- `conversations.changed_revision`: the revision of the last write to the conversation's
  entry (every write of a file sets it), so an export finds the conversations written since
  the one before it.
- `store_info.exported_file`: which file the last export wrote (inode, size, modification
  time), so the next one copies unchanged entries from it only while it is still that file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    func,
    inspect,
    literal_column,
    select,
    update,
)

from diarization_audio.errors import MetadataCorrupt
from diarization_audio.names import NAME_MAX_LENGTH
from diarization_audio.progress import MB
from diarization_audio.url_secrets import source_sha256
from diarization_audio.wav import CHANNELS, SAMPLE_RATE

log = logging.getLogger(__name__)

SCHEMA_VERSION = 7
STAMP_LENGTH = 40  # ISO 8601 with microseconds and offset fits in 32
DAY_LENGTH = 10  # YYYY-MM-DD at the head of every stored timestamp
IDENTITY_LENGTH = 80  # a file's inode:size:mtime_ns

metadata = MetaData()

store_info = Table(
    "store_info",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("schema_version", Integer, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("exported_revision", BigInteger, nullable=False),
    Column("overlap_micros", BigInteger, nullable=False, server_default="0"),
    Column("exported_file", String(IDENTITY_LENGTH), nullable=True),
)

conversations = Table(
    "conversations",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("conversation_id", String(NAME_MAX_LENGTH), nullable=False, unique=True),
    Column("created_at", String(STAMP_LENGTH), nullable=False),
    Column("updated_at", String(STAMP_LENGTH), nullable=False),
    Column("agent_id", String(NAME_MAX_LENGTH), nullable=True),
    Column("overlap_micros", BigInteger, nullable=False, server_default="0"),
    Column("duration_micros", BigInteger, nullable=False, server_default="0"),
    Column("changed_revision", BigInteger, nullable=False, server_default="0"),
    Index("conversations_by_duration", "duration_micros"),
)

files = Table(
    "files",
    metadata,
    Column("conversation_id", String(NAME_MAX_LENGTH), primary_key=True),
    Column("speaker_label", String(NAME_MAX_LENGTH), primary_key=True),
    Column("filepath", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("source_sha256", String(64)),
    Column("file_size_bytes", BigInteger, nullable=False),
    Column("duration_seconds", Float, nullable=False),
    Column("sample_rate", Integer, nullable=False),
    Column("channels", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("downloaded_at", String(STAMP_LENGTH), nullable=False),
    Column("downloaded_epoch", Float, nullable=False),
    Index("files_by_time", "downloaded_epoch"),
)


def day_of(stamp: ColumnElement[str]) -> ColumnElement[str]:
    """The date part of a stored timestamp, written as `files_by_day` indexes it (literal
    arguments, not parameters: SQLite uses an expression index only for the same expression)."""
    return func.substr(stamp, literal_column("1"), literal_column(str(DAY_LENGTH)))


files_by_day = Index("files_by_day", day_of(files.c.downloaded_at), files.c.duration_seconds)

speaker_totals = Table(
    "speaker_totals",
    metadata,
    Column("speaker_label", String(NAME_MAX_LENGTH), primary_key=True),
    Column("files", BigInteger, nullable=False),
    Column("duration_micros", BigInteger, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("speech_micros", BigInteger, nullable=False, server_default="0"),
)

failures = Table(
    "failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation_id", String(NAME_MAX_LENGTH), nullable=False),
    Column("speaker_label", String(NAME_MAX_LENGTH), nullable=False),
    Column("url", Text, nullable=False),
    Column("error_code", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("failed_at", String(STAMP_LENGTH), nullable=False),
    Column("failed_epoch", Float, nullable=False),
    Index("failures_by_time", "failed_epoch"),
)

labellers = Table(
    "labellers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("provenance", Text, nullable=False, unique=True),
)

speech = Table(
    "speech",
    metadata,
    Column("conversation_id", String(NAME_MAX_LENGTH), primary_key=True),
    Column("speaker_label", String(NAME_MAX_LENGTH), primary_key=True),
    Column("file_sha256", String(64), nullable=False),
    Column("pcm_sha256", String(64), nullable=False),
    Column("speech_micros", BigInteger, nullable=False),
    Column("segment_count", Integer, nullable=False),
    Column("segments", Text, nullable=False),
    Column("clipped_share", Float, nullable=False),
    Column("paired", Integer, nullable=False),
    Column("labeller_id", Integer, nullable=False),
    Column("labelled_at", String(STAMP_LENGTH), nullable=False),
    Column("snr_db", Float, nullable=True),
    Column("music_share", Float, nullable=True),
    Index("speech_by_pcm", "pcm_sha256"),
    Index("speech_by_snr", "snr_db"),
)

conversation_flags = Table(
    "conversation_flags",
    metadata,
    Column("conversation_id", String(NAME_MAX_LENGTH), primary_key=True),
    Column("reason", String(32), primary_key=True),
    Column("detail", Text, nullable=False),
    Column("flagged_at", String(STAMP_LENGTH), nullable=False),
)

tombstones = Table(
    "tombstones",
    metadata,
    Column("conversation_id", String(NAME_MAX_LENGTH), primary_key=True),
    Column("erased_at", String(STAMP_LENGTH), nullable=False),
    Column("reason", Text, nullable=False),
    Column("files", Integer, nullable=False),
    Column("duration_micros", BigInteger, nullable=False),
)


def _add_speech(conn: Connection) -> None:
    """Version 1 -> 2: the speech tables, agent ids and the speech totals' columns."""
    for table, column in (
        ("store_info", "overlap_micros BIGINT NOT NULL DEFAULT 0"),
        ("conversations", f"agent_id VARCHAR({NAME_MAX_LENGTH})"),
        ("conversations", "overlap_micros BIGINT NOT NULL DEFAULT 0"),
        ("speaker_totals", "speech_micros BIGINT NOT NULL DEFAULT 0"),
    ):
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column}")
    metadata.create_all(conn, tables=[labellers, speech, conversation_flags])


def _add_source_hash(conn: Connection) -> None:
    """Version 2 -> 3: each file's source hash, so a freshly signed link to the same object
    counts as the same source. URLs already stored are left as they were."""
    conn.exec_driver_sql("ALTER TABLE files ADD COLUMN source_sha256 VARCHAR(64)")
    rows = conn.execute(select(files.c.conversation_id, files.c.speaker_label, files.c.url))
    for conversation_id, speaker_label, url in rows.all():
        conn.execute(
            update(files)
            .where(files.c.conversation_id == conversation_id)
            .where(files.c.speaker_label == speaker_label)
            .values(source_sha256=source_sha256(url))
        )


def _add_report_indexes(conn: Connection) -> None:
    """Version 3 -> 4: each conversation's total duration and the indexes reports read."""
    conn.exec_driver_sql(
        "ALTER TABLE conversations ADD COLUMN duration_micros BIGINT NOT NULL DEFAULT 0"
    )
    _count_durations(conn)
    for index in (files_by_day, *conversations.indexes):
        index.create(conn)


def _add_leg_quality(conn: Connection) -> None:
    """Version 4 -> 5: each labelled leg's SNR and music share, unknown (NULL) until the leg
    is labelled again. A store migrating from version 1 already has them: step 1 creates the
    speech table as this version defines it."""
    present = {column["name"] for column in inspect(conn).get_columns(speech.name)}
    for column in ("snr_db", "music_share"):
        if column not in present:
            kind = speech.c[column].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE speech ADD COLUMN {column} {kind}")
    next(i for i in speech.indexes if i.name == "speech_by_snr").create(conn, checkfirst=True)


def _add_tombstones(conn: Connection) -> None:
    """Version 5 -> 6: the tombstones of erased conversations (none yet)."""
    metadata.create_all(conn, tables=[tombstones])


def _add_export_tracking(conn: Connection) -> None:
    """Version 6 -> 7: when each conversation was last written (revision 0: before this
    version) and which file the export wrote (none known: the next export writes it whole)."""
    for table, column in ((conversations, "changed_revision"), (store_info, "exported_file")):
        if column not in {found["name"] for found in inspect(conn).get_columns(table.name)}:
            kind = table.c[column].type.compile(dialect=conn.dialect)
            default = " NOT NULL DEFAULT 0" if column == "changed_revision" else ""
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column} {kind}{default}")


# MIGRATIONS[n] brings a store of version n to version n + 1 inside one write transaction.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _add_speech,
    2: _add_source_hash,
    3: _add_report_indexes,
    4: _add_leg_quality,
    5: _add_tombstones,
    6: _add_export_tracking,
}


def create_schema(conn: Connection) -> None:
    """Every table of this version, and the store_info row, in an empty database."""
    metadata.create_all(conn)
    conn.execute(
        store_info.insert().values(
            id=1, schema_version=SCHEMA_VERSION, revision=0, exported_revision=0
        )
    )


def schema_version(conn: Connection, name: str) -> int | None:
    """The store's schema version; None for an empty database, MetadataCorrupt for a foreign one."""
    tables = set(inspect(conn).get_table_names())
    if not tables:
        return None
    if store_info.name not in tables:
        raise MetadataCorrupt(
            f"the metadata database holds tables ({', '.join(sorted(tables))}) but no "
            "store_info: it is not this service's store; refusing to touch it",
            log_detail=name,
        )
    version = conn.execute(select(store_info.c.schema_version)).scalar()
    if not isinstance(version, int):
        raise MetadataCorrupt("the metadata database has no schema version", log_detail=name)
    return version


def migrate(conn: Connection, name: str, version: int) -> None:
    """Bring a store of an older `version` up to SCHEMA_VERSION, or refuse to touch it."""
    if version > SCHEMA_VERSION or any(
        step not in MIGRATIONS for step in range(version, SCHEMA_VERSION)
    ):
        raise MetadataCorrupt(
            f"the metadata database has schema version {version}; this code knows version "
            f"{SCHEMA_VERSION} and how to migrate from {sorted(MIGRATIONS) or 'no older version'};"
            " refusing to touch it",
            log_detail=name,
        )
    for step in range(version, SCHEMA_VERSION):
        log.info("migrating %s from schema version %d to %d", name, step, step + 1)
        MIGRATIONS[step](conn)
    conn.execute(update(store_info).values(schema_version=SCHEMA_VERSION))


def _micros_of(seconds: ColumnElement[float]) -> ColumnElement[int]:
    return cast(func.round(seconds * 1_000_000), BigInteger)


def _count_durations(conn: Connection) -> None:
    per_conversation = (
        select(func.coalesce(func.sum(_micros_of(files.c.duration_seconds)), 0))
        .where(files.c.conversation_id == conversations.c.conversation_id)
        .scalar_subquery()
    )
    conn.execute(update(conversations).values(duration_micros=per_conversation))


def recount(conn: Connection) -> None:
    """speaker_totals, conversations' durations and the overlap total counted again from the
    rows (after bulk changes)."""
    conn.execute(speaker_totals.delete())
    _count_durations(conn)
    per_file = _micros_of(files.c.duration_seconds)
    conn.execute(
        speaker_totals.insert().from_select(
            ["speaker_label", "files", "duration_micros", "size_bytes"],
            select(
                files.c.speaker_label, func.count(), func.sum(per_file),
                func.sum(files.c.file_size_bytes),
            ).group_by(files.c.speaker_label),
        )
    )  # fmt: skip
    labelled = (
        select(func.coalesce(func.sum(speech.c.speech_micros), 0))
        .where(speech.c.speaker_label == speaker_totals.c.speaker_label)
        .scalar_subquery()
    )
    conn.execute(update(speaker_totals).values(speech_micros=labelled))
    overlap = select(func.coalesce(func.sum(conversations.c.overlap_micros), 0)).scalar_subquery()
    conn.execute(update(store_info).values(overlap_micros=overlap))


class StoredFile(BaseModel):
    """One stored WAV file: what the store records and what clients are told about it."""

    model_config = ConfigDict(frozen=True)

    filepath: str = Field(description="Where the WAV is stored.")
    url: str = Field(
        description="The URL it was downloaded from, without its query string (where signed "
        "URLs keep their signatures) unless STORE_URL_QUERY is set."
    )
    source_sha256: str | None = Field(
        default=None,
        description="SHA-256 of the source URL without its signing parameters: the same object "
        "under a freshly signed URL has the same hash, a different object another.",
    )
    file_size_bytes: int
    duration_seconds: float = Field(description="Read from the written WAV header.")
    sample_rate: int = Field(description=f"Always {SAMPLE_RATE}.")
    channels: int = Field(description=f"Always {CHANNELS}.")
    sha256: str = Field(description="SHA-256 of the stored WAV file.")
    downloaded_at: str = Field(description="ISO 8601 in LOG_TIMEZONE, with its offset.")

    @field_validator("duration_seconds")
    @classmethod
    def _milliseconds(cls, value: float) -> float:
        return round(value, 3)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def file_size_mb(self) -> float:
        return size_mb(self.file_size_bytes)


def size_mb(size_bytes: int) -> float:
    """A file's size as the metadata shows it: MB (MiB) to three decimals."""
    return round(size_bytes / MB, 3)


def micros(seconds: float) -> int:
    """Whole microseconds: totals stay exact whatever order files are added and replaced in."""
    return round(seconds * 1_000_000)
