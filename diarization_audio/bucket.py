"""A bucket of an S3-compatible server as a place for finished files (objects.py's `Place`).

boto3 talks to it: endpoint, region and keys come from the settings (AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), and boto3 is imported only when a bucket
is used. Its errors become StorageError here, once. Uploads are multipart (PART_BYTES a part)
and can follow a file while it is written (_FollowingUpload).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import mimetypes
import shutil
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from diarization_audio.errors import AudioError, InsufficientStorage, StorageError
from diarization_audio.places import (
    LIST_PAGE,
    PART_BYTES,
    PART_THREADS,
    S3_SCHEME,
    Entry,
    Following,
    Pending,
    split_bucket_url,
)

if TYPE_CHECKING:
    from diarization_audio.settings import Settings

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _client(
    endpoint: str | None, region: str | None, key_id: str | None, secret: str | None
) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=region
    )
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        # Checksums only where S3 requires them, as boto3 did before 1.36: some S3-compatible
        # stores refuse the newer default ones, and skipping them saves CPU on every part.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=2 * PART_THREADS,
        connect_timeout=10,
        read_timeout=60,
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def content_type(name: str) -> str:
    """What an object is, by its name (a WAV, a shard, a manifest)."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _bucket_error(exc: Exception, what: str, where: str) -> AudioError:
    """One translation of boto3's errors: the client hears what failed, the log hears where."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    reason = code or type(exc).__name__
    if code == "NoSuchBucket":
        bucket = urlsplit(where).netloc
        return StorageError(f"object storage: no bucket {bucket!r} ({code})", log_detail=where)
    if code in ("EntityTooLarge", "QuotaExceeded"):
        return InsufficientStorage(f"the bucket refused {what}: {reason}", log_detail=where)
    return StorageError(f"object storage: cannot {what}: {reason}", log_detail=f"{where}: {exc}")


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return False
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


class _MultipartUpload:
    """A multipart upload whose parts are all sent: `publish` completes it (the object appears
    whole at that moment), `abandon` aborts it (nothing appears). Either way the note of its id
    (see _FollowingUpload) goes."""

    def __init__(
        self, bucket: Bucket, key: str, upload_id: str, parts: list[dict[str, Any]], note: Path
    ) -> None:
        self._bucket, self._key, self._id, self._parts = bucket, key, upload_id, parts
        self._note = note

    def publish(self) -> None:
        try:
            self._bucket.client.complete_multipart_upload(
                Bucket=self._bucket.name, Key=self._key, UploadId=self._id,
                MultipartUpload={"Parts": self._parts},
            )  # fmt: skip
        except Exception as exc:
            raise _bucket_error(exc, "complete an upload", self._bucket.where(self._key)) from exc
        self._note.unlink(missing_ok=True)

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self._bucket.client.abort_multipart_upload(
                Bucket=self._bucket.name, Key=self._key, UploadId=self._id
            )
        self._note.unlink(missing_ok=True)


@dataclass
class _Put:
    """A file of one part: a single PUT shows it whole (S3 never shows half an object)."""

    bucket: Bucket
    key: str
    local: Path

    def publish(self) -> None:
        with open(self.local, "rb") as body:
            self.bucket._call(
                "upload a file", self.key, self.bucket.client.put_object, Key=self.key,
                Body=body, ContentType=content_type(self.key),
            )  # fmt: skip

    def abandon(self) -> None:
        pass  # nothing was sent


class Bucket:
    """Files under a prefix of an S3-compatible bucket (AWS, MinIO, GCS's XML API, ...)."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.name, self.prefix = split_bucket_url(url)
        self.url = f"{S3_SCHEME}{self.name}/{self.prefix}".rstrip("/")
        secret = settings.aws_secret_access_key
        self.client = _client(
            settings.aws_endpoint_url,
            settings.aws_region,
            settings.aws_access_key_id,
            secret.get_secret_value() if secret is not None else None,
        )

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def where(self, key: str) -> str:
        return f"{S3_SCHEME}{self.name}/{key}"

    def location(self, name: str) -> str:
        return self.where(self.key(name))

    def _call(
        self, what: str, key: str, call: Callable[..., Any], reading: bool = False, **kwargs: Any
    ) -> Any:
        """One request; its failure as StorageError, or as FileNotFoundError for a read of a
        key that is not there (a bucket that is not there stays a StorageError)."""
        try:
            return call(Bucket=self.name, **kwargs)
        except Exception as exc:
            if reading and _not_found(exc):
                raise FileNotFoundError(self.where(key)) from exc
            raise _bucket_error(exc, what, self.where(key)) from exc

    def size(self, name: str) -> int | None:
        key = self.key(name)
        try:
            head = self._call(
                "inspect a stored object", key, self.client.head_object, True, Key=key
            )
        except FileNotFoundError:
            return None
        return int(head["ContentLength"])

    def open(self, name: str) -> IO[bytes]:
        key = self.key(name)
        answer = self._call("read a stored object", key, self.client.get_object, True, Key=key)
        body: IO[bytes] = answer["Body"]
        return body

    def delete(self, name: str) -> bool:
        # S3 deletes answer the same whether the key was there; asking first tells the caller.
        there = self.size(name) is not None
        key = self.key(name)
        self._call("delete a stored object", key, self.client.delete_object, Key=key)
        return there

    def entries(self, after: str = "", limit: int | None = None) -> Iterator[Entry]:
        lead = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        start = lead + after if after else ""
        given = 0
        while True:
            kwargs: dict[str, Any] = {"Prefix": lead, "Delimiter": "/", "MaxKeys": LIST_PAGE}
            if token:
                kwargs["ContinuationToken"] = token
            elif start:
                kwargs["StartAfter"] = start
            page = self._call("list the bucket", lead, self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                name = item["Key"][len(lead) :]
                if name and not name.startswith("."):
                    yield Entry(name, int(item["Size"]))
                    given += 1
                    if limit is not None and given >= limit:
                        return
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def upload(self, local: Path, name: str) -> Pending:
        return _FollowingUpload(self, local, self.key(name), following=False).finish()

    def follow(self, local: Path, name: str) -> Following:
        return _FollowingUpload(self, local, self.key(name))

    def abandon_recorded(self, note: Path) -> None:
        try:
            recorded = json.loads(note.read_text())
            key, upload_id = recorded["key"], recorded["upload_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # cut short by the crash before the upload started: nothing to abort
        _MultipartUpload(self, key, upload_id, [], note).abandon()

    def read_bytes(self, name: str) -> bytes | None:
        try:
            with contextlib.closing(self.open(name)) as body:
                return body.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        key = self.key(name)
        self._call("write an object", key, self.client.put_object, Key=key, Body=data)

    def put_file(self, local: Path, name: str) -> None:
        self.upload(local, name).publish()

    def download(self, name: str, local: Path) -> None:
        with contextlib.closing(self.open(name)) as body, open(local, "wb") as target:
            shutil.copyfileobj(body, target, PART_BYTES // 4)


class _FollowingUpload:
    """A multipart upload of a file that ffmpeg is still writing, so that the upload overlaps
    the conversion instead of following it.

    A thread sends each whole part as soon as the file has grown past it, except the first: a
    WAV's header (in the first part) is rewritten once the length is known. `finish` sends the
    first part, the last (short) one and any the thread has not sent. A writer that starts over
    (`restart`, before it truncates the file) makes every part sent so far stale: a part counts
    only if no restart came between reading it and its upload's answer. Parts read before the
    truncation are checked at the end (CRC-32 of what was sent against the file) and sent again
    if the new writer's bytes differ. The upload's id is noted beside the file (`<file>.upload`,
    a name of the process's temporaries), so that after a crash the next start aborts it
    (store/layout.py): a bucket keeps no parts of an upload nobody will finish.
    """

    POLL_SECONDS = 0.05

    def __init__(self, bucket: Bucket, local: Path, key: str, following: bool = True) -> None:
        """With `following` False the file is complete already: `finish` sends all of it."""
        self._bucket, self._local, self._key = bucket, local, key
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._generation = 0
        self._check_sent = False
        self._sent: dict[int, tuple[str, int]] = {}  # part -> (ETag, CRC-32), this generation's
        self._done = threading.Event()
        self._failure: Exception | None = None
        self._upload_id: str | None = None
        self._handed_over = False  # finish gave its Pending to the caller, who owns it now
        self._note = local.with_name(local.name + ".upload")
        self._thread = threading.Thread(target=self._follow, name="s3-follow", daemon=True)
        if following:
            self._thread.start()

    def _start_upload(self) -> str:
        # finish's threads may all find none yet: one starts it, every part goes to that one.
        with self._starting:
            if self._upload_id is None:
                started = self._bucket._call(
                    "start an upload", self._key, self._bucket.client.create_multipart_upload,
                    Key=self._key, ContentType=content_type(self._key),
                )  # fmt: skip
                self._upload_id = str(started["UploadId"])
                note = {"key": self._key, "upload_id": self._upload_id}
                self._note.write_text(json.dumps(note))
            return self._upload_id

    def _send(self, number: int) -> None:
        """Read part `number` as the file is now and upload it; kept if no restart came."""
        with self._lock:
            generation = self._generation
        offset = (number - 1) * PART_BYTES
        with open(self._local, "rb") as handle:
            handle.seek(offset)
            data = handle.read(PART_BYTES)
        answer = self._bucket.client.upload_part(
            Bucket=self._bucket.name, Key=self._key, UploadId=self._start_upload(),
            PartNumber=number, Body=data,
        )  # fmt: skip
        with self._lock:
            if generation == self._generation:
                self._sent[number] = (str(answer["ETag"]), zlib.crc32(data))

    def _follow(self) -> None:
        try:
            while not self._done.wait(self.POLL_SECONDS):
                try:
                    size = self._local.stat().st_size
                except FileNotFoundError:
                    continue
                # Part n (from 2) is final once the file holds part n + 1's first byte.
                whole = size // PART_BYTES
                for number in range(2, whole + 1):
                    if self._done.is_set():
                        return
                    with self._lock:
                        wanted = number not in self._sent
                    if wanted:
                        self._send(number)
        except Exception as exc:  # reported by finish
            self._failure = exc

    def _stale(self, numbers: list[int]) -> list[int]:
        """Those of `numbers` whose bytes in the file now differ from the bytes sent."""
        stale = []
        with open(self._local, "rb") as handle:
            for number in numbers:
                handle.seek((number - 1) * PART_BYTES)
                if zlib.crc32(handle.read(PART_BYTES)) != self._sent[number][1]:
                    stale.append(number)
        return stale

    def restart(self) -> None:
        with self._lock:
            self._generation += 1
            self._sent.clear()
            # parts went up already: the old bytes may go up again before the file is truncated
            self._check_sent = self._check_sent or self._upload_id is not None

    def finish(self) -> Pending:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        where = self._bucket.where(self._key)
        try:
            if self._failure is not None:
                raise self._failure
            size = self._local.stat().st_size
            if self._upload_id is None and size <= PART_BYTES:
                self._handed_over = True  # one request instead of three
                return _Put(self._bucket, self._key, self._local)
            numbers = range(1, max(1, -(-size // PART_BYTES)) + 1)
            last = numbers[-1]
            # The last part may have been sent while the file was still growing past it.
            missing = [n for n in numbers if n not in self._sent or n in (1, last)]
            if self._check_sent:
                missing += self._stale([n for n in numbers if n not in missing])
            log.debug(
                "%s: %d of %d parts sent while the file was written (writer starts: %d)",
                self._key, len(numbers) - len(missing), len(numbers), self._generation,
            )  # fmt: skip
            with ThreadPoolExecutor(PART_THREADS, thread_name_prefix="s3-part") as pool:
                list(pool.map(self._send, missing))
            parts = [{"PartNumber": n, "ETag": self._sent[n][0]} for n in numbers]
        except Exception as exc:
            self.abandon()
            if isinstance(exc, AudioError):
                raise
            raise _bucket_error(exc, "upload a file", where) from exc
        self._handed_over = True
        return _MultipartUpload(self._bucket, self._key, self._start_upload(), parts, self._note)

    def abandon(self) -> None:
        """Abort the upload, unless finish handed it over (its Pending is the caller's now)."""
        if self._handed_over:
            return
        self._done.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        if self._upload_id is not None:
            _MultipartUpload(self._bucket, self._key, self._upload_id, [], self._note).abandon()
