"""Request and response models of the HTTP API, named by role; they drive /docs and /redoc."""

from __future__ import annotations

from pydantic import BaseModel, Field

NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
NAME_RULE = "1-128 characters of letters, digits, '.', '_' or '-', not starting with '.'"


class ErrorPublic(BaseModel):
    """Every error answer."""

    detail: str = Field(description="What went wrong, naming the field or URL and the cause.")
    error: str = Field(description="Short machine-readable code, e.g. source_error, not_audio.")


class RootPublic(BaseModel):
    name: str
    version: str
    endpoints: dict[str, str] = Field(description="Path -> what it does.")


class FfmpegPublic(BaseModel):
    path: str = Field(description="The ffmpeg binary in use.")
    version: str


class HealthPublic(BaseModel):
    status: str = Field(description="'healthy', or 'degraded' when storage is not writable.")
    version: str
    storage_directory: str
    storage_writable: bool
    metadata_file: str
    ffmpeg: FfmpegPublic
    free_disk_mb: float = Field(description="Free space on the storage directory's disk.")
    timestamp: str


class DownloadResultPublic(BaseModel):
    """One stored file."""

    status: str = Field(description="'success' (downloaded now) or 'exists' (already stored).")
    conversation_id: str
    speaker_label: str
    filename: str = Field(description="{conversation_id}_{speaker_label}.wav")
    filepath: str
    file_size_mb: float
    duration_seconds: float = Field(description="Read from the written WAV.")
    sample_rate: int = Field(description="Always 16000.")
    channels: int = Field(description="Always 1.")
    url: str
    sha256: str
    downloaded_at: str


class DualItemPublic(BaseModel):
    """One speaker's outcome inside a dual download."""

    speaker: str
    filename: str
    status: str = Field(description="'success', 'exists' or 'failed'.")
    filepath: str | None = None
    file_size_mb: float | None = None
    duration_seconds: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    url: str
    sha256: str | None = None
    error: str | None = Field(default=None, description="Why it failed (failed only).")
    error_code: str | None = Field(default=None, description="Short code (failed only).")


class DualDownloadPublic(BaseModel):
    conversation_id: str
    status: str = Field(description="'success' (all stored), 'partial' (some) or 'failed'.")
    total_files: int = Field(description="Files stored by this request (success or exists).")
    downloads: list[DualItemPublic]


class StorageInfoPublic(BaseModel):
    storage_directory: str
    total_files: int
    total_size_mb: float
    files: list[str] = Field(description="Sorted names of the stored .wav files.")


class SummaryPublic(BaseModel):
    total_conversations: int
    total_hours: float
    total_minutes: float
    total_size_mb: float
    total_size_gb: float
    average_duration_minutes: float
    average_size_mb: float
    first_download: str | None
    last_download: str | None


class ProgressPublic(BaseModel):
    target_hours: float
    current_hours: float
    remaining_hours: float = Field(description="Never negative.")
    progress_percentage: float
    estimated_conversations_needed: int = Field(
        description="ceil(remaining hours / average hours per conversation); 0 with no data."
    )
    target_reached: bool


class StatisticsPublic(BaseModel):
    summary: SummaryPublic
    progress: ProgressPublic
    timestamp: str


class StoredFilePublic(BaseModel):
    """A file sub-entry of the metadata."""

    filepath: str
    url: str
    file_size_bytes: int
    file_size_mb: float
    duration_seconds: float
    sample_rate: int
    channels: int
    sha256: str
    downloaded_at: str


class TotalsPublic(BaseModel):
    files: int
    file_size_bytes: int
    size_mb: float
    duration_seconds: float
    duration_minutes: float
    duration_hours: float


class ConversationPublic(BaseModel):
    conversation_id: str
    created_at: str
    updated_at: str
    speakers: dict[str, StoredFilePublic] = Field(description="Speaker label -> stored file.")
    total: TotalsPublic


class ConversationsPagePublic(BaseModel):
    total: int
    limit: int
    offset: int
    conversations: list[ConversationPublic]
