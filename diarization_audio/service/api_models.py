"""Request and response models of the HTTP API, named by role; they drive /docs and /redoc."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo

from diarization_audio.store.schema import StoredFile


def _computed(model: type[BaseModel]) -> dict[str, Any]:
    """A model's computed fields, shaped like its ordinary ones (annotation, description)."""
    return {
        name: FieldInfo(annotation=info.return_type, description=info.description)
        for name, info in model.model_computed_fields.items()
    }


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


class DownloadResultPublic(StoredFile):
    """One stored file."""

    status: str = Field(description="'success' (downloaded now) or 'exists' (already stored).")
    conversation_id: str
    speaker_label: str
    filename: str = Field(description="{conversation_id}_{speaker_label}.wav")


# The stored file's fields, each optional: a failed item of a dual download has none of them.
_OptionalStoredFile: type[BaseModel] = create_model(
    "_OptionalStoredFile",
    **{
        name: (field.annotation | None, Field(default=None, description=field.description))
        for name, field in {**StoredFile.model_fields, **_computed(StoredFile)}.items()
    },  # type: ignore[call-overload]
)


class DualItemPublic(_OptionalStoredFile):  # type: ignore[misc,valid-type]
    """One speaker's outcome inside a dual download."""

    speaker: str
    filename: str
    status: str = Field(description="'success', 'exists' or 'failed'.")
    url: str
    error: str | None = Field(default=None, description="Why it failed (failed only).")
    error_code: str | None = Field(default=None, description="Short code (failed only).")


class DualDownloadPublic(BaseModel):
    conversation_id: str
    status: str = Field(description="'success' (all stored), 'partial' (some) or 'failed'.")
    total_files: int = Field(description="Files stored by this request (success or exists).")
    downloads: list[DualItemPublic]


class StorageInfoPublic(BaseModel):
    storage_directory: str = Field(description="The folder, or s3://bucket/prefix.")
    total_files: int = Field(description="Every stored .wav file, not only this page's.")
    total_size_mb: float
    files: list[str] = Field(description="Sorted names of the stored .wav files: one page.")
    next_after: str | None = Field(
        default=None, description="Pass as `after` for the next page; null on the last page."
    )


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
    measured_in: Literal["audio", "speech"] = Field(
        description="Hours counted toward the target: audio (default) or speech (`speech=true`)."
    )
    target_hours: float
    current_hours: float
    remaining_hours: float = Field(description="Never negative.")
    progress_percentage: float
    estimated_conversations_needed: int = Field(
        description="ceil(remaining hours / average hours per conversation); 0 with no data."
    )
    target_reached: bool


class FailuresPublic(BaseModel):
    total: int = Field(description="Failed download attempts ever recorded.")
    last_24_hours: int
    by_error_last_24_hours: dict[str, int] = Field(description="Error code -> attempts.")


class LegQualityPublic(BaseModel):
    snr_measured_legs: int = Field(
        description="Labelled legs with an SNR (legs without speech, and legs labelled before "
        "the measure existed, have none)."
    )
    snr_median_db: float | None = Field(
        description="Median speech-band SNR of those legs, dB; null when there is none. Legs "
        "under LOW_SNR_DB flag their conversation `low_snr`."
    )
    music_measured_legs: int = Field(
        description="Labelled legs with a music share (all but those labelled before it existed)."
    )
    legs_with_music: int = Field(
        description="Legs with any music or tones; over MUSIC_FLAG_SHARE of a leg flags `music`."
    )


class SpeechPublic(BaseModel):
    labelled_files: int = Field(description="Stored files whose speech turns are labelled.")
    unlabelled_files: int = Field(
        description="Stored files without labels yet: labels follow each answer by a moment; "
        "a file whose labelling failed stays here until `metadata_tracker.py --label`."
    )
    speech_hours: float = Field(description="Speech on every leg, added up.")
    speech_hours_by_speaker: dict[str, float]
    overlap_hours: float = Field(description="Time both legs of a call speak at once.")
    speech_share: float = Field(description="Speech hours / audio hours.")
    flagged_conversations: int
    flags: dict[str, int] = Field(description="Quality flag reason -> conversations.")
    quality: LegQualityPublic


class StatisticsPublic(BaseModel):
    summary: SummaryPublic
    progress: ProgressPublic
    speech: SpeechPublic
    failures: FailuresPublic
    timestamp: str
    erased_conversations: int = Field(
        description="Erased conversations whose tombstone is present (it refuses their download;"
        " a download with allow_erased=true lifts it)."
    )


class StoredFilePublic(StoredFile):
    """A file sub-entry of the metadata."""


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


class ErasurePublic(BaseModel):
    """What erasing a conversation removed; erasing it again answers the same."""

    conversation_id: str
    erased_at: str = Field(description="When it was first erased.")
    reason: str = Field(description="The reason given when it was first erased.")
    files: int = Field(description="Stored files removed (their records and WAVs).")
    duration_seconds: float = Field(description="Seconds of audio removed from the totals.")
