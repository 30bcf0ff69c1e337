"""Streaming one URL to a file: timeouts, size limits, and retries of transient failures."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

import metrics
from errors import AudioError, SourceError, SourceTimeout, TooLarge
from metadata_schema import MB
from settings import Settings
from url_policy import GuardedTransport, UrlPolicy

CHUNK_BYTES = 1024 * 1024
MAX_REDIRECTS = 5


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
        metrics.bytes_fetched(count)
        self.seen += count
        if self.seen > self.limit:
            raise TooLarge(self._message(self.seen, "sent more than"))

    def _message(self, size: int, verb: str) -> str:
        return (
            f"{self.url} {verb} {size / MB:.1f} MB, over the limit of "
            f"MAX_DOWNLOAD_MB={self.limit / MB:g}"
        )


class Fetcher:
    """One HTTP client for the process, behind the URL policy, with the download rules."""

    def __init__(
        self, settings: Settings, policy: UrlPolicy, client: httpx.AsyncClient | None = None
    ) -> None:
        self.settings = settings
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self._client = client or httpx.AsyncClient(
            transport=GuardedTransport(policy, httpx.AsyncHTTPTransport(limits=limits)),
            timeout=httpx.Timeout(settings.download_timeout_seconds),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": "diarization-audio-downloader/1.0"},
            trust_env=False,  # a proxy from the environment would bypass the address checks
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @metrics.timed_download
    async def fetch(self, url: str, target: Path, check_space: Callable[[int], None]) -> None:
        """Stream `url` into `target`, retrying transient failures with backoff.

        `check_space` is called with the declared body size before the body is read.
        """
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
                    await self._fetch_once(url, target, check_space)
        except _Transient as exc:
            raise exc.final from exc

    async def _fetch_once(self, url: str, target: Path, check_space: Callable[[int], None]) -> None:
        guard = _SizeGuard(url, self.settings.max_download_bytes)
        deadline = self.settings.download_deadline_seconds
        try:
            async with asyncio.timeout(deadline):
                async with self._client.stream("GET", url) as response:
                    _check_status(url, response)
                    declared = guard.check_declared(response.headers.get("content-length"))
                    check_space(declared)
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
