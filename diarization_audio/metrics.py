"""Prometheus metrics: their definitions, the small functions that update them, and the text that
GET /metrics answers, summed over every worker process of the service.

prometheus_client's multiprocess mode: each process writes its values to memory-mapped files in
one directory and a scrape, answered by any worker, adds them up. The metrics are made on first
use (importing this module, as the scripts do through audio_downloader and converter, writes
nothing), after this module has set PROMETHEUS_MULTIPROC_DIR itself to

    METRICS_DIR/<pid>-<start time> of the process that started this run of the service

That process is uvicorn's supervisor under `uvicorn main:app --workers N` (the parent of every
worker) and the server itself under `python main.py`, so the workers of one run share one
directory and every run starts with an empty one of its own. Directories of runs whose process
has gone are removed when a process starts. Within a run, the counters and histograms of a
worker that died stay in the sums (what it counted did happen); its gauges leave them at the
next scrape (`mark_process_dead`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import prometheus_client.values
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_fastapi_instrumentator import Instrumentator

from diarization_audio import errors
from diarization_audio.processes import start_time
from diarization_audio.settings import get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

_RUN_DIR = re.compile(r"(\d+)-(\d+)")
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _run_directory(base: Path) -> Path:
    """This run's directory under `base`, created; those of runs that have ended are removed."""
    parent = multiprocessing.parent_process()  # uvicorn's supervisor, for its workers
    pid = parent.pid if parent is not None and parent.pid is not None else os.getpid()
    run = base / f"{pid}-{start_time(pid) or 0}"
    run.mkdir(parents=True, exist_ok=True)
    for other in base.iterdir():
        found = _RUN_DIR.fullmatch(other.name)
        if found and other != run and start_time(int(found[1])) != int(found[2]):
            shutil.rmtree(other, ignore_errors=True)
    return run


def _codes(cls: type[errors.AudioError]) -> set[str]:
    return {cls.code}.union(*(_codes(sub) for sub in cls.__subclasses__()))


# The `error` label's values: the fixed set of codes of errors.py ("" unless the file failed).
# An erased conversation's refusal is an outcome of its own, never a failure.
ERROR_CODES = sorted(_codes(errors.AudioError) - {errors.AudioError.code, errors.Erased.code})
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# The text format every Prometheus server reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class _Metrics:
    """Every metric of the service, in this run's directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.downloads = Counter(
            "audio_downloads",
            "Files the service was asked to store, by outcome: success (stored now), exists "
            "(already stored from the same URL), erased (refused: the conversation was erased, "
            "before or while it was fetched), failed (with the error code)",
            ["outcome", "error"],
        )
        self.stored_seconds = Counter(
            "audio_stored_seconds",
            "Seconds of audio in the WAV files stored (a replaced file counts again)",
        )
        self.stored_speech_seconds = Counter(
            "audio_stored_speech_seconds",
            "Seconds of speech the stored files' labels added to the store",
        )
        self.fetched_bytes = Counter("audio_fetched_bytes", "Bytes of source audio received")
        self.download_seconds = Histogram(
            "audio_download_duration_seconds",
            "Time to fetch one source body, retries included (fetches that got the whole body)",
            buckets=DURATION_BUCKETS,
        )
        self.conversion_seconds = Histogram(
            "audio_conversion_duration_seconds",
            "Time one ffmpeg run took, from start to end (conversions that succeeded; "
            "converting while downloading, it includes waiting for the bytes)",
            buckets=DURATION_BUCKETS,
        )
        self.jobs_waiting = Gauge(
            "audio_jobs_waiting",
            "Jobs waiting for one of a worker's MAX_CONCURRENT_JOBS slots, in all live workers",
            multiprocess_mode="livesum",
        )
        self.jobs_running = Gauge(
            "audio_jobs_running",
            "Jobs holding a slot (downloading, converting, recording), in all live workers",
            multiprocess_mode="livesum",
        )
        # Every series exists from the start: a rate over a fresh service is 0, not absent.
        for outcome in ("success", "exists", "erased"):
            self.downloads.labels(outcome, "")
        for code in ERROR_CODES:
            self.downloads.labels("failed", code)


_made: list[_Metrics] = []
_making = threading.Lock()


def _metrics() -> _Metrics:
    """The process's metrics, made on first use."""
    if not _made:
        with _making:
            if not _made:
                _made.append(_make())
    return _made[0]


def _make() -> _Metrics:
    configured = get_settings().metrics_dir
    try:
        run_dir = _run_directory(configured)
    except OSError as exc:
        raise errors.StorageError(
            f"cannot use METRICS_DIR: {exc.strerror}", log_detail=str(configured)
        ) from exc
    # prometheus_client reads the directory from the environment whenever it opens a file, and
    # chose its kind of values when it was imported (before this was set): it chooses again,
    # before the first metric exists.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir)
    values = prometheus_client.values
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return _Metrics(run_dir)


def run_directory() -> Path:
    """Where this process and the others of its run keep their metric files."""
    return _metrics().run_dir


# Updates: one call from the code that knows -----------------------------------------------------


def download_failed(code: str, files: int = 1) -> None:
    """`files` files of one job failed with error `code`."""
    known = code if code in ERROR_CODES else errors.InternalError.code
    _metrics().downloads.labels("failed", known).inc(files)


def download_erased(files: int = 1) -> None:
    """`files` files of one job refused because their conversation was erased."""
    _metrics().downloads.labels("erased", "").inc(files)


def download_done(status: str, duration_seconds: float) -> None:
    """One file stored now (`success`) or found stored already (`exists`)."""
    metrics = _metrics()
    metrics.downloads.labels("success" if status == "success" else "exists", "").inc()
    if status == "success":
        metrics.stored_seconds.inc(duration_seconds)


def speech_stored(gained_seconds: float) -> None:
    """The store's speech grew by this much; a shrink (labels computed again) counts nothing."""
    if gained_seconds > 0:
        _metrics().stored_speech_seconds.inc(gained_seconds)


def bytes_fetched(count: int) -> None:
    _metrics().fetched_bytes.inc(count)


P = ParamSpec("P")
T = TypeVar("T")


Async = Callable[P, Coroutine[Any, Any, T]]


def _timed(histogram: Callable[[_Metrics], Histogram]) -> Callable[[Async[P, T]], Async[P, T]]:
    """A decorator observing how long each call of a coroutine function took that returned."""

    def decorate(function: Async[P, T]) -> Async[P, T]:
        @functools.wraps(function)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            result = await function(*args, **kwargs)
            histogram(_metrics()).observe(time.perf_counter() - started)
            return result

        return timed

    return decorate


timed_download = _timed(lambda metrics: metrics.download_seconds)
timed_conversion = _timed(lambda metrics: metrics.conversion_seconds)


class JobSlots(asyncio.Semaphore):
    """A worker's job slots, counting the jobs that wait for one and the jobs that hold one."""

    async def acquire(self) -> Literal[True]:
        metrics = _metrics()
        metrics.jobs_waiting.inc()
        try:
            await super().acquire()
        finally:
            metrics.jobs_waiting.dec()
        metrics.jobs_running.inc()
        return True

    def release(self) -> None:
        _metrics().jobs_running.dec()
        super().release()


# Exposition -------------------------------------------------------------------------------------


def instrument(app: FastAPI) -> None:
    """Count `app`'s HTTP requests by route template (never the path as sent), method, status."""
    _metrics()  # the instrumentator's metrics go to the run's directory as well
    Instrumentator(
        should_group_status_codes=False,
        excluded_handlers=["^/metrics$"],
        # The values live in the run's directory whatever the registry; a private one lets
        # tests build several apps in one process.
        registry=CollectorRegistry(),
    ).instrument(app)


def render() -> bytes:
    """Every metric, summed over this run's processes; reads files, so call it in a thread."""
    run_dir = _metrics().run_dir
    for path in run_dir.glob("gauge_live*.db"):
        found = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if found and start_time(int(found[1])) is None:  # a worker that died
            with contextlib.suppress(FileNotFoundError):  # another scrape was first
                mark_process_dead(int(found[1]), str(run_dir))  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(run_dir))  # type: ignore[no-untyped-call]
    return generate_latest(registry)
