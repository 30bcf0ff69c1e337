"""Signed URLs are credentials: what of a URL may be shown, and how sources are told apart.

S3, GCS, Azure and CDN links carry their signatures and tokens in the query string, and some
links carry a user and password before the host. Neither may reach a log line, an answer or
the store (unless STORE_URL_QUERY asks to keep whole URLs). What remains, scheme, host and
path, is `shown(url)`. Two links to the same object signed at different times must still count
as one source, so sources are compared by `source_sha256`: a hash of the URL with its signing
parameters removed (and every other parameter kept, so `?id=1` and `?id=2` stay apart).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that sign or authorise a link rather than name the object: AWS SigV2/V4,
# Google Cloud Storage, Azure SAS, CloudFront and the usual token names.
_SIGNING_PREFIXES = ("x-amz-", "x-goog-")
_SIGNING_NAMES = frozenset(
    {
        "awsaccesskeyid", "signature", "expires", "googleaccessid", "key-pair-id", "policy",
        "sig", "se", "st", "sp", "sv", "sr", "ss", "srt", "spr", "si", "sip", "skoid", "sktid",
        "skt", "ske", "sks", "skv", "sdd", "ses", "token", "access_token", "auth", "x-auth-token",
    }
)  # fmt: skip
# A URL in free text: its query string and fragment, or a user:password@ before its host.
_QUERY_IN_TEXT = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s?#'\"<>]*)[?#][^\s'\"<>]*")
_USERINFO_IN_TEXT = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#'\"<>@]*@")


def shown(url: str) -> str:
    """The URL as logs, answers and the store show it: no query, fragment, user or password."""
    return scrub(url)


def scrub(text: str) -> str:
    """`text` with every URL in it reduced to what `shown` keeps."""
    return _QUERY_IN_TEXT.sub(r"\1", _USERINFO_IN_TEXT.sub(r"\1", text))


def source_sha256(url: str) -> str:
    """SHA-256 (hex) of the URL without user, password, fragment and signing parameters."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    kept = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if not _signs(name)
    ]
    plain = urlunsplit((parts.scheme.lower(), netloc, parts.path, urlencode(kept), ""))
    return hashlib.sha256(plain.encode("utf-8", "surrogateescape")).hexdigest()


def _signs(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SIGNING_NAMES or lowered.startswith(_SIGNING_PREFIXES)
