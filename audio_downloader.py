"""The downloader, as code written against this module imports it: one conversation's files
fetched, converted to 16 kHz mono WAV and recorded (diarization_audio/ingest/downloader.py),
and the name and URL rules it checks (diarization_audio/names.py)."""

from diarization_audio.ingest.downloader import AudioDownloader, StoredAudio
from diarization_audio.names import validate_name, validate_url

__all__ = ["AudioDownloader", "StoredAudio", "validate_name", "validate_url"]
