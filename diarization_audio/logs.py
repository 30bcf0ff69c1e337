"""Logging set-up: console plus a rotating file, timestamps in LOG_TIMEZONE with the offset, and
no URL query strings (signed URLs' secrets) in any line, nor an erase's reason in uvicorn's
access lines."""

from __future__ import annotations

import logging
import re
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from concurrent_log_handler import ConcurrentRotatingFileHandler

from diarization_audio.settings import Settings
from diarization_audio.url_secrets import scrub

LOG_FILENAME = "audio_downloader.log"
MAX_BYTES = 5 * 1024 * 1024
BACKUP_COUNT = 3
_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
_MARK = "_audio_downloader_handler"
# An erase's reason is free text (a ticket, a name, a pasted link); the erase's own log line
# carries it scrubbed, and uvicorn's access line, which prints the request's query, not at all.
_REASON_VALUE = re.compile(r"([?&]reason=)[^&\s]*")


class _WithoutReasons(logging.Filter):
    """Rewrites uvicorn's access records (client, method, path with query, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path = _REASON_VALUE.sub(r"\1(not logged)", args[2])
            record.args = (args[0], args[1], path, args[3], args[4])
        return True


class ZonedFormatter(logging.Formatter):
    """Formats record times in one fixed time zone, e.g. 2026-11-24 12:40:01.123+05:30."""

    def __init__(self, fmt: str, tz: ZoneInfo) -> None:
        super().__init__(fmt)
        self.tz = tz

    def format(self, record: logging.LogRecord) -> str:
        # Source URLs appear in messages and tracebacks; their query strings never do.
        return scrub(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, self.tz)
        return moment.isoformat(sep=" ", timespec="milliseconds")


def setup_logging(settings: Settings, *, console: bool = True) -> Path:
    """Configure the root logger once per process; returns the log file path.

    Calling it again (a second app in the same test process) replaces this module's handlers
    rather than stacking duplicates.
    """
    log_dir = Path(settings.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / LOG_FILENAME
    formatter = ZonedFormatter(_FORMAT, ZoneInfo(settings.log_timezone))

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
            handler.close()

    # Several uvicorn workers share one file; this handler locks around writes and rotation so
    # that no process writes into a file another one has just rotated away.
    handlers: list[logging.Handler] = [
        ConcurrentRotatingFileHandler(
            log_path, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8"
        )
    ]
    if console:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _WithoutReasons) for f in access.filters):
        access.addFilter(_WithoutReasons())
    # httpx logs every request at INFO; the service logs its own outcome line instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return log_path
