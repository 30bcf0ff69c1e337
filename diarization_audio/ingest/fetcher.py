"""Streaming one URL to a file: timeouts, size and rate limits, retries that resume."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import BinaryIO

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from diarization_audio import metrics
from diarization_audio.errors import AudioError, SourceError, SourceTimeout, TooLarge
from diarization_audio.ingest.growing_file import GrowingFile
from diarization_audio.ingest.url_policy import GuardedTransport, UrlPolicy
from diarization_audio.progress import MB
from diarization_audio.settings import Settings

MAX_REDIRECTS = 5
RATE_COALESCE_SECONDS = 0.25
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


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

    def check_declared(self, declared: str | None, offset: int = 0) -> int:
        """The declared body size (0 when unknown); TooLarge when it would end past the limit."""
        size = int(declared) if declared and declared.isdigit() else 0
        if offset + size > self.limit:
            raise TooLarge(self._message(offset + size, "declares"))
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


class RateMeter:
    """Fails a transfer that averages under `limit` bytes/s over any `window` seconds, as curl's
    --speed-limit/--speed-time do: `deadline()` is when that happens if no more bytes arrive."""

    def __init__(self, limit: float, window: float, now: float) -> None:
        self.limit, self.window, self.start = limit, window, now
        self.total = 0
        # (arrival time, bytes so far) with the bytes increasing; one sample per COALESCE s.
        self._times: list[float] = [now]
        self._totals: list[int] = [0]

    def add(self, count: int, now: float) -> None:
        self.total += count
        if now - self._times[-1] < RATE_COALESCE_SECONDS:
            self._totals[-1] = self.total
        else:
            self._times.append(now)
            self._totals.append(self.total)
        # Samples older than the window never decide a future deadline: keep one as a floor.
        drop = bisect.bisect_right(self._times, now - self.window) - 1
        if drop > 64:
            del self._times[:drop], self._totals[:drop]

    def deadline(self) -> float:
        # The window ending at t holds total - total(t - window) bytes: too few once the
        # first sample above `total - limit * window` falls out of it.
        first = bisect.bisect_right(self._totals, self.total - self.limit * self.window)
        if first >= len(self._times):  # cannot happen while limit > 0; be safe anyway
            first = len(self._times) - 1
        return max(self.start, self._times[first]) + self.window


@dataclass
class _Resume:
    """What a retry needs to continue where the last attempt stopped."""

    validator: str | None = None  # strong ETag or Last-Modified of the first answer
    accepts_ranges: bool = False
    total: int | None = None

    def learn(self, response: httpx.Response) -> None:
        headers = response.headers
        etag = headers.get("etag")
        strong = etag if etag and not etag.startswith("W/") else None
        self.validator = strong or headers.get("last-modified")
        self.accepts_ranges = "bytes" in headers.get("accept-ranges", "").lower()
        length = headers.get("content-length")
        self.total = int(length) if length and length.isdigit() else None
        if headers.get("content-encoding", "identity").lower() != "identity":
            self.accepts_ranges = False  # offsets would count decoded bytes

    def request_headers(self, offset: int) -> dict[str, str]:
        if offset <= 0 or not self.accepts_ranges or not self.validator:
            return {}
        return {"Range": f"bytes={offset}-", "If-Range": self.validator}


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
            # identity: byte offsets of a resumed download mean the same thing on both sides.
            headers={
                "User-Agent": "diarization-audio-downloader/1.0",
                "Accept-Encoding": "identity",
            },
            trust_env=False,  # a proxy from the environment would bypass the address checks
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @metrics.timed_download
    async def fetch(
        self, url: str, target: GrowingFile, check_space: Callable[[int], None]
    ) -> None:
        """Stream `url` into `target`, retrying transient failures with backoff; a retry
        continues where the last attempt stopped when the source can resume.

        `check_space` is called with the declared body size before the body is read.
        `target` always ends finished: complete, or with the error this raises.
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
        resume = _Resume()
        try:
            with open(target.path, "wb") as handle:
                async for attempt in retrying:
                    with attempt:
                        await self._fetch_once(url, handle, target, resume, check_space)
        except _Transient as exc:
            target.finish(exc.final)
            raise exc.final from exc
        except BaseException as exc:
            target.finish(exc)
            raise
        target.finish()

    async def _fetch_once(
        self,
        url: str,
        handle: BinaryIO,
        target: GrowingFile,
        resume: _Resume,
        check_space: Callable[[int], None],
    ) -> None:
        settings = self.settings
        guard = _SizeGuard(url, settings.max_download_bytes)
        deadline = settings.download_deadline_seconds
        loop = asyncio.get_running_loop()
        rate = settings.min_download_rate_kb * 1024
        window = settings.min_download_rate_window_seconds
        meter = RateMeter(rate, window, loop.time()) if rate > 0 else None
        try:
            async with asyncio.timeout(deadline), asyncio.timeout(None) as too_slow:
                if meter is not None:
                    too_slow.reschedule(meter.deadline())
                headers = resume.request_headers(target.written)
                async with self._client.stream("GET", url, headers=headers) as response:
                    if headers and response.status_code == 416:
                        resume.accepts_ranges = False  # start over on the next attempt
                        raise _Transient(SourceError(f"{url} refused to resume (HTTP 416)"))
                    _check_status(url, response)
                    offset = _continue_at(response, target.written) if headers else 0
                    if offset == 0:
                        resume.learn(response)
                        if target.written:
                            target.restart()
                    handle.seek(offset)
                    handle.truncate()
                    guard.seen = offset
                    declared = guard.check_declared(response.headers.get("content-length"), offset)
                    check_space(declared)
                    async for chunk in response.aiter_bytes():
                        guard.add(len(chunk))
                        handle.write(chunk)
                        handle.flush()
                        target.advance(len(chunk))
                        if meter is not None:
                            meter.add(len(chunk), loop.time())
                            too_slow.reschedule(meter.deadline())
        except TimeoutError as exc:
            if meter is not None and too_slow.expired():
                raise SourceTimeout(
                    f"{url} sent less than MIN_DOWNLOAD_RATE_KB={settings.min_download_rate_kb:g} "
                    f"KB/s over {window:g} s; gave up"
                ) from exc
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


def _continue_at(response: httpx.Response, offset: int) -> int:
    """Where a ranged answer's body starts: `offset` for a 206 that continues there, 0 for a
    source that sent the whole file instead (a 200: it ignored the range or the file changed)."""
    if response.status_code != 206:
        return 0
    found = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if found is None or int(found.group(1)) != offset:
        raise _Transient(SourceError(f"{response.url} answered a range it was not asked for"))
    return offset


def _check_status(url: str, response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    error = SourceError(f"{url} answered HTTP {status} {response.reason_phrase}".rstrip())
    if status == 429 or status >= 500:
        retry_after = _retry_after_seconds(response.headers.get("retry-after"))
        raise _Transient(error, retry_after)
    raise error
