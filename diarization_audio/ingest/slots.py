"""A per-host limit on simultaneous conversions, shared by every service process on the host.

Conversions are CPU-bound: more ffmpeg processes than cores convert no faster and starve the
servers' event loops (and /health) of CPU. The limit is MAX_CONCURRENT_CONVERSIONS slots, each
a lock file in CONVERSION_SLOTS_DIR (a directory local to the host: not the shared storage).
A job holds one slot's lock while ffmpeg runs. The kernel drops a lock when its process dies,
so a crashed worker never keeps a slot.

Waiting jobs of one process queue in the order they asked, and only the first of them looks for
a free slot: at once when a job of its own process lets one go, and every `POLL_SECONDS` for
slots freed by other processes. (Every waiting job polling on its own cost the event loop a
thousand lock attempts a second with sixteen jobs queued, and the server answered more slowly
for it.) Downloads of other jobs go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

from filelock import FileLock, Timeout

from diarization_audio.errors import StorageError

POLL_SECONDS = 0.02


class ConversionSlots:
    """`count` slots in `directory`, shared by every process that names the same directory."""

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count
        self._waiting: deque[asyncio.Future[None]] = deque()  # this process's, oldest first
        self._freed: asyncio.Future[None] | None = None  # set when a job here lets one go

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
        lock = await self.take()
        try:
            yield
        finally:
            self.give_back(lock)

    def take_free(self) -> FileLock | None:
        """A slot at once if one is free and no job of this process is waiting for one (a job
        does not pass those ahead of it); else None."""
        if self._waiting:
            return None
        return self._try_any()

    def give_back(self, lock: FileLock) -> None:
        """Let go of a slot from `take` or `take_free`."""
        lock.release()
        if self._freed is not None and not self._freed.done():
            self._freed.set_result(None)

    async def take(self) -> FileLock:
        """A slot, waiting in this process's queue until one is free; `give_back` returns it."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            if self._waiting[0] is not turn:
                await turn  # the job ahead got its slot or gave up
            while True:
                # Made before trying, so that a slot let go meanwhile is not missed.
                self._freed = asyncio.get_running_loop().create_future()
                if (lock := self._try_any()) is not None:
                    return lock
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):
                        await self._freed
        finally:
            first = self._waiting[0] is turn
            self._waiting.remove(turn)
            if first:  # with its slot, or cancelled: the next in line looks from now on
                self._freed = None
                # A next job cancelled meanwhile has its future cancelled too; it passes the
                # turn on itself when its own cancellation reaches this block.
                if self._waiting and not self._waiting[0].done():
                    self._waiting[0].set_result(None)
