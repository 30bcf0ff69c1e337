"""Settings for the service and the scripts: the only module that reads the environment."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Comma-separated in the environment ("a.example.com,*.example.org"), not JSON.
CommaList = Annotated[list[str], NoDecode]
NetworkList = Annotated[list[Network], NoDecode]


class Settings(BaseSettings):
    """Every knob, read from the environment or `.env`; names match `.env.example`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # Where things live.
    audio_storage_dir: Path = Path("./downloaded_audios")
    # s3://bucket/prefix: the WAVs go to that bucket (AUDIO_STORAGE_DIR then holds only work in
    # progress). Unset: they stay in AUDIO_STORAGE_DIR.
    audio_storage_url: str | None = None
    # The bucket's endpoint (MinIO, a local S3 server; unset: AWS), region and keys, under the
    # names every S3 tool reads. Unset keys fall back to boto3's own chain (~/.aws, a role).
    aws_endpoint_url: str | None = None
    aws_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    metadata_file: Path = Path("./conversations_metadata.json")
    log_dir: Path = Path("./logs")
    # The store: PostgreSQL when DATABASE_URL is set, else SQLite at DATABASE_FILE (default:
    # beside METADATA_FILE, as conversations_metadata.sqlite3).
    database_url: str | None = None
    database_file: Path | None = None
    metadata_export_seconds: float = Field(default=2.0, gt=0)

    # How the service listens and logs.
    host: str = "0.0.0.0"
    port: int = Field(default=8888, ge=1, le=65535)
    log_level: str = "INFO"
    log_timezone: str = "Asia/Kolkata"

    # Downloading.
    max_download_mb: float = Field(default=2048, gt=0)
    download_timeout_seconds: float = Field(default=30, gt=0)
    download_deadline_seconds: float = Field(default=3600, gt=0)
    download_retries: int = Field(default=3, ge=0, le=20)
    download_retry_backoff_seconds: float = Field(default=1.0, ge=0)
    download_retry_max_wait_seconds: float = Field(default=60, ge=0)
    # A source averaging under this rate over the window fails with 504 (0 turns it off).
    min_download_rate_kb: float = Field(default=10, ge=0)
    min_download_rate_window_seconds: float = Field(default=30, gt=0)
    # Signed URLs: stored without their query string unless this is set (logs and answers
    # never show query strings).
    store_url_query: bool = False

    # Converting.
    ffmpeg_binary: str | None = None
    convert_timeout_seconds: float = Field(default=3600, gt=0)
    max_audio_hours: float = Field(default=6, gt=0)
    max_concurrent_jobs: int = Field(default=8, ge=1)
    # Per host, across every service process: default the number of CPU cores.
    max_concurrent_conversions: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    conversion_slots_dir: Path = Path(tempfile.gettempdir()) / "diarization-conversion-slots"
    job_queue_timeout_seconds: float = Field(default=300, ge=0)
    # ffmpeg runs this much nicer than the server, so requests are answered under load.
    conversion_niceness: int = Field(default=10, ge=0, le=19)
    # On SIGTERM, jobs in flight get this long to finish; the rest are cancelled with 503.
    shutdown_grace_seconds: float = Field(default=20, ge=0)
    # Who spoke when: each stored leg's speech turns, found as soon as it is recorded.
    label_speech: bool = True
    # Flags a team filters on: a leg's speech-band SNR under this (dB) is `low_snr`; a leg
    # with more than this share of music or tones is `music`.
    low_snr_db: float = 10.0
    music_flag_share: float = Field(default=0.2, ge=0, le=1)
    min_free_disk_mb: float = Field(default=1024, ge=0)

    # Who may call, and what may be fetched.
    api_key: str | None = None
    allowed_url_hosts: CommaList = Field(default_factory=list)
    blocked_networks: NetworkList = Field(
        default_factory=lambda: [
            ipaddress.ip_network("169.254.0.0/16"),
            ipaddress.ip_network("fe80::/10"),
        ]
    )
    block_private_networks: bool = False

    # Monitoring: GET /metrics in the Prometheus text format.
    # Each run of the service (one `python main.py`, or one `uvicorn --workers N` with all its
    # workers) keeps its metric files in a directory of its own under this one.
    metrics_dir: Path = Path(tempfile.gettempdir()) / "diarization-metrics"
    # true lets /metrics be scraped without X-API-Key even when API_KEY is set.
    metrics_public: bool = False
    # The dashboard's target when /dashboard is given no target_hours.
    dashboard_target_hours: float = Field(default=100, gt=0, le=1e9)

    @field_validator("allowed_url_hosts", "blocked_networks", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "ffmpeg_binary", "api_key", "database_url", "database_file", "audio_storage_url",
        "aws_endpoint_url", "aws_region", "aws_access_key_id", "aws_secret_access_key",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _blank_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("audio_storage_url")
    @classmethod
    def _bucket_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise PydanticCustomError(
                "bucket_url",
                "expected s3://bucket or s3://bucket/prefix, got {url} (a local folder is "
                "AUDIO_STORAGE_DIR)",
                {"url": repr(value)},
            )
        return value

    @field_validator("log_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError(
                "time_zone", "unknown time zone {zone}", {"zone": repr(value)}
            ) from None
        return value

    @property
    def max_download_bytes(self) -> int:
        return int(self.max_download_mb * 1024 * 1024)

    @property
    def min_free_disk_bytes(self) -> int:
        return int(self.min_free_disk_mb * 1024 * 1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def settings_under(base: Path, **overrides: object) -> Settings:
    """Settings keeping the store, its JSON export, the logs and the conversion slots under
    `base`, reading no .env file and no DATABASE_URL: a store of its own (a benchmark, a test,
    a picture for the docs). Other fields come from `overrides`, else the environment."""
    values: dict[str, object] = {
        "audio_storage_dir": base / "store",
        "metadata_file": base / "conversations_metadata.json",
        "log_dir": base / "logs",
        "conversion_slots_dir": base / "slots",
        "database_url": None,
        "audio_storage_url": None,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type,call-arg]


def invalid_settings(exc: ValidationError) -> str:
    """`invalid settings: NAME: message` for the first problem, NAME as its environment variable."""
    problem = exc.errors()[0]
    name = str(problem["loc"][0]).upper() if problem["loc"] else "settings"
    return f"invalid settings: {name}: {problem['msg']}"
