"""The benchmark's audio: made at bench time by the test suite's factory, kept in bench/.work."""

from __future__ import annotations

import shutil
from pathlib import Path

from audio_factory import make_long_mp3

from bench.harness import Scale

SPEAKERS = ("agent", "customer")


def _made(path: Path, minutes: float, frequency: float = 440.0) -> Path:
    """`path` as a `minutes`-long stereo 44.1 kHz MP3, made once and reused by later runs."""
    if not path.exists():
        partial = path.with_name(f".{path.name}.partial.mp3")
        make_long_mp3(partial, minutes, frequency=frequency)
        partial.replace(path)  # an interrupted run leaves no truncated file under the real name
    return path


def long_file(media: Path, minutes: float) -> str:
    """The name, under `media`, of a long recording of `minutes` minutes."""
    name = f"long_{minutes:g}min.mp3"
    _made(media / name, minutes)
    return name


def batch_files(media: Path, scale: Scale) -> list[tuple[str, str, str]]:
    """(conversation_id, speaker, file name) for every file of case 2's batch.

    Two recordings (one pitch per speaker) are made and copied to one file per row, so every
    URL is a distinct file as in a real batch.
    """
    originals = {
        speaker: _made(media / f"batch_{speaker}_{scale.batch_minutes:g}min.mp3",
                       scale.batch_minutes, frequency)
        for speaker, frequency in zip(SPEAKERS, (440.0, 330.0), strict=True)
    }  # fmt: skip
    rows = []
    for n in range(scale.conversations):
        cid = f"conv{n:03d}"
        for speaker in SPEAKERS:
            name = f"{cid}_{speaker}_{scale.batch_minutes:g}min.mp3"
            target = media / name
            if not target.exists() or target.stat().st_size != originals[speaker].stat().st_size:
                shutil.copyfile(originals[speaker], target)
            rows.append((cid, speaker, name))
    return rows
