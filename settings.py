"""Settings for the service and the scripts: the only module that reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob, read from the environment or `.env`; names match `.env.example`."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Where things live.
    audio_storage_dir: Path = Path("./downloaded_audios")
    metadata_file: Path = Path("./conversations_metadata.json")
    log_dir: Path = Path("./logs")

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

    # Converting.
    ffmpeg_binary: str | None = None
    convert_timeout_seconds: float = Field(default=3600, gt=0)
    max_audio_hours: float = Field(default=6, gt=0)
    max_concurrent_jobs: int = Field(default=8, ge=1)

    @field_validator("ffmpeg_binary", mode="before")
    @classmethod
    def _blank_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def max_download_bytes(self) -> int:
        return int(self.max_download_mb * 1024 * 1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
