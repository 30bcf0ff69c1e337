"""What a place for finished files offers (a folder or a bucket prefix, see objects.py): its
entries, the uploads that publish a file whole, and the s3:// URL rule."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlsplit

S3_SCHEME = "s3://"
# Parts of a multipart upload: S3 wants at least 5 MiB for every part but the last. 8 MiB parts
# keep a 60-minute WAV (115 MB) to 14 requests; at most PART_THREADS are in flight at once, so
# memory holds at most PART_THREADS parts whatever the file's length.
PART_BYTES = 8 * 1024 * 1024
PART_THREADS = 4
LIST_PAGE = 1000


@dataclass(frozen=True, order=True)
class Entry:
    """A finished file: its name in the place and its size in bytes."""

    name: str
    size: int


class Pending(Protocol):
    """A file ready under its final name but not yet visible there."""

    def publish(self) -> None: ...

    def abandon(self) -> None: ...


class Following(Protocol):
    """An upload that follows a file while it is written: `restart` when the writer starts the
    file over, `finish` once it is complete (sends what is left; returns the Pending), or
    `abandon`."""

    def restart(self) -> None: ...

    def finish(self) -> Pending: ...

    def abandon(self) -> None: ...


class Place(Protocol):
    """A folder or a bucket prefix holding finished files by name."""

    url: str

    def location(self, name: str) -> str:
        """What a record says of the file: a path, or s3://bucket/key."""
        ...

    def size(self, name: str) -> int | None: ...

    def open(self, name: str) -> IO[bytes]:
        """The file for reading from its start; FileNotFoundError when it is not there."""
        ...

    def delete(self, name: str) -> bool:
        """Remove the file; whether it was there."""
        ...

    def entries(self, after: str = "", limit: int | None = None) -> Iterator[Entry]:
        """Finished files by name, after `after`; names starting with a dot are never listed."""
        ...

    def upload(self, local: Path, name: str) -> Pending: ...

    def follow(self, local: Path, name: str) -> Following:
        """Start uploading `local` while its writer is still writing it (see Following)."""
        ...

    def abandon_recorded(self, note: Path) -> None:
        """Abort the upload a dead process noted in `note` beside its file (see Following)."""
        ...

    def read_bytes(self, name: str) -> bytes | None: ...

    def write_bytes(self, name: str, data: bytes) -> None:
        """Put a small file in place whole (an index, a manifest)."""
        ...

    def put_file(self, local: Path, name: str) -> None:
        """Upload and publish at once."""
        ...

    def download(self, name: str, local: Path) -> None: ...


def is_bucket_url(text: str | os.PathLike[str]) -> bool:
    return isinstance(text, str) and text.startswith(S3_SCHEME)


def split_bucket_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix") of s3://bucket/prefix (the prefix without slashes at either end)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"expected s3://bucket or s3://bucket/prefix, got {url!r}")
    return parts.netloc, parts.path.strip("/")
