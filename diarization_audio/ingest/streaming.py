"""Convert while downloading: ffmpeg decodes the bytes as they arrive, so a job takes about as
long as the slower of its download and its conversion instead of both one after the other.

The download always goes to a file as well (a retry resumes from it, and a format that needs
to seek is converted from it once complete). ffmpeg follows that file through a pipe as soon
as the job holds a conversion slot; a download that finished first is converted from the file.
When a slot is free at once and the URL's name does not call for a look at the first bytes,
ffmpeg is started before they arrive (HEAD_DECIDES).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from diarization_audio.errors import NotAudio
from diarization_audio.ingest.fetcher import Fetcher
from diarization_audio.ingest.ffmpeg import Ffmpeg, needs_whole_file
from diarization_audio.ingest.growing_file import GrowingFile, Restarted
from diarization_audio.ingest.mp3_header import decoded_samples
from diarization_audio.ingest.slots import ConversionSlots

SNIFF_BYTES = 64 * 1024
# Formats whose first bytes decide how ffmpeg is started: an MP3's exact length (its LAME
# tag) and whether an MP4's index comes before its audio. For any other URL, when a conversion
# slot is free, ffmpeg starts while the source is still answering, and the few milliseconds it
# takes to start overlap the request instead of following it. A URL whose name misleads costs
# one start, stopped once the first bytes show it.
HEAD_DECIDES = frozenset(
    {".mp3", ".mp2", ".mpga", ".mp4", ".m4a", ".m4b", ".m4v", ".mov", ".3gp", ".3g2"}
)


@dataclass(frozen=True)
class Conversion:
    """How ffmpeg runs for every job of a process."""

    ffmpeg: str
    slots: ConversionSlots
    max_seconds: float
    timeout: float
    niceness: int


async def fetch_and_convert(
    fetcher: Fetcher,
    url: str,
    download: Path,
    targets: Sequence[Path],
    check_space: Callable[[int], None],
    conversion: Conversion,
    on_start: Callable[[], None] = lambda: None,
) -> None:
    """Fetch `url` into `download` and convert it into `targets` at the same time.

    `on_start` is called before each start of ffmpeg (which writes the targets from their
    first byte again). Raises the download's error when it failed, else NotAudio when ffmpeg
    could not decode it; cancelling stops both.
    """
    growing = GrowingFile(download)
    fetching = asyncio.ensure_future(fetcher.fetch(url, growing, check_space))
    try:
        await _convert(
            growing, download, targets, conversion, early=starts_early(url), on_start=on_start
        )
        if not growing.done:
            # ffmpeg stopped before the input ended: it reached its length limit (-t), and
            # the rest of the download is not needed to say the audio is too long.
            fetching.cancel()
        else:
            await fetching
    except BaseException:
        fetching.cancel()
        with contextlib.suppress(BaseException):
            await fetching
        raise


def starts_early(url: str) -> bool:
    """Whether ffmpeg may start before the first bytes of `url` arrive: unless its name says it
    is a format whose first bytes decide how ffmpeg is started."""
    return PurePosixPath(urlsplit(url).path).suffix.lower() not in HEAD_DECIDES


async def _convert(
    growing: GrowingFile,
    download: Path,
    targets: Sequence[Path],
    conversion: Conversion,
    early: bool,
    on_start: Callable[[], None],
) -> None:
    slots = conversion.slots
    ready: Ffmpeg | None = None  # started, not yet given its input
    lock = slots.take_free() if early else None
    try:
        if lock is not None:
            on_start()
            ready = await _start(conversion, download, targets, piped=True, samples=None)
        await growing.wait_for(SNIFF_BYTES)
        head = growing.head(SNIFF_BYTES)
        whole = needs_whole_file(head)
        # From a pipe, ffmpeg keeps an MP3 encoder's end padding that it trims from a file:
        # the tag's exact length makes both give the same WAV.
        samples = decoded_samples(head)
        if whole or samples is not None:
            if ready is not None:  # started on a guess the first bytes disprove
                await ready.stop()
                ready = None
            if whole and lock is not None:
                slots.give_back(lock)
                lock = None
        if whole:
            await growing.complete()  # outside the slot: it is only waiting
        if lock is None:
            lock = await slots.take()
        while True:
            await growing.wait_for(1)
            if growing.done:
                await growing.complete()  # the download's error, if it failed
                if growing.written == 0:
                    raise NotAudio("the body is empty")
            piped = ready is not None or not growing.done
            try:
                if ready is None:
                    on_start()
                    ready = await _start(
                        conversion, download, targets, piped, samples if piped else None
                    )
                running, ready = ready, None
                await running.finish(conversion.timeout, growing.follow() if piped else None)
                return
            except Restarted:
                continue  # the source sent the file again from its start: so does ffmpeg
            except NotAudio:
                if not piped:
                    raise
                # A pipe can fail where a file would not (a format that seeks): once the
                # download is complete, the file decides.
                await growing.complete()
    finally:
        if ready is not None:
            await ready.stop()
        if lock is not None:
            slots.give_back(lock)


async def _start(
    conversion: Conversion,
    download: Path,
    targets: Sequence[Path],
    piped: bool,
    samples: int | None,
) -> Ffmpeg:
    return await Ffmpeg.start(
        conversion.ffmpeg, download, targets, conversion.max_seconds, piped=piped,
        niceness=conversion.niceness, samples=samples,
    )  # fmt: skip
