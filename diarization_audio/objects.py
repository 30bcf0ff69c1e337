"""Where finished files live: a local folder or an S3 bucket prefix, behind one small interface.

The stored WAVs (AUDIO_STORAGE_DIR, or AUDIO_STORAGE_URL=s3://bucket/prefix) and the sharded
training exports both go through a `Place`. A file is first written locally, then `upload`
makes it ready under its final name without showing it (a folder: nothing to do yet; a bucket:
every part of a multipart upload sent), and `Pending.publish` shows it at once (a rename; the
upload's completion). The store publishes inside the transaction that records the file, so a
crash leaves neither a half file under a final name nor a record without its file.

The interface is in places.py, a bucket in bucket.py; this module has a folder and the functions
that pick one from the settings or a URL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from diarization_audio.atomic import fsync_directory, write_atomically
from diarization_audio.bucket import Bucket
from diarization_audio.errors import StorageError
from diarization_audio.places import (
    LIST_PAGE,
    PART_BYTES,
    PART_THREADS,
    S3_SCHEME,
    Entry,
    Following,
    Pending,
    Place,
    is_bucket_url,
    split_bucket_url,
)

if TYPE_CHECKING:
    from diarization_audio.settings import Settings

__all__ = [
    "LIST_PAGE", "PART_BYTES", "PART_THREADS", "S3_SCHEME", "Bucket", "Entry", "Folder",
    "Following", "Pending", "Place", "audio_place", "is_bucket_url", "local_copy",
    "open_location", "place_at", "split_bucket_url",
]  # fmt: skip


def audio_place(settings: Settings) -> Place:
    """Where the stored WAVs live: AUDIO_STORAGE_URL's bucket, else AUDIO_STORAGE_DIR."""
    if settings.audio_storage_url:
        return Bucket(settings.audio_storage_url, settings)
    return Folder(Path(settings.audio_storage_dir))


def place_at(target: str | Path, settings: Settings) -> Place:
    """A folder path or an s3:// URL as a place (an export's OUTPUT)."""
    if is_bucket_url(str(target)):
        return Bucket(str(target), settings)
    return Folder(Path(target))


def _in_bucket(location: str, settings: Settings) -> tuple[Bucket, str]:
    """The bucket prefix holding s3://bucket/key, and the name of the object in it."""
    bucket, key = split_bucket_url(location)
    parent, _, name = key.rpartition("/")
    return Bucket(f"s3://{bucket}/{parent}", settings), name


def open_location(location: str, settings: Settings) -> IO[bytes]:
    """A record's file (a path, or s3://bucket/key) for reading."""
    if is_bucket_url(location):
        bucket, name = _in_bucket(location, settings)
        return bucket.open(name)
    return open(location, "rb")


@contextlib.contextmanager
def local_copy(location: str, settings: Settings | None) -> Iterator[Path]:
    """A record's file as a local path: itself, or a temporary copy of the object in
    AUDIO_STORAGE_DIR (removed after)."""
    if not is_bucket_url(location):
        yield Path(location)
        return
    if settings is None:
        raise ValueError(f"reading {location} needs the settings (the bucket's endpoint, keys)")
    work_dir = Path(settings.audio_storage_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    copy = work_dir / f".{Path(location).name}.{os.getpid()}.{os.urandom(16).hex()}.wav"
    try:
        bucket, name = _in_bucket(location, settings)
        bucket.download(name, copy)
        yield copy
    finally:
        copy.unlink(missing_ok=True)


# A folder ------------------------------------------------------------------------------------


@dataclass
class _Rename:
    local: Path
    final: Path

    def publish(self) -> None:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.local, self.final)

    def abandon(self) -> None:
        pass  # the local file is its writer's to remove


@dataclass
class _Local:
    """Following a file into a folder: nothing happens until the file is complete."""

    local: Path
    final: Path

    def restart(self) -> None:
        pass

    def finish(self) -> Pending:
        return _Rename(self.local, self.final)

    def abandon(self) -> None:
        pass


class Folder:
    """Files in a local directory (fsynced: a deletion or a new name survives a power cut)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.url = str(directory)

    def location(self, name: str) -> str:
        return str(self.directory / name)

    def size(self, name: str) -> int | None:
        try:
            return (self.directory / name).stat().st_size
        except OSError:
            return None

    def open(self, name: str) -> IO[bytes]:
        return open(self.directory / name, "rb")

    def delete(self, name: str) -> bool:
        path = self.directory / name
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(
                f"cannot delete the stored file {name}: {exc.strerror}", log_detail=str(path)
            ) from exc
        fsync_directory(self.directory)
        return True

    def entries(self, after: str = "", limit: int | None = None) -> Iterator[Entry]:
        if not self.directory.is_dir():
            return
        try:
            found = sorted(
                Entry(entry.name, entry.stat().st_size)
                for entry in os.scandir(self.directory)
                if not entry.name.startswith(".") and entry.name > after and entry.is_file()
            )
        except OSError as exc:
            raise StorageError(
                f"cannot list the storage directory: {exc.strerror}", log_detail=self.url
            ) from exc
        yield from found[:limit] if limit is not None else found

    def upload(self, local: Path, name: str) -> Pending:
        return _Rename(local, self.directory / name)

    def follow(self, local: Path, name: str) -> Following:
        return _Local(local, self.directory / name)

    def abandon_recorded(self, note: Path) -> None:
        pass  # a folder has no uploads

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda handle: handle.write(data), binary=True)

    def put_file(self, local: Path, name: str) -> None:
        self.upload(local, name).publish()
        fsync_directory((self.directory / name).parent)

    def download(self, name: str, local: Path) -> None:
        shutil.copyfile(self.directory / name, local)
