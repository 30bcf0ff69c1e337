"""One writer per dataset file format; each takes records and writes its file atomically.

Writers never leave a half-written file: they write beside the target and rename. Files whose
content would not change are left untouched (same bytes, same modification time), so a re-run
of an export rewrites nothing that did not change.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from diarization_audio.atomic import write_atomically
from diarization_audio.wav import SAMPLE_RATE, SAMPLE_WIDTH, pcm_chunks, wav_writer

CHUNK_SAMPLES = SAMPLE_RATE * 60


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class LegMeasures:
    """What a recipe filters a leg on; None where the store does not know it."""

    speaker: str
    snr_db: float | None
    music_share: float | None


@dataclass(frozen=True)
class Item:
    """One exported conversation: its mixed audio, labels, measures and where each file lives."""

    uri: str
    split: str
    duration: float
    num_samples: int
    turns: tuple[Turn, ...]
    audio: Path
    rttm: Path
    uem: Path
    legs: tuple[LegMeasures, ...]
    flags: tuple[str, ...]  # the conversation's quality flag reasons, sorted


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` to `path` atomically unless it already holds exactly that; True if written."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: handle.write(data), binary=True)
    return True


def _read_chunks(path: Path) -> Iterable[np.ndarray]:
    for data in pcm_chunks(path, CHUNK_SAMPLES * SAMPLE_WIDTH):
        yield np.frombuffer(data, dtype="<i2").astype(np.int32)


def _summed(first: Path, second: Path) -> Iterable[np.ndarray]:
    """The two legs added sample by sample, the shorter padded with silence, a minute a time."""
    a, b = iter(_read_chunks(first)), iter(_read_chunks(second))
    while True:
        x, y = next(a, None), next(b, None)
        if x is None and y is None:
            return
        x = np.zeros(0, np.int32) if x is None else x
        y = np.zeros(0, np.int32) if y is None else y
        total = np.zeros(max(len(x), len(y)), np.int32)
        total[: len(x)] += x
        total[: len(y)] += y
        yield total


def write_mix(first: Path, second: Path, target: Path) -> int:
    """The conversation's audio: both legs from 0, summed, scaled down only if the sum would
    clip; 16 kHz mono 16-bit. Two passes over the legs, a minute at a time. Returns samples."""
    peak = max(
        (int(np.abs(chunk).max()) for chunk in _summed(first, second) if len(chunk)), default=0
    )
    scale = min(1.0, 32767 / peak) if peak else 1.0
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(handle: IO[bytes]) -> int:
        samples = 0
        with wav_writer(handle) as out:
            for chunk in _summed(first, second):
                mixed = chunk if scale == 1.0 else np.round(chunk * scale)
                out.writeframes(mixed.astype("<i2").tobytes())
                samples += len(chunk)
        return samples

    return write_atomically(target, write, binary=True)


def rttm_text(uri: str, turns: Sequence[Turn]) -> str:
    """NIST RTTM, one SPEAKER line per turn (overlapping turns as separate lines)."""
    return "".join(
        f"SPEAKER {uri} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
        for t in sorted(turns, key=lambda t: (t.start, t.speaker))
    )


def uem_text(uri: str, duration: float) -> str:
    return f"{uri} 1 0.000 {duration:.3f}\n"


def write_lists(directory: Path, items: Sequence[Item], splits: Sequence[str]) -> None:
    for split in splits:
        uris = "".join(f"{i.uri}\n" for i in items if i.split == split)
        write_if_changed(directory / f"{split}.txt", uris.encode())


def write_pyannote(yml: Path, database: str, audio: Path, splits: Sequence[str]) -> None:
    """database.yml: a SpeakerDiarization protocol over the lists, RTTM and UEM files, with
    paths relative to the yml so the folder can be moved."""
    rel = os.path.relpath(audio, yml.parent)
    lines = ["Databases:", f"  {database}: {rel}/{{uri}}.wav", "", "Protocols:",
             f"  {database}:", "    SpeakerDiarization:", "      Calls:"]  # fmt: skip
    for split in splits:
        lines += [f"        {split}:", f"          uri: lists/{split}.txt",
                  "          annotation: rttm/{uri}.rttm",
                  "          annotated: uem/{uri}.uem"]  # fmt: skip
    write_if_changed(yml, ("\n".join(lines) + "\n").encode())


def write_nemo(path: Path, items: Sequence[Item]) -> None:
    """A NeMo speaker-diarization manifest: one JSON object per line, absolute paths; NeMo
    ignores the extra keys (`snr_db_<speaker>`, `music_share_<speaker>`, `flags`) that a
    recipe filters on."""
    rows = [
        nemo_entry(i.duration, i.turns, i.legs, i.flags, audio=str(i.audio.resolve()),
                   rttm=str(i.rttm.resolve()), uem=str(i.uem.resolve()))
        for i in items
    ]  # fmt: skip
    write_if_changed(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def nemo_entry(
    duration: float,
    turns: Sequence[Turn],
    legs: Sequence[LegMeasures],
    flags: Sequence[str],
    *,
    audio: str,
    rttm: str,
    uem: str | None = None,
) -> dict[str, object]:
    """One conversation's line of a NeMo diarization manifest, its files named as given."""
    return {"audio_filepath": audio, "offset": 0, "duration": round(duration, 3),
            "label": "infer", "text": "-", "num_speakers": len({t.speaker for t in turns}),
            "rttm_filepath": rttm, **({"uem_filepath": uem} if uem is not None else {}),
            **{f"snr_db_{leg.speaker}": leg.snr_db for leg in legs},
            **{f"music_share_{leg.speaker}": leg.music_share for leg in legs},
            "flags": list(flags)}  # fmt: skip


def write_audiofolder(directory: Path, items: Sequence[Item]) -> None:
    """A Hugging Face `audiofolder` split: the audio (hard links) and metadata.jsonl with the
    diarization columns (timestamps_start, timestamps_end, speakers), each leg's measures as
    lists in one order (leg_speakers, leg_snr_db, leg_music_share: every row has the same
    columns whatever its speaker labels) and the conversation's flags, comma-separated.

    datasets refuses splits whose columns' types differ, and a column that is empty or null in
    every row of a split gets the null type: so flags are a string ("" for none) and an unknown
    measure is NaN (Arrow's missing float), never null or an empty list."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in items:
        link = directory / item.audio.name
        _link(item.audio, link)
        turns = sorted(item.turns, key=lambda t: (t.start, t.speaker))
        rows.append({"file_name": link.name, "timestamps_start": [t.start for t in turns],
                     "timestamps_end": [t.end for t in turns],
                     "speakers": [t.speaker for t in turns],
                     "leg_speakers": [leg.speaker for leg in item.legs],
                     "leg_snr_db": [_nan(leg.snr_db) for leg in item.legs],
                     "leg_music_share": [_nan(leg.music_share) for leg in item.legs],
                     "flags": ",".join(item.flags)})  # fmt: skip
    wanted = {i.audio.name for i in items}
    for old in directory.glob("*.wav"):
        if old.name not in wanted:
            old.unlink()
    write_if_changed(
        directory / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()
    )


def _link(source: Path, link: Path) -> None:
    try:
        if link.stat().st_ino == source.stat().st_ino:
            return
    except FileNotFoundError:
        pass
    temporary = link.with_name(f".{link.name}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # another filesystem: a copy
        temporary.write_bytes(source.read_bytes())
    os.replace(temporary, link)


def write_lhotse(directory: Path, items: Sequence[Item]) -> None:
    """lhotse manifests written directly: a Recording per conversation (one file source,
    channel 0) and a SupervisionSegment per turn (speaker, channel 0) whose `custom` holds its
    leg's snr_db and music_share and the conversation's flags (a Recording has no `custom`)."""
    recordings = [
        {"id": i.uri,
         "sources": [{"type": "file", "channels": [0], "source": str(i.audio.resolve())}],
         "sampling_rate": SAMPLE_RATE, "num_samples": i.num_samples,
         "duration": round(i.num_samples / SAMPLE_RATE, 6), "channel_ids": [0]}
        for i in items
    ]  # fmt: skip
    supervisions = [
        {"id": f"{i.uri}-{n:05d}", "recording_id": i.uri, "start": t.start,
         "duration": round(t.end - t.start, 3), "channel": 0, "speaker": t.speaker,
         "custom": _leg_custom(i, t.speaker)}
        for i in items
        for n, t in enumerate(sorted(i.turns, key=lambda t: (t.start, t.speaker)))
    ]  # fmt: skip
    for name, rows in (("recordings", recordings), ("supervisions", supervisions)):
        text = "".join(json.dumps(r) + "\n" for r in rows).encode()
        write_if_changed(directory / f"{name}.jsonl.gz", gzip.compress(text, mtime=0))


def _leg_custom(item: Item, speaker: str) -> dict[str, object]:
    leg = next((leg for leg in item.legs if leg.speaker == speaker), None)
    return {"snr_db": leg.snr_db if leg else None,
            "music_share": leg.music_share if leg else None, "flags": list(item.flags)}  # fmt: skip


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
