"""A per-host limit on simultaneous conversions, shared by every service process on the host.

Conversions are CPU-bound: more ffmpeg processes than cores convert no faster and starve the
servers' event loops (and /health) of CPU. The limit is MAX_CONCURRENT_CONVERSIONS slots, each
a lock file in CONVERSION_SLOTS_DIR (a directory local to the host: not the shared storage).
A job holds one slot's lock while ffmpeg runs. The kernel drops a lock when its process dies,
so a crashed worker never keeps a slot. Waiting jobs look for a free slot every
`POLL_SECONDS`; downloads of other jobs go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from filelock import FileLock, Timeout

from errors import StorageError

POLL_SECONDS = 0.02


class ConversionSlots:
    """`count` slots in `directory`, shared by every process that names the same directory."""

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count

    def prepare(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create CONVERSION_SLOTS_DIR: {exc.strerror}",
                log_detail=str(self.directory),
            ) from exc

    def _try_any(self) -> FileLock | None:
        for slot in range(self.count):
            # A fresh lock object per try: one object is re-entrant, so two jobs of this
            # process sharing it would both "hold" the slot.
            lock = FileLock(self.directory / f"slot-{slot}.lock", timeout=0, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                continue
            return lock
        return None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the duration of the block, waiting for one to be free."""
        while (lock := self._try_any()) is None:
            await asyncio.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            lock.release()
