"""Keeping `conversations_metadata.json` current: a thread in each service process exports the
store a couple of seconds after it changes, one process at a time."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol

from filelock import FileLock, Timeout

from diarization_audio.errors import AudioError
from diarization_audio.store.database import BUSY_TIMEOUT_SECONDS
from diarization_audio.store.json_export import Export

log = logging.getLogger(__name__)
EXPORT_REST_FACTOR = 4


class Exportable(Protocol):
    """What the exporter needs of the store (store.tracker.MetadataTracker)."""

    export_path: Path

    def export_due(self) -> bool: ...

    def export_json(self, force: bool = False, path: Path | None = None) -> Export | None: ...


class JsonExporter:
    """Exports the store to the JSON document off request paths, `interval` seconds after the
    export before it whenever the store changed meanwhile (or, after two exports in a row that
    each took longer than a quarter of that, four times the shorter one's duration).

    Every process of the service runs one; a lock beside the document lets one process at a
    time write it, and the store's exported revision tells the others there is nothing to do.
    """

    def __init__(self, tracker: Exportable, interval: float) -> None:
        self.tracker = tracker
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="json-export", daemon=True)
        self._lock = FileLock(str(tracker.export_path) + ".lock", timeout=0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop, after one last export so the document is current when the service ends."""
        self._stop.set()
        self._thread.join()
        self.export(wait=True)

    def _run(self) -> None:
        pause, before = self.interval, 0.0
        while not self._stop.wait(pause):
            done = self.export(wait=False)
            if done is None:
                pause = self.interval
                continue
            # A large store takes seconds to export whole, and a fraction of that when only its
            # last conversations changed: after two costly exports in a row, rest long enough
            # that exporting takes at most a fifth of one core, however often the store changes.
            costly = min(done.seconds, before)
            pause, before = max(self.interval, EXPORT_REST_FACTOR * costly), done.seconds

    def export(self, wait: bool) -> Export | None:
        try:
            if not self.tracker.export_due():
                return None
            with self._lock.acquire(timeout=BUSY_TIMEOUT_SECONDS if wait else 0):
                done = self.tracker.export_json()
        except Timeout:
            return None  # another process is writing it
        except (AudioError, OSError) as exc:
            log.warning("JSON export failed: %s", getattr(exc, "message", exc))
            return None
        if done is not None:
            log.debug("exported %d conversations (%d copied) to %s (%.2f s)",
                      done.conversations, done.kept, done.path, done.seconds)  # fmt: skip
        return done
