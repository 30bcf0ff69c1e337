"""Domain errors shared by the service and the scripts: each class owns its code and HTTP status.

AudioError
├── InvalidInput
├── Unauthorized
├── UrlRefused
├── NotFound
├── UrlConflict
├── Erased
├── TooLarge
├── NotAudio
├── NotStereo
├── IdenticalChannels
├── AudioTooLong
├── StorageError
├── MetadataCorrupt
├── InternalError
├── SourceError
├── ConversionTimeout
├── Busy
│   └── ShuttingDown
├── SourceTimeout
└── InsufficientStorage

Each class says once what it means to a client: `code` (the `error` of the JSON answer), `status`
(the HTTP status main.py answers) and `description` (the API documentation's words). `message` is
what the client reads, so it must name no path on the server; `log_detail`, when given, is for the
log only (paths, errno, the original exception). Scripts print the message and exit non-zero.
"""

from __future__ import annotations


class AudioError(Exception):
    """Base of every error the product reports on purpose."""

    code = "audio_error"
    status = 500
    description = "the service failed"

    def __init__(self, message: str, log_detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.log_detail = log_detail

    @property
    def full_message(self) -> str:
        """The message with the log-only detail, for the log and the local operator."""
        return f"{self.message} ({self.log_detail})" if self.log_detail else self.message


class InvalidInput(AudioError):
    code = "invalid_input"
    status = 400
    description = "a field is missing or malformed"


class Unauthorized(AudioError):
    code = "unauthorized"
    status = 401
    description = "API_KEY is set and X-API-Key is missing or wrong"


class UrlRefused(AudioError):
    code = "url_refused"
    status = 403
    description = "the URL policy refuses this host, address or redirect"


class NotFound(AudioError):
    code = "not_found"
    status = 404
    description = "no such conversation"


class UrlConflict(AudioError):
    code = "url_conflict"
    status = 409
    description = "the same file is already stored from another URL"


class Erased(AudioError):
    code = "erased"
    status = 410
    description = "the conversation was erased; allow_erased=true stores it again"


class TooLarge(AudioError):
    code = "too_large"
    status = 413
    description = "the source is larger than MAX_DOWNLOAD_MB"


class NotAudio(AudioError):
    code = "not_audio"
    status = 422
    description = "the body is not decodable audio"


class NotStereo(AudioError):
    code = "not_stereo"
    status = 422
    description = "a stereo download's audio has one channel"


class IdenticalChannels(AudioError):
    code = "identical_channels"
    status = 422
    description = "a stereo download's two channels hold the same audio (a mono recording)"


class AudioTooLong(AudioError):
    code = "audio_too_long"
    status = 422
    description = "the audio is longer than MAX_AUDIO_HOURS"


class StorageError(AudioError):
    code = "storage_error"
    status = 500
    description = "the storage directory, the bucket or the metadata file could not be used"


class MetadataCorrupt(AudioError):
    code = "metadata_corrupt"
    status = 500
    description = "the metadata file does not parse"


class InternalError(AudioError):
    """What a client hears of an unexpected exception; the log keeps the exception itself."""

    code = "internal_error"
    status = 500
    description = "an unexpected error (the server log has the detail)"


class SourceError(AudioError):
    code = "source_error"
    status = 502
    description = "the source answered an error or was unreachable"


class ConversionTimeout(AudioError):
    code = "conversion_timeout"
    status = 503
    description = "the conversion ran past CONVERT_TIMEOUT_SECONDS"


class Busy(AudioError):
    code = "busy"
    status = 503
    description = "no job slot freed within JOB_QUEUE_TIMEOUT_SECONDS (see Retry-After)"

    def __init__(self, message: str, retry_after: int = 5, log_detail: str | None = None) -> None:
        super().__init__(message, log_detail)
        self.retry_after = retry_after


class ShuttingDown(Busy):
    code = "shutting_down"
    status = 503
    description = (
        "the service is stopping (SIGTERM) and cancelled this job after SHUTDOWN_GRACE_SECONDS, "
        "or took no new one; nothing was stored (see Retry-After)"
    )


class SourceTimeout(AudioError):
    code = "source_timeout"
    status = 504
    description = "the source did not answer in time"


class InsufficientStorage(AudioError):
    code = "insufficient_storage"
    status = 507
    description = "the storage disk is (nearly) full"
