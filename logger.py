"""Logging set-up, as code written against this module imports it (diarization_audio/logs.py)."""

from diarization_audio.logs import LOG_FILENAME, ZonedFormatter, setup_logging

__all__ = ["LOG_FILENAME", "ZonedFormatter", "setup_logging"]
