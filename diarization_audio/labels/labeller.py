"""Label a conversation's stored legs with who spoke when, and keep the labels in the store.

Runs after each file is recorded, in a process of its own (`LabelWorker`: its numeric work
would otherwise hold the server's interpreter lock and delay every answer), and over
unlabelled conversations on demand. The service answers as soon as a file is recorded; its
labels follow a moment later, from a queue that a graceful stop finishes.

Every leg of the conversation is read from its stored WAV, so the second leg of a call, whenever
and wherever it arrives, labels both legs together with the crosstalk between them suppressed.
Labels name the file versions they came from; when a file changes while it is being labelled,
the store refuses the stale labels and the job that changed it labels again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from diarization_audio import metrics
from diarization_audio.labels.activity import analyse_call, label_legs, overlap_seconds
from diarization_audio.labels.params import DEFAULT_PARAMS, VadParams, provenance
from diarization_audio.labels.quality import (
    QualityThresholds,
    leg_quality,
    quality_flags,
    quality_flags_of,
)
from diarization_audio.logs import setup_logging
from diarization_audio.objects import local_copy
from diarization_audio.processes import end_with_parent
from diarization_audio.settings import Settings
from diarization_audio.store.speech_labels import LegLabels
from diarization_audio.store.tracker import MetadataTracker

log = logging.getLogger(__name__)


def thresholds_of(settings: Settings) -> QualityThresholds:
    return QualityThresholds(settings.low_snr_db, settings.music_flag_share)


def label_conversation(
    tracker: MetadataTracker,
    conversation_id: str,
    thresholds: QualityThresholds,
    params: VadParams = DEFAULT_PARAMS,
    settings: Settings | None = None,
) -> float | None:
    """Label every stored leg of one conversation, measure each leg's SNR and music share,
    and flag it by `thresholds`. Returns the seconds of speech the store gained (negative when
    labels computed again found less), or None when there was nothing to label or a file
    changed meanwhile. Legs in a bucket are read from a local copy (`settings` says where the
    bucket is and where the copy goes)."""
    legs = tracker.legs(conversation_id)
    if not legs:
        return None
    try:
        with contextlib.ExitStack() as copies:
            paths = {
                label: copies.enter_context(local_copy(path, settings))
                for label, (path, _) in legs.items()
            }
            analyses = analyse_call(paths, params)
    except FileNotFoundError:
        if tracker.legs(conversation_id) != legs:  # erased or replaced meanwhile
            return None
        raise
    labels = label_legs(analyses, params)
    qualities = {label: leg_quality(leg, labels[label], params) for label, leg in analyses.items()}
    flags = {
        **quality_flags(analyses, labels, params),
        **quality_flags_of(qualities, thresholds.low_snr_db, thresholds.music_share),
    }
    paired = len(legs) == 2
    overlap = overlap_seconds(*labels.values()) if paired else 0.0
    gained = tracker.save_labels(
        conversation_id,
        {
            label: LegLabels(
                file_sha256=legs[label][1],
                pcm_sha256=analyses[label].pcm_sha256,
                segments=labels[label],
                clipped_share=analyses[label].clipped_share,
                paired=paired,
                snr_db=qualities[label].snr_db,
                music_share=qualities[label].music_share,
            )
            for label in legs
        },
        overlap,
        flags,
        provenance(params),
    )
    if gained is None:
        log.info(
            "conversation=%s changed while it was labelled; its newer job labels it",
            conversation_id,
        )
    return gained


def label_unlabelled(
    tracker: MetadataTracker,
    thresholds: QualityThresholds,
    params: VadParams = DEFAULT_PARAMS,
    settings: Settings | None = None,
) -> int:
    """Label every conversation that has a file without labels; returns how many."""
    return _label_each(tracker, tracker.unlabelled(), thresholds, params, settings)


def relabel_other_detectors(
    tracker: MetadataTracker,
    thresholds: QualityThresholds,
    params: VadParams = DEFAULT_PARAMS,
    settings: Settings | None = None,
) -> tuple[int, str]:
    """Label again, with `params`, every conversation whose labels another detector (or another
    version of it) made; returns how many, and the detector and version now used.

    Speech totals and flags follow in the same transaction as each conversation's new labels,
    and the next dataset export rewrites it (its fingerprint names the labeller).
    """
    made = provenance(params)
    done = _label_each(tracker, tracker.labelled_by_other(made), thresholds, params, settings)
    return done, f"{made['detector']} version {made['version']}"


def _label_each(
    tracker: MetadataTracker,
    conversation_ids: list[str],
    thresholds: QualityThresholds,
    params: VadParams,
    settings: Settings | None,
) -> int:
    done = 0
    for conversation_id in conversation_ids:
        try:
            labelled = label_conversation(tracker, conversation_id, thresholds, params, settings)
            done += labelled is not None
        except FileNotFoundError as exc:
            log.warning(
                "conversation=%s cannot be labelled: %s is missing", conversation_id, exc.filename
            )
    return done


class LabelWorker:
    """One labelling process per service process, started with the service (`start`), fed
    from a queue of conversations (`submit`) that `drain` empties.

    The process comes from a fork server that has already imported this module, so starting
    it costs milliseconds, and it never inherits the server's threads. Both end with the
    service however it ends: the fork server when the thread that started it ends (the event
    loop's, see `start`), the process when the fork server or the service ends. A failure (or a
    crash before the queue reached a conversation) is logged and leaves the conversation unlabelled
    (`metadata_tracker.py --label` and the dataset export pick it up later); the stored file
    is never affected.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: ProcessPoolExecutor | None = None
        # Conversations waiting, oldest first; one that is waiting already keeps its place,
        # since its labelling reads every leg stored by the time it starts.
        self._waiting: dict[str, None] = {}
        self._consumer: asyncio.Task[None] | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # The fork server imports its preloads before it applies the service's import path,
            # so it is told where the package lives (the service may run from another folder).
            here = str(Path(__file__).resolve().parents[2])
            paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            if here not in paths:
                os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["diarization_audio.labels.worker_start", __name__])
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_start, initargs=(self._settings,)
            )
        return self._pool

    async def start(self) -> None:
        """Start the process and wait until it is ready; call it from the service's event loop.

        The fork server is started here, in the loop's thread, which lives as long as the
        service: the kernel ends the fork server when the thread that started it ends
        (labels/worker_start.py), and a worker thread may end after a few idle seconds. (A fork
        server that died is started again by the pool, from the loop's thread, in `label`.)
        """
        pool = self._executor()
        multiprocessing.forkserver.ensure_running()
        # Waits for the fork server's imports: in a thread, so the loop is not held meanwhile.
        await asyncio.to_thread(lambda: pool.submit(_ready).result())

    def submit(self, conversation_id: str) -> None:
        """Queue a conversation whose files changed; returns at once (call it from the loop)."""
        self._waiting[conversation_id] = None
        if self._consumer is None or self._consumer.done():
            self._consumer = asyncio.get_running_loop().create_task(self._work_through())

    async def _work_through(self) -> None:
        while self._waiting:
            conversation_id = next(iter(self._waiting))
            del self._waiting[conversation_id]
            await self.label(conversation_id)

    async def drain(self) -> None:
        """Wait until every queued conversation is labelled (or has failed)."""
        while self._consumer is not None and not self._consumer.done():
            await asyncio.shield(self._consumer)

    async def label(self, conversation_id: str) -> None:
        """Label one conversation now; failures are logged, never raised."""
        loop = asyncio.get_running_loop()
        try:
            gained = await loop.run_in_executor(self._executor(), _label, conversation_id)
        except BrokenProcessPool:
            log.error("conversation=%s: the labelling process died; it will be restarted",
                      conversation_id)  # fmt: skip
            self.close()
        except Exception:
            log.exception("conversation=%s could not be labelled", conversation_id)
        else:
            if gained is not None:
                metrics.speech_stored(gained)  # counted here: the metrics are the service's

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_worker_tracker: MetadataTracker | None = None
_worker_thresholds: QualityThresholds | None = None
_worker_settings: Settings | None = None


def _start(settings: Settings) -> None:
    global _worker_tracker, _worker_thresholds, _worker_settings
    # Killed when the fork server ends (the kernel) or the service does (a thread watching it):
    # an orphan would wait for jobs forever, ignoring SIGTERM (labels/worker_start.py).
    end_with_parent(signal.SIGKILL, watch=True)
    setup_logging(settings)
    _worker_tracker = MetadataTracker.from_settings(settings)
    _worker_thresholds = thresholds_of(settings)
    _worker_settings = settings


def _ready() -> bool:
    return _worker_tracker is not None


def _label(conversation_id: str) -> float | None:
    assert _worker_tracker is not None, "LabelWorker starts every process with _start"
    assert _worker_thresholds is not None
    return label_conversation(
        _worker_tracker, conversation_id, _worker_thresholds, settings=_worker_settings
    )
