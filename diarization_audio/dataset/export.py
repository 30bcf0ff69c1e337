"""Labelled two-leg conversations as a training set for NeMo, pyannote, Hugging Face, lhotse.

Layout of OUTPUT_DIR (every format points at the same audio and labels; nothing is copied):

    audio/<uri>.wav            the conversation: both legs summed, 16 kHz mono (uri = the id)
    rttm/<uri>.rttm            who spoke when (one SPEAKER line per turn)
    uem/<uri>.uem              the scored region: the whole conversation
    lists/<split>.txt          uris per split (train, development, test)
    database.yml               pyannote.database protocol CallCenter.SpeakerDiarization.Calls
    nemo/<split>.json          NeMo diarization manifests (train, dev, test)
    huggingface/<split>/       audiofolder (train, validation, test): audio links + metadata.jsonl
    lhotse/<split>/            recordings.jsonl.gz and supervisions.jsonl.gz
    .export_state.json         what was exported, so a re-run touches only what changed
    .export.lock               held while an export writes (a second one stops at once)

Splits are decided by a hash of the agent id when the conversation has one (all of an agent's
calls in one split), else of the conversation id: the same on every run and every machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import wave
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm import tqdm

from diarization_audio.dataset import formats as fmt
from diarization_audio.dataset.formats import Item, LegMeasures, Turn
from diarization_audio.objects import local_copy
from diarization_audio.settings import Settings
from diarization_audio.store.speech_labels import StoredConversation
from diarization_audio.wav import SAMPLE_RATE

log = logging.getLogger(__name__)

ALL_FORMATS = ("rttm", "nemo", "pyannote", "huggingface", "lhotse")
SPLITS = ("train", "development", "test")
NEMO_NAMES = {"train": "train", "development": "dev", "test": "test"}
HF_NAMES = {"train": "train", "development": "validation", "test": "test"}
DATABASE = "CallCenter"
STATE_FILE = ".export_state.json"
LOCK_FILE = ".export.lock"


class ExportBusy(Exception):
    """Another export holds the output folder."""


LABELS_MISSING = "labels missing"
NOT_TWO_LEGS = "without two legs"


@dataclass
class ExportSummary:
    exported: int = 0
    written: int = 0  # conversations whose audio and labels were (re)written
    unchanged: int = 0
    removed: int = 0
    removed_ids: list[str] = field(default_factory=list)  # conversations taken out of the folder
    left_out: int = 0  # conversations not exported, each counted once
    # Why, by reason: each quality flag's name, LABELS_MISSING, NOT_TWO_LEGS. A conversation
    # left out for several reasons counts under each of them.
    left_out_by_reason: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0.0))
    speech_hours: float = 0.0

    def leave_out(self, reasons: Iterable[str]) -> None:
        self.left_out += 1
        for reason in reasons:
            self.left_out_by_reason[reason] = self.left_out_by_reason.get(reason, 0) + 1

    def left_out_text(self) -> str:
        """E.g. "left out 3 (duplicate 1, labels missing 1, without two legs 1)"."""
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.left_out_by_reason.items()))
        return f"left out {self.left_out}" + (f" ({reasons})" if reasons else "")


def reasons_to_leave_out(conversation: StoredConversation, include_flagged: bool) -> list[str]:
    """Why a conversation cannot go into the training set (none: it goes in)."""
    reasons = [] if conversation.labelled else [LABELS_MISSING]
    if len(conversation.legs) != 2:
        reasons.append(NOT_TWO_LEGS)
    if not include_flagged:
        reasons += sorted(conversation.flags)
    return reasons


def split_of(key: str, split: tuple[float, float, float]) -> str:
    """train, development or test for a grouping key, in the given proportions."""
    point = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) / 16**15
    total = sum(split)
    if point < split[0] / total:
        return "train"
    return "development" if point < (split[0] + split[1]) / total else "test"


def selected(
    conversations: Iterable[StoredConversation],
    split: tuple[float, float, float],
    include_flagged: bool,
    summary: ExportSummary,
) -> Iterator[tuple[StoredConversation, str]]:
    """The conversations that go into the training set, each with its split; every one left
    out is counted in `summary` under its reasons."""
    for conversation in conversations:
        reasons = reasons_to_leave_out(conversation, include_flagged)
        if reasons:
            summary.leave_out(reasons)
            continue
        yield conversation, split_of(conversation.agent_id or conversation.conversation_id, split)


def turns_of(conversation: StoredConversation, duration: float) -> tuple[Turn, ...]:
    """Every leg's speech as turns of its speaker, cut at the end of the mixed audio."""
    return tuple(
        Turn(start, min(end, duration), leg.speaker_label)
        for leg in conversation.legs
        for start, end in leg.segments
        if min(end, duration) > start
    )


def measures_of(conversation: StoredConversation) -> tuple[LegMeasures, ...]:
    return tuple(
        LegMeasures(leg.speaker_label, leg.snr_db, leg.music_share) for leg in conversation.legs
    )


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s export lock while an export writes there; ExportBusy at once if another
    export holds it."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(out / LOCK_FILE, timeout=0):
            yield
    except Timeout:
        raise ExportBusy(f"another export is writing to {out}; try again when it ends") from None


def _fingerprint(conversation: StoredConversation, split: str) -> str:
    legs = [(leg.speaker_label, leg.sha256, leg.segments) for leg in conversation.legs]
    described = [split, conversation.labeller, legs]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


def formats_found(output_dir: Path) -> list[str] | None:
    """The formats of the loose export in `output_dir` (what its indexes show), or None when
    there is none."""
    out = Path(output_dir)
    if not (out / STATE_FILE).is_file():
        return None
    there = {"pyannote": out / "database.yml", "nemo": out / "nemo",
             "huggingface": out / "huggingface", "lhotse": out / "lhotse"}  # fmt: skip
    return ["rttm", *(name for name, path in there.items() if path.exists())]


def export_dataset(
    conversations: Iterable[StoredConversation],
    output_dir: Path,
    *,
    formats: Collection[str] = ALL_FORMATS,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    include_flagged: bool = False,
    progress: bool = True,
    settings: Settings | None = None,
) -> ExportSummary:
    """Write (or bring up to date) the training set in `output_dir` from every stored
    conversation given; the summary counts those left out, by reason. Legs stored in a bucket
    are read through `settings` (the bucket's endpoint and keys)."""
    unknown = set(formats) - set(ALL_FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {', '.join(ALL_FORMATS)}")
    out = Path(output_dir)
    with output_lock(out):
        return _export(conversations, out, formats, split, include_flagged, progress, settings)


def _export(
    conversations: Iterable[StoredConversation],
    out: Path,
    formats: Collection[str],
    split: tuple[float, float, float],
    include_flagged: bool,
    progress: bool,
    settings: Settings | None,
) -> ExportSummary:
    state_path = out / STATE_FILE
    try:
        previous: dict[str, str] = json.loads(state_path.read_text())
    except (FileNotFoundError, ValueError):
        previous = {}
    summary, items, state = ExportSummary(), [], {}
    chosen = tqdm(conversations, desc="exporting", unit="conv", disable=not progress)
    for conversation, which in selected(chosen, split, include_flagged, summary):
        item, fingerprint = _export_one(conversation, out, which, previous, summary, settings)
        items.append(item)
        state[item.uri] = fingerprint
    for uri in sorted(set(previous) - set(state)):
        for path in (out / "audio" / f"{uri}.wav", out / "rttm" / f"{uri}.rttm",
                     out / "uem" / f"{uri}.uem"):  # fmt: skip
            path.unlink(missing_ok=True)
        summary.removed += 1
        summary.removed_ids.append(uri)
    _write_indexes(out, items, formats)
    fmt.write_if_changed(state_path, json.dumps(state, indent=1, sort_keys=True).encode())
    summary.exported = len(items)
    return summary


def _export_one(
    conversation: StoredConversation,
    out: Path,
    which: str,
    previous: dict[str, str],
    summary: ExportSummary,
    settings: Settings | None,
) -> tuple[Item, str]:
    uri = conversation.conversation_id
    fingerprint = _fingerprint(conversation, which)
    audio, rttm, uem = (
        out / "audio" / f"{uri}.wav",
        out / "rttm" / f"{uri}.rttm",
        out / "uem" / f"{uri}.uem",
    )
    first, second = conversation.legs
    if previous.get(uri) == fingerprint and audio.exists():
        summary.unchanged += 1
        with wave.open(str(audio), "rb") as written:
            samples = written.getnframes()
    else:
        with (
            local_copy(first.filepath, settings) as first_path,
            local_copy(second.filepath, settings) as second_path,
        ):
            samples = fmt.write_mix(first_path, second_path, audio)
        summary.written += 1
    duration = samples / SAMPLE_RATE
    turns = turns_of(conversation, duration)
    fmt.write_if_changed(rttm, fmt.rttm_text(uri, turns).encode())
    fmt.write_if_changed(uem, fmt.uem_text(uri, duration).encode())
    summary.hours[which] += duration / 3600
    summary.speech_hours += sum(t.end - t.start for t in turns) / 3600
    flags = tuple(sorted(conversation.flags))
    item = Item(
        uri, which, duration, samples, turns, audio, rttm, uem, measures_of(conversation), flags
    )
    return item, fingerprint


def _write_indexes(out: Path, items: list[Item], formats: Collection[str]) -> None:
    by_split = {name: [i for i in items if i.split == name] for name in SPLITS}
    fmt.write_lists(out / "lists", items, SPLITS)
    if "pyannote" in formats:
        fmt.write_pyannote(out / "database.yml", DATABASE, out / "audio", SPLITS)
    for name, chosen in by_split.items():
        if "nemo" in formats:
            fmt.write_nemo(out / "nemo" / f"{NEMO_NAMES[name]}.json", chosen)
        if "huggingface" in formats:
            folder = out / "huggingface" / HF_NAMES[name]
            if chosen:
                fmt.write_audiofolder(folder, chosen)
            else:  # datasets refuses a split folder with no rows
                shutil.rmtree(folder, ignore_errors=True)
        if "lhotse" in formats:
            fmt.write_lhotse(out / "lhotse" / name, chosen)
