"""A download in progress that a reader can follow: ffmpeg converts while the bytes arrive.

The fetcher is the only writer: it appends to the file, says how far it got, starts over when a
source refuses to resume, and says when it is done (or failed). A reader (the converter's feed)
reads the file from the start, waits for more when it catches up, and ends with the download.
A reader that meets a restart stops with `Restarted`: what it already passed on is stale.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

READ_BYTES = 256 * 1024


class Restarted(Exception):
    """The download started over from its first byte; whatever was read before is stale."""


class GrowingFile:
    """The progress of one download into `path`, shared by the fetcher and the converter."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        self.generation = 0
        self.done = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()

    # The writer's side ---------------------------------------------------------------------

    def advance(self, count: int) -> None:
        self.written += count
        self._wake()

    def restart(self) -> None:
        """The file was truncated: readers must start over."""
        self.written = 0
        self.generation += 1
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        self.done, self.error = True, error
        self._wake()

    def _wake(self) -> None:
        self._changed.set()

    # The reader's side ---------------------------------------------------------------------

    async def wait_for(self, count: float) -> None:
        """Until `count` bytes are there or the download ended, whichever comes first."""
        while self.written < count and not self.done:
            self._changed.clear()
            await self._changed.wait()

    async def complete(self) -> None:
        """Until the download ended; its error if it failed."""
        await self.wait_for(math.inf)
        if self.error is not None:
            raise self.error

    def head(self, count: int) -> bytes:
        """Up to `count` of the first bytes written so far."""
        with open(self.path, "rb") as handle:
            return handle.read(min(count, self.written))

    async def follow(self) -> AsyncIterator[bytes]:
        """Every byte of the download, from the first, as it arrives; ends with a complete
        download, raises the download's error if it failed, and `Restarted` if it started over."""
        generation, offset = self.generation, 0
        with open(self.path, "rb") as handle:
            while True:
                if self.generation != generation:
                    raise Restarted
                if offset < self.written:
                    chunk = handle.read(min(READ_BYTES, self.written - offset))
                    offset += len(chunk)
                    yield chunk
                    continue
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                self._changed.clear()
                await self._changed.wait()
