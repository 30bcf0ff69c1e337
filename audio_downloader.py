"""The downloader, as code written against this module imports it: one conversation's files
fetched, converted to 16 kHz mono WAV and recorded (diarization_audio/ingest/downloader.py)."""

from diarization_audio.ingest.downloader import (
    AudioDownloader,
    StoredAudio,
    validate_name,
    validate_url,
)

__all__ = ["AudioDownloader", "StoredAudio", "validate_name", "validate_url"]
