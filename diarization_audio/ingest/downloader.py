"""Fetch an audio URL, convert it to 16 kHz mono 16-bit WAV with ffmpeg, store and record it.

Memory stays flat whatever the length: the body is streamed to a temporary file in the storage
directory while ffmpeg, in its own process, converts it as it arrives (ingest/streaming.py), and the
result is hashed in chunks. This module runs the jobs (checking their input, their slots, a
graceful stop, their logs and labelling); ingest/storage.py keeps the files and their records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import anyio.to_thread
import httpx

from diarization_audio import metrics
from diarization_audio.errors import (
    AudioError,
    Busy,
    ConversionTimeout,
    Erased,
    InvalidInput,
    NotAudio,
    ShuttingDown,
)
from diarization_audio.ingest.fetcher import Fetcher
from diarization_audio.ingest.ffmpeg import resolve_ffmpeg
from diarization_audio.ingest.slots import ConversionSlots
from diarization_audio.ingest.storage import Storage, storage_error
from diarization_audio.ingest.streaming import Conversion, fetch_and_convert
from diarization_audio.ingest.url_policy import UrlPolicy
from diarization_audio.labels.labeller import LabelWorker
from diarization_audio.names import validate_name, validate_url
from diarization_audio.settings import Settings
from diarization_audio.store.erasure import refusal
from diarization_audio.store.layout import stored_name
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.tracker import MetadataTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredAudio:
    """One stored file, as answered to clients."""

    status: str  # "success" (downloaded now) or "exists" (already stored from the same URL)
    conversation_id: str
    speaker_label: str
    file: StoredFile

    @property
    def filename(self) -> str:
        return stored_name(self.conversation_id, self.speaker_label)


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
        self.storage = Storage(settings, tracker)
        self.ffmpeg = resolve_ffmpeg(settings.ffmpeg_binary)
        self.policy = UrlPolicy(
            settings.allowed_url_hosts, settings.blocked_networks, settings.block_private_networks
        )
        self._fetcher = Fetcher(settings, self.policy, client)
        self._jobs = metrics.JobSlots(settings.max_concurrent_jobs)
        self._conversions = ConversionSlots(
            settings.conversion_slots_dir, settings.max_concurrent_conversions
        )
        self._conversion = Conversion(
            ffmpeg=self.ffmpeg,
            slots=self._conversions,
            max_seconds=settings.max_audio_hours * 3600,
            timeout=settings.convert_timeout_seconds,
            niceness=settings.conversion_niceness,
        )

        self._labeller = LabelWorker(settings) if settings.label_speech else None
        self._in_flight: Counter[str] = Counter()  # jobs per conversation
        self._stored_unlabelled: set[str] = set()  # conversations a finished job stored to
        # Graceful stop: jobs that may still be cancelled (queued or transferring), and those
        # the stop cancelled (so their cancellation becomes a ShuttingDown answer).
        self._stopping = False
        self._cancellable: set[asyncio.Task[object]] = set()
        self._stopped: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        """Everything a job needs that takes time to start: the labelling process."""
        if self._labeller is not None:
            await self._labeller.start()

    def begin_shutdown(self) -> None:
        """Take no new jobs; cancel those still transferring after SHUTDOWN_GRACE_SECONDS.

        A job already recording its files finishes: its answer is the stored result.
        """
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_seconds
        log.info("stopping: %d job(s) in flight get %g s to finish", len(self._cancellable), grace)
        asyncio.get_running_loop().call_later(grace, self._cancel_jobs)

    def _cancel_jobs(self) -> None:
        if self._cancellable:
            log.warning("stopping: cancelling %d unfinished job(s)", len(self._cancellable))
        for task in list(self._cancellable):
            self._stopped.add(task)
            task.cancel()

    def _stop_answer(self) -> ShuttingDown:
        return ShuttingDown(
            "the service is stopping; nothing was stored, send it again later (or to another "
            "server)"
        )

    async def aclose(self) -> None:
        await self._fetcher.aclose()
        if self._labeller is not None:
            await self._labeller.drain()
            await anyio.to_thread.run_sync(self._labeller.close)

    def prepare_storage(self) -> int:
        """Create the storage directory and remove leftovers of dead processes; returns count."""
        leftovers = self.storage.prepare()
        self._conversions.prepare()
        return leftovers

    async def download(
        self,
        conversation_id: str,
        speaker_label: str,
        url: str,
        overwrite: bool = False,
        agent_id: str | None = None,
        *,
        allow_erased: bool = False,
    ) -> StoredAudio:
        """Store one speaker's audio of a conversation; logs the outcome and records failures.

        Malformed input, and an erased conversation unless `allow_erased`, are refused before
        anything is attempted; every failure after that is kept in the store, so reports can
        say what fails and how often.
        """
        validate_name("speaker_label", speaker_label)
        stored = await self._logged(
            conversation_id, [speaker_label], url, overwrite, agent_id, allow_erased
        )
        return stored[0]

    async def download_stereo(
        self,
        conversation_id: str,
        url: str,
        left_label: str = "agent",
        right_label: str = "customer",
        overwrite: bool = False,
        agent_id: str | None = None,
        *,
        allow_erased: bool = False,
    ) -> list[StoredAudio]:
        """Store the two channels of one stereo call as two speakers' files, as `download` does."""
        validate_name("left_label", left_label)
        validate_name("right_label", right_label)
        if left_label == right_label:
            raise InvalidInput(f"left_label and right_label must differ; both are {left_label!r}")
        return await self._logged(
            conversation_id, [left_label, right_label], url, overwrite, agent_id, allow_erased
        )

    async def _logged(
        self,
        conversation_id: str,
        labels: list[str],
        url: str,
        overwrite: bool,
        agent_id: str | None,
        allow_erased: bool,
    ) -> list[StoredAudio]:
        validate_name("conversation_id", conversation_id)
        validate_url("audio_url", url)
        if agent_id is not None:
            validate_name("agent_id", agent_id)
        if not allow_erased:
            # Refused before the try below: a failure row would name the erased conversation.
            try:
                await anyio.to_thread.run_sync(self._refuse_erased, conversation_id)
            except Erased:
                metrics.download_erased(len(labels))
                raise
        started = time.monotonic()
        speakers = "+".join(labels)
        try:
            with self._labelled_after(conversation_id):
                results = await self._download(
                    conversation_id, labels, url, overwrite, agent_id, allow_erased
                )
        except AudioError as exc:
            log.warning(
                "conversation=%s speaker=%s url=%s outcome=%s error=%s took=%.2fs",
                conversation_id, speakers, url, exc.code, exc.full_message,
                time.monotonic() - started,
            )  # fmt: skip
            if isinstance(exc, Erased):
                # Erased while it ran: not a failure, and a failure row would name it again.
                metrics.download_erased(len(labels))
                raise
            metrics.download_failed(exc.code, len(labels))
            for label in labels:
                await anyio.to_thread.run_sync(self.storage.record_failure, conversation_id,
                                               label, url, exc)  # fmt: skip
            raise
        for result in results:
            log.info(
                "conversation=%s speaker=%s url=%s outcome=%s duration=%.2fs size=%.2fMB "
                "took=%.2fs",
                conversation_id, result.speaker_label, url, result.status,
                result.file.duration_seconds, result.file.file_size_mb, time.monotonic() - started,
            )  # fmt: skip
            metrics.download_done(result.status, result.file.duration_seconds)
        return results

    async def download_many(
        self,
        conversation_id: str,
        urls: dict[str, str],
        overwrite: bool = False,
        agent_id: str | None = None,
        *,
        allow_erased: bool = False,
    ) -> list[StoredAudio | AudioError]:
        """Several speakers of one conversation at once; each outcome is a result or its error."""
        for label, url in urls.items():
            validate_name("speaker_label", label)
            validate_url(f"audio_url_{label}", url)

        async def one(label: str, url: str) -> StoredAudio | AudioError:
            try:
                return await self.download(
                    conversation_id, label, url, overwrite, agent_id, allow_erased=allow_erased
                )
            except AudioError as exc:
                return exc

        return list(await asyncio.gather(*(one(lb, u) for lb, u in urls.items())))

    def _refuse_erased(self, conversation_id: str) -> None:
        erased = self.tracker.erased(conversation_id)
        if erased is not None:
            raise refusal(erased)

    @contextlib.contextmanager
    def _labelled_after(self, conversation_id: str) -> Iterator[None]:
        """Queue the conversation for labelling when the last of its jobs in this process ends,
        if one of them stored a file; the answer does not wait for the labels. Both legs of a
        call sent together are labelled once, together, rather than the first leg alone and
        then both again."""
        self._in_flight[conversation_id] += 1
        try:
            yield
        finally:
            self._in_flight[conversation_id] -= 1
            if not self._in_flight[conversation_id]:
                del self._in_flight[conversation_id]
                if conversation_id in self._stored_unlabelled:
                    self._stored_unlabelled.discard(conversation_id)
                    if self._labeller is not None:
                        self._labeller.submit(conversation_id)

    async def _download(
        self,
        conversation_id: str,
        labels: list[str],
        url: str,
        overwrite: bool,
        agent_id: str | None,
        allow_erased: bool,
    ) -> list[StoredAudio]:
        self.policy.check_host(httpx.URL(url))
        existing = [
            await anyio.to_thread.run_sync(
                self.storage.existing, conversation_id, label, url, overwrite
            )
            for label in labels
        ]
        if all(found is not None for found in existing):
            return [
                StoredAudio("exists", conversation_id, label, found)
                for label, found in zip(labels, existing, strict=True)
                if found is not None
            ]
        self.storage.check_free_space(0)
        if self._stopping:
            raise self._stop_answer()
        task: asyncio.Task[object] | None = asyncio.current_task()
        assert task is not None
        self._cancellable.add(task)
        try:
            async with self._job_slot():
                if self._stopping:
                    raise self._stop_answer()
                return await self._fetch_convert_store(
                    conversation_id, labels, url, agent_id, allow_erased
                )
        except asyncio.CancelledError:
            if task not in self._stopped:
                raise  # the client went away
            self._stopped.discard(task)
            task.uncancel()
            raise self._stop_answer() from None
        finally:
            self._cancellable.discard(task)

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

    async def _fetch_convert_store(
        self,
        conversation_id: str,
        labels: Sequence[str],
        url: str,
        agent_id: str | None,
        allow_erased: bool,
    ) -> list[StoredAudio]:
        """Fetch once, convert, store and record: one label (every channel mixed down), or two
        (the first and second channel of a stereo file, one speaker each). An erase of the
        conversation that commits before the record refuses it with Erased."""
        source, converted = self.storage.temporaries(conversation_id, labels)
        following = self.storage.follow(conversation_id, labels, converted)

        def restarted() -> None:
            for upload in following:
                upload.restart()

        try:
            await fetch_and_convert(
                self._fetcher, url, source, converted, self.storage.check_free_space,
                self._conversion, on_start=restarted,
            )  # fmt: skip
            # From here on the job finishes even when the service is stopping.
            self._cancellable.discard(asyncio.current_task())
            records = await anyio.to_thread.run_sync(
                self.storage.publish, conversation_id, labels, source, converted, url, agent_id,
                allow_erased, following,
            )  # fmt: skip
            self._stored_unlabelled.add(conversation_id)
        except NotAudio as exc:
            raise NotAudio(f"{url} is not decodable audio: {exc.message}") from exc
        except TimeoutError as exc:
            raise ConversionTimeout(
                f"converting {url} took longer than CONVERT_TIMEOUT_SECONDS="
                f"{self.settings.convert_timeout_seconds:g}"
            ) from exc
        except OSError as exc:
            raise storage_error(exc, self.storage.directory) from exc
        finally:
            for upload in following:
                upload.abandon()  # nothing, once published
            source.unlink(missing_ok=True)
            for path in converted:
                path.unlink(missing_ok=True)
        return [
            StoredAudio("success", conversation_id, label, record)
            for label, record in zip(labels, records, strict=True)
        ]
