"""Fetch an audio URL, convert it to 16 kHz mono 16-bit WAV with ffmpeg, store and record it.

Memory stays flat whatever the length: the body is streamed to a temporary file in the storage
directory, ffmpeg converts file to file in its own process, and the result is hashed in chunks.
Every temporary name starts with a dot and carries the writer's pid, so a restarted server can
tell an abandoned leftover from another worker's file in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import time
import uuid
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from errors import (
    AudioError,
    AudioTooLong,
    Busy,
    ConversionTimeout,
    InsufficientStorage,
    InvalidInput,
    NotAudio,
    SourceError,
    SourceTimeout,
    StorageError,
    TooLarge,
    UrlConflict,
)
from metadata_tracker import MB, FileRecord, MetadataTracker
from settings import Settings
from url_policy import GuardedTransport, UrlPolicy

log = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16000
TARGET_CHANNELS = 1
CHUNK_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{32}\.(?:download|wav)$")
_FFMPEG_ERROR_CHARS = 400
_PR_SET_PDEATHSIG = 1


# Input rules ---------------------------------------------------------------------------------


def validate_name(field: str, value: str) -> str:
    """A conversation id or speaker label: 1-128 of [A-Za-z0-9._-], not starting with '.'."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise InvalidInput(
            f"{field} must be 1-128 characters of letters, digits, '.', '_' or '-' and must not "
            f"start with '.'; got {shown!r}"
        )
    return value


def validate_url(field: str, url: str) -> str:
    """An absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535
    except ValueError as exc:
        raise InvalidInput(f"{field} is not a valid URL: {url[:200]!r} ({exc})") from exc
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise InvalidInput(f"{field} must be an http or https URL with a host; got {url[:200]!r}")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidInput(f"{field} must not contain whitespace or control characters")
    return url


# ffmpeg -------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def resolve_ffmpeg(configured: str | None) -> str:
    """FFMPEG_BINARY if set, else `ffmpeg` on PATH, else the binary bundled by imageio-ffmpeg."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise StorageError(f"FFMPEG_BINARY {configured!r} is not an executable")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


@lru_cache(maxsize=8)
def ffmpeg_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "-hide_banner", "-version"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"
    first = out.splitlines()[0] if out else ""
    return first.split(" Copyright")[0].removeprefix("ffmpeg version ").strip() or "unknown"


async def run_ffmpeg(
    binary: str, source: Path, target: Path, max_seconds: float, timeout: float
) -> None:
    """Convert `source` to 16 kHz mono s16le WAV at `target`; the only place ffmpeg runs."""
    args = [
        binary, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-i", f"file:{source}",
        "-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1",
        "-ac", str(TARGET_CHANNELS), "-ar", str(TARGET_SAMPLE_RATE), "-c:a", "pcm_s16le",
        # One second past the limit is enough to tell "too long" from "exactly at the limit".
        "-t", f"{max_seconds + 1:.3f}",
        "-fflags", "+bitexact", "-flags:a", "+bitexact",
        "-f", "wav", f"file:{target}",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so a timeout kills everything it spawned
        preexec_fn=_die_with_parent,
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        # Timeout, cancellation (client gone, shutdown): never leave ffmpeg running.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        raise NotAudio(f"ffmpeg could not decode it: {_ffmpeg_reason(stderr, source)}")


def _ffmpeg_reason(stderr: bytes, source: Path) -> str:
    """ffmpeg's last complaint, without the internal temporary file name."""
    lines = [
        line.replace(f"file:{source}", "<download>").replace(str(source), "<download>")
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip()
    ]
    reason = lines[-1] if lines else "no details"
    return re.sub(r"^\[[^]]*\] ", "", reason)[-_FFMPEG_ERROR_CHARS:]


def _die_with_parent() -> None:
    """In the child before exec: if the server is killed outright, ffmpeg is killed too."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class WavInfo:
    duration_seconds: float
    sample_rate: int
    channels: int
    sample_width: int


def read_wav_info(path: Path) -> WavInfo:
    """Duration and format read back from the written WAV header."""
    try:
        with wave.open(str(path), "rb") as wav:
            frames, rate = wav.getnframes(), wav.getframerate()
            return WavInfo(frames / rate, rate, wav.getnchannels(), wav.getsampwidth())
    except (wave.Error, EOFError) as exc:
        raise NotAudio(f"converted file is not a readable WAV: {exc}") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# Downloading --------------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying; carries the error to report if retries run out."""

    def __init__(self, final: AudioError, retry_after: float | None = None) -> None:
        super().__init__(final.message)
        self.final = final
        self.retry_after = retry_after


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        moment = parsedate_to_datetime(value)
        return max(moment.timestamp() - time.time(), 0.0)
    return None


def _wait_strategy(base: float, cap: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff with full jitter, or the source's Retry-After when it sent one."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(exc.retry_after, cap)
        return min(cap, random.uniform(0, base * 2 ** (state.attempt_number - 1)))

    return wait


class _SizeGuard:
    def __init__(self, url: str, limit: int) -> None:
        self.url, self.limit, self.seen = url, limit, 0

    def check_declared(self, declared: str | None) -> int:
        """The declared body size (0 when unknown); TooLarge when over the limit."""
        size = int(declared) if declared and declared.isdigit() else 0
        if size > self.limit:
            raise TooLarge(self._message(size, "declares"))
        return size

    def add(self, count: int) -> None:
        self.seen += count
        if self.seen > self.limit:
            raise TooLarge(self._message(self.seen, "sent more than"))

    def _message(self, size: int, verb: str) -> str:
        return (
            f"{self.url} {verb} {size / MB:.1f} MB, over the limit of "
            f"MAX_DOWNLOAD_MB={self.limit / MB:g}"
        )


# The service ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAudio:
    """One stored file, as answered to clients."""

    status: str  # "success" (downloaded now) or "exists" (already stored from the same URL)
    conversation_id: str
    speaker_label: str
    filename: str
    filepath: str
    url: str
    file_size_bytes: int
    file_size_mb: float
    duration_seconds: float
    sample_rate: int
    channels: int
    sha256: str
    downloaded_at: str

    @classmethod
    def from_record(
        cls, status: str, conversation_id: str, speaker_label: str, record: dict[str, Any]
    ) -> StoredAudio:
        return cls(
            status=status,
            conversation_id=conversation_id,
            speaker_label=speaker_label,
            filename=Path(record["filepath"]).name,
            filepath=record["filepath"],
            url=record["url"],
            file_size_bytes=record["file_size_bytes"],
            file_size_mb=record["file_size_mb"],
            duration_seconds=record["duration_seconds"],
            sample_rate=record["sample_rate"],
            channels=record["channels"],
            sha256=record["sha256"],
            downloaded_at=record["downloaded_at"],
        )


class AudioDownloader:
    """Downloads, converts, stores and records audio files; one per process."""

    def __init__(
        self,
        settings: Settings,
        tracker: MetadataTracker,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.tracker = tracker
        self.storage_dir = Path(settings.audio_storage_dir)
        self.ffmpeg = resolve_ffmpeg(settings.ffmpeg_binary)
        self.policy = UrlPolicy(
            settings.allowed_url_hosts, settings.blocked_networks, settings.block_private_networks
        )
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self._client = client or httpx.AsyncClient(
            transport=GuardedTransport(self.policy, httpx.AsyncHTTPTransport(limits=limits)),
            timeout=httpx.Timeout(settings.download_timeout_seconds),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": "diarization-audio-downloader/1.0"},
            trust_env=False,  # a proxy from the environment would bypass the address checks
        )
        self._jobs = asyncio.Semaphore(settings.max_concurrent_jobs)

    async def aclose(self) -> None:
        await self._client.aclose()

    def prepare_storage(self) -> int:
        """Create the storage directory and remove leftovers of dead processes; returns count."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        for path in self.storage_dir.iterdir():
            match = _TEMP_RE.match(path.name)
            if match and not _pid_alive(int(match.group(1))):
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d leftover temporary file(s) from %s", removed, self.storage_dir)
        return removed

    def target_path(self, conversation_id: str, speaker_label: str) -> Path:
        return self.storage_dir / f"{conversation_id}_{speaker_label}.wav"

    async def download(
        self, conversation_id: str, speaker_label: str, url: str, overwrite: bool = False
    ) -> StoredAudio:
        """Store one speaker's audio of a conversation; logs the outcome either way."""
        started = time.monotonic()
        try:
            result = await self._download(conversation_id, speaker_label, url, overwrite)
        except AudioError as exc:
            log.warning(
                "conversation=%s speaker=%s url=%s outcome=%s error=%s took=%.2fs",
                conversation_id, speaker_label, url, exc.code, exc.message,
                time.monotonic() - started,
            )  # fmt: skip
            raise
        log.info(
            "conversation=%s speaker=%s url=%s outcome=%s duration=%.2fs size=%.2fMB took=%.2fs",
            conversation_id, speaker_label, url, result.status, result.duration_seconds,
            result.file_size_mb, time.monotonic() - started,
        )  # fmt: skip
        return result

    async def download_many(
        self, conversation_id: str, urls: dict[str, str], overwrite: bool = False
    ) -> list[StoredAudio | AudioError]:
        """Several speakers of one conversation at once; each outcome is a result or its error."""
        for label, url in urls.items():
            validate_name("speaker_label", label)
            validate_url(f"audio_url_{label}", url)

        async def one(label: str, url: str) -> StoredAudio | AudioError:
            try:
                return await self.download(conversation_id, label, url, overwrite)
            except AudioError as exc:
                return exc

        return list(await asyncio.gather(*(one(lb, u) for lb, u in urls.items())))

    async def _download(
        self, conversation_id: str, speaker_label: str, url: str, overwrite: bool
    ) -> StoredAudio:
        validate_name("conversation_id", conversation_id)
        validate_name("speaker_label", speaker_label)
        validate_url("audio_url", url)
        self.policy.check_host(httpx.URL(url))
        existing = await anyio.to_thread.run_sync(
            self._existing, conversation_id, speaker_label, url, overwrite
        )
        if existing is not None:
            return existing
        self._check_free_space(0)
        async with self._job_slot():
            return await self._fetch_convert_store(conversation_id, speaker_label, url)

    @contextlib.asynccontextmanager
    async def _job_slot(self) -> AsyncIterator[None]:
        """One of MAX_CONCURRENT_JOBS slots, or Busy after JOB_QUEUE_TIMEOUT_SECONDS."""
        wait = self.settings.job_queue_timeout_seconds
        try:
            async with asyncio.timeout(wait):
                await self._jobs.acquire()
        except TimeoutError:
            raise Busy(
                f"all {self.settings.max_concurrent_jobs} job slots stayed busy for {wait:g} s; "
                "retry later"
            ) from None
        try:
            yield
        finally:
            self._jobs.release()

    def _check_free_space(self, incoming_bytes: int) -> None:
        """Refuse a job that would leave less than MIN_FREE_DISK_MB on the storage disk."""
        try:
            free = shutil.disk_usage(self.storage_dir).free
        except OSError as exc:
            raise StorageError(
                f"cannot inspect storage directory {self.storage_dir}: {exc}"
            ) from exc
        # The download and its WAV can both be on disk at once; the WAV is usually larger.
        needed = self.settings.min_free_disk_bytes + 2 * incoming_bytes
        if free < needed:
            raise InsufficientStorage(
                f"{free / MB:.0f} MB free in {self.storage_dir}; this job needs "
                f"{incoming_bytes / MB:.0f} MB plus MIN_FREE_DISK_MB="
                f"{self.settings.min_free_disk_mb:g} kept free"
            )

    def _existing(
        self, conversation_id: str, speaker_label: str, url: str, overwrite: bool
    ) -> StoredAudio | None:
        """The stored result when this exact file is already collected and still on disk."""
        if overwrite:
            return None
        record = self.tracker.get_file(conversation_id, speaker_label)
        if record is None:
            return None
        path = self.target_path(conversation_id, speaker_label)
        try:
            intact = path.stat().st_size == record["file_size_bytes"]
        except OSError:
            intact = False
        if not intact:
            log.warning("stored file %s is missing or changed; downloading it again", path)
            return None
        if record["url"] != url:
            raise UrlConflict(
                f"{conversation_id}_{speaker_label}.wav is already stored from {record['url']}, "
                f"not {url}; send overwrite=true to replace it"
            )
        return StoredAudio.from_record("exists", conversation_id, speaker_label, record)

    async def _fetch_convert_store(
        self, conversation_id: str, speaker_label: str, url: str
    ) -> StoredAudio:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        stem = f".{conversation_id}_{speaker_label}.{os.getpid()}.{uuid.uuid4().hex}"
        source = self.storage_dir / f"{stem}.download"
        converted = self.storage_dir / f"{stem}.wav"
        final = self.target_path(conversation_id, speaker_label)
        try:
            await self._fetch(url, source)
            if source.stat().st_size == 0:
                raise NotAudio("the body is empty")
            await run_ffmpeg(
                self.ffmpeg, source, converted,
                max_seconds=self.settings.max_audio_hours * 3600,
                timeout=self.settings.convert_timeout_seconds,
            )  # fmt: skip
            source.unlink(missing_ok=True)
            record = await anyio.to_thread.run_sync(self._describe, converted, final, url)
            entry = await anyio.to_thread.run_sync(
                self.tracker.record_file,
                conversation_id, speaker_label, record, lambda: os.replace(converted, final),
            )  # fmt: skip
        except NotAudio as exc:
            raise NotAudio(f"{url} is not decodable audio: {exc.message}") from exc
        except TimeoutError as exc:
            raise ConversionTimeout(
                f"converting {url} took longer than CONVERT_TIMEOUT_SECONDS="
                f"{self.settings.convert_timeout_seconds:g}"
            ) from exc
        except OSError as exc:
            raise _storage_error(exc, self.storage_dir) from exc
        finally:
            source.unlink(missing_ok=True)
            converted.unlink(missing_ok=True)
        return StoredAudio.from_record(
            "success", conversation_id, speaker_label, entry["speakers"][speaker_label]
        )

    def _describe(self, converted: Path, final: Path, url: str) -> FileRecord:
        info = read_wav_info(converted)
        if info.duration_seconds <= 0:
            raise NotAudio("it decoded to no audio at all")
        limit = self.settings.max_audio_hours * 3600
        if info.duration_seconds > limit:
            raise AudioTooLong(
                f"{url} is longer than MAX_AUDIO_HOURS={self.settings.max_audio_hours:g}"
            )
        return FileRecord(
            filepath=str(final),
            url=url,
            file_size_bytes=converted.stat().st_size,
            duration_seconds=info.duration_seconds,
            sample_rate=info.sample_rate,
            channels=info.channels,
            sha256=sha256_of(converted),
            downloaded_at=self.tracker.now(),
        )

    async def _fetch(self, url: str, target: Path) -> None:
        """Stream `url` into `target`, retrying transient failures with backoff."""
        settings = self.settings
        retrying = AsyncRetrying(
            stop=stop_after_attempt(settings.download_retries + 1),
            retry=retry_if_exception_type(_Transient),
            wait=_wait_strategy(
                settings.download_retry_backoff_seconds, settings.download_retry_max_wait_seconds
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._fetch_once(url, target)
        except _Transient as exc:
            raise exc.final from exc

    async def _fetch_once(self, url: str, target: Path) -> None:
        guard = _SizeGuard(url, self.settings.max_download_bytes)
        deadline = self.settings.download_deadline_seconds
        try:
            async with asyncio.timeout(deadline):
                async with self._client.stream("GET", url) as response:
                    _check_status(url, response)
                    declared = guard.check_declared(response.headers.get("content-length"))
                    self._check_free_space(declared)
                    await _write_body(response.aiter_bytes(CHUNK_BYTES), target, guard)
        except TimeoutError as exc:
            raise _Transient(SourceTimeout(f"{url} did not finish within {deadline:g} s")) from exc
        except httpx.TimeoutException as exc:
            raise _Transient(
                SourceTimeout(f"{url} timed out ({type(exc).__name__}): {exc}")
            ) from exc
        except httpx.TooManyRedirects as exc:
            raise SourceError(f"{url} redirected too many times: {exc}") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise SourceError(f"{url} redirected somewhere unusable: {exc}") from exc
        except httpx.TransportError as exc:
            raise _Transient(
                SourceError(f"{url} could not be fetched ({type(exc).__name__}): {exc}")
            ) from exc


def _check_status(url: str, response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    error = SourceError(f"{url} answered HTTP {status} {response.reason_phrase}".rstrip())
    if status == 429 or status >= 500:
        retry_after = _retry_after_seconds(response.headers.get("retry-after"))
        raise _Transient(error, retry_after)
    raise error


async def _write_body(chunks: AsyncIterator[bytes], target: Path, guard: _SizeGuard) -> None:
    # Writes of one chunk land in the page cache in microseconds; a thread hop per chunk
    # would cost more than it saves.
    with open(target, "wb") as handle:
        async for chunk in chunks:
            guard.add(len(chunk))
            handle.write(chunk)


def _storage_error(exc: OSError, directory: Path) -> AudioError:
    if exc.errno == 28:  # ENOSPC
        return InsufficientStorage(f"no space left in {directory}: {exc}")
    return StorageError(f"cannot write in {directory}: {exc}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
