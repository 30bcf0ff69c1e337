"""The one rule for conversation ids, speaker labels and agent ids, and the one for audio URLs.

The HTTP API (as a pattern and its description), the downloader, the store's column widths and
the conversations CSV all take the rule from here. Only the standard library is imported, so a
script that reads a CSV and talks HTTP loads nothing of the server.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from diarization_audio.errors import InvalidInput

NAME_MAX_LENGTH = 128
NAME_PATTERN = rf"^[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{NAME_MAX_LENGTH - 1}}}$"
_CHARACTERS = f"1-{NAME_MAX_LENGTH} characters of letters, digits, '.', '_' or '-'"
NAME_RULE = f"{_CHARACTERS}, not starting with '.'"
_NAME_RE = re.compile(NAME_PATTERN)
_SHOWN_CHARS = 80  # of a refused name
_SHOWN_URL_CHARS = 200  # of a refused URL


def validate_name(field: str, value: str) -> str:
    """A conversation id or speaker label: 1-128 of [A-Za-z0-9._-], not starting with '.'."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        shown = (
            value
            if isinstance(value, str) and len(value) <= _SHOWN_CHARS
            else f"{str(value)[:_SHOWN_CHARS]}..."
        )
        raise InvalidInput(
            f"{field} must be {_CHARACTERS} and must not start with '.'; got {shown!r}"
        )
    return value


def validate_url(field: str, url: str) -> str:
    """An absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535
    except ValueError as exc:
        raise InvalidInput(
            f"{field} is not a valid URL: {url[:_SHOWN_URL_CHARS]!r} ({exc})"
        ) from exc
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise InvalidInput(
            f"{field} must be an http or https URL with a host; got {url[:_SHOWN_URL_CHARS]!r}"
        )
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidInput(f"{field} must not contain whitespace or control characters")
    return url
