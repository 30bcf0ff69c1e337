"""Domain errors shared by the service and the scripts.

AudioError                 base; every error carries a short machine code
├── InvalidInput           a field is missing or malformed                    (400)
├── Unauthorized           API_KEY is set and X-API-Key is missing or wrong   (401)
├── UrlRefused             the URL policy forbids this host or address         (403)
├── NotFound               no such conversation                               (404)
├── UrlConflict            same file already stored from another URL          (409)
├── SourceError            the source answered 4xx/5xx or was unreachable     (502)
├── SourceTimeout          the source did not answer in time                  (504)
├── TooLarge               the body exceeds MAX_DOWNLOAD_MB                   (413)
├── NotAudio               the body is not decodable audio                    (422)
├── AudioTooLong           the audio exceeds MAX_AUDIO_HOURS                  (422)
├── ConversionTimeout      ffmpeg ran past CONVERT_TIMEOUT_SECONDS            (503)
├── Busy                   no job slot freed within JOB_QUEUE_TIMEOUT_SECONDS (503)
├── InsufficientStorage    the disk is (nearly) full                          (507)
├── StorageError           the storage directory could not be written         (500)
└── MetadataCorrupt        the metadata file does not parse                   (500)

main.py maps each class to its HTTP status; scripts print the message and exit non-zero.
"""

from __future__ import annotations


class AudioError(Exception):
    """Base of every error the product reports on purpose."""

    code = "audio_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AudioError):
    code = "invalid_input"


class NotFound(AudioError):
    code = "not_found"


class UrlConflict(AudioError):
    code = "url_conflict"


class SourceError(AudioError):
    code = "source_error"


class SourceTimeout(AudioError):
    code = "source_timeout"


class TooLarge(AudioError):
    code = "too_large"


class NotAudio(AudioError):
    code = "not_audio"


class AudioTooLong(AudioError):
    code = "audio_too_long"


class ConversionTimeout(AudioError):
    code = "conversion_timeout"


class InsufficientStorage(AudioError):
    code = "insufficient_storage"


class StorageError(AudioError):
    code = "storage_error"


class MetadataCorrupt(AudioError):
    code = "metadata_corrupt"


class UrlRefused(AudioError):
    code = "url_refused"


class Unauthorized(AudioError):
    code = "unauthorized"


class Busy(AudioError):
    code = "busy"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
