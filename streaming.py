"""Convert while downloading: ffmpeg decodes the bytes as they arrive, so a job takes about as
long as the slower of its download and its conversion instead of both one after the other.

The download always goes to a file as well (a retry resumes from it, and a format that needs
to seek is converted from it once complete). ffmpeg follows that file through a pipe as soon
as the job holds a conversion slot; a download that finished first is converted from the file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from conversion_slots import ConversionSlots
from converter import needs_whole_file, run_ffmpeg
from errors import NotAudio
from fetcher import Fetcher
from growing_file import GrowingFile, Restarted
from mp3_header import decoded_samples

SNIFF_BYTES = 64 * 1024


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
) -> None:
    """Fetch `url` into `download` and convert it into `targets` at the same time.

    Raises the download's error when it failed, else NotAudio when ffmpeg could not decode it;
    cancelling stops both.
    """
    growing = GrowingFile(download)
    fetching = asyncio.ensure_future(fetcher.fetch(url, growing, check_space))
    try:
        await _convert(growing, download, targets, conversion)
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


async def _convert(
    growing: GrowingFile, download: Path, targets: Sequence[Path], conversion: Conversion
) -> None:
    await growing.wait_for(SNIFF_BYTES)
    head = growing.head(SNIFF_BYTES)
    if needs_whole_file(head):
        await growing.complete()  # outside the slot: it is only waiting
    # From a pipe, ffmpeg keeps an MP3 encoder's end padding that it trims from a file: the
    # tag's exact length makes both give the same WAV.
    samples = decoded_samples(head)
    async with conversion.slots.slot():
        while True:
            await growing.wait_for(1)
            if growing.done:
                await growing.complete()  # the download's error, if it failed
                if growing.written == 0:
                    raise NotAudio("the body is empty")
            streaming = not growing.done
            try:
                await run_ffmpeg(
                    conversion.ffmpeg, download, targets,
                    max_seconds=conversion.max_seconds, timeout=conversion.timeout,
                    feed=growing.follow() if streaming else None, niceness=conversion.niceness,
                    samples=samples if streaming else None,
                )  # fmt: skip
                return
            except Restarted:
                continue  # the source sent the file again from its start: so does ffmpeg
            except NotAudio:
                if not streaming:
                    raise
                # A pipe can fail where a file would not (a format that seeks): once the
                # download is complete, the file decides.
                await growing.complete()
