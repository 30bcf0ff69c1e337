"""Sharded training exports: WebDataset tar shards of a bounded size, in a folder or a bucket.

Layout under OUTPUT (a folder, or s3://bucket/prefix):

    shards/index.json                  every shard in order: name, split, bytes, fingerprint, the
                                       bound it was filled to, and its conversations in order
                                       (id, fingerprint, bytes in the tar, duration)
    shards/<split>/shard-NNNNNN.tar    one WebDataset sample per conversation (split: train,
                                       development, test), keyed by its id with '.' as %2E:
        <key>.json                     conversation_id, split, duration, num_samples,
                                       sample_rate, segments, legs, flags, labeller
        <key>.rttm                     its turns: the loose export's rttm/<uri>.rttm
        <key>.wav                      both legs summed, 16 kHz mono: the loose audio/<uri>.wav
    shards/<split>/shard-NNNNNN.jsonl  the shard's NeMo tarred-dataset manifest: one line per
                                       sample, audio_filepath = its member, shard_id = NNNNNN

WebDataset tars, because NeMo's tarred audio datasets, Hugging Face `datasets` (its "webdataset"
builder) and the `webdataset` library all read them without torch; lhotse's Shar format cannot
be imported without it. Each tar is built in a local temporary file, one conversation at a time
(its legs mixed into a temporary WAV, then copied in), and put in place whole, so memory stays
flat whatever the shard's size. Which conversation goes where and what a rerun rewrites:
shard_plan.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from diarization_audio.dataset import formats as fmt
from diarization_audio.dataset.export import (
    SPLITS,
    ExportSummary,
    measures_of,
    output_lock,
    selected,
    turns_of,
)
from diarization_audio.dataset.shard_plan import (
    BLOCK,
    Member,
    Shard,
    ShardBounds,
    index_bytes,
    marked_incomplete,
    plan_split,
    read_index,
)
from diarization_audio.objects import Place, is_bucket_url, local_copy, place_at
from diarization_audio.settings import Settings
from diarization_audio.store.speech_labels import StoredConversation
from diarization_audio.wav import SAMPLE_RATE, SAMPLE_WIDTH

log = logging.getLogger(__name__)

FOLDER = "shards"
INDEX = f"{FOLDER}/index.json"
SAMPLE_FORMAT = 1  # part of every fingerprint: changing what a sample holds rewrites them all
TAR_FORMAT: Literal[2] = tarfile.PAX_FORMAT
WAV_HEADER = 44  # bytes the wave module writes before the samples
_FILE = re.compile(r"^shard-\d{6}\.(tar|jsonl)$")
_TEMPORARY = ".shard-temporary-"
Chosen = dict[str, tuple[StoredConversation, str]]  # id -> the conversation and its split


@dataclass
class ShardSummary(ExportSummary):
    """The export's counts (`written`: conversations mixed into the shards written, the rest
    `unchanged`) and the shards': written, renumbered (moved into a gap), untouched, deleted."""

    shards: int = 0
    shards_written: int = 0
    shards_renumbered: int = 0
    shards_unchanged: int = 0
    shards_deleted: int = 0


def sample_key(conversation_id: str) -> str:
    """A conversation's key in its shard: webdataset cuts a member's name at its first dot,
    and ids never hold '%', so this is undone by replacing %2E with '.'."""
    return conversation_id.replace(".", "%2E")


def shards_found(output: str | Path, settings: Settings) -> bool:
    """Whether OUTPUT holds a sharded export."""
    return place_at(output, settings).size(INDEX) is not None


def export_shards(
    conversations: Iterable[StoredConversation],
    output: str | Path,
    settings: Settings,
    *,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    include_flagged: bool = False,
    bounds: ShardBounds | None = None,
    progress: bool = True,
) -> ShardSummary:
    """Write (or bring up to date) the shards under OUTPUT, a folder or s3://bucket/prefix,
    from every stored conversation given, choosing them as the loose export does. `bounds`:
    None keeps the bound the shards were filled to (the default one for a first export).
    A folder is locked while this writes; two exports into one bucket prefix are not kept
    apart."""
    target = str(output)
    if is_bucket_url(target):
        return _ShardExport(target, settings, progress).run(
            conversations, split, include_flagged, bounds
        )
    with output_lock(Path(target)):
        return _ShardExport(target, settings, progress).run(
            conversations, split, include_flagged, bounds
        )


def _fingerprint(conversation: StoredConversation, split: str) -> str:
    """What a sample is made of: a change to any of it rewrites the sample's shard."""
    legs = [(leg.speaker_label, leg.sha256, leg.segments, leg.snr_db, leg.music_share)
            for leg in conversation.legs]  # fmt: skip
    described = [SAMPLE_FORMAT, split, conversation.labeller, legs, sorted(conversation.flags)]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:32]


def _sample_texts(conversation: StoredConversation, split: str, samples: int) -> tuple[bytes, ...]:
    """The sample's .json and .rttm members for mixed audio of `samples` samples.

    Hugging Face's "webdataset" builder takes each field's type from the first few samples and
    refuses a later one that differs, so, as in the loose audiofolder's metadata, flags are one
    string ("" for none) and an unknown measure is NaN, never null or an empty list."""
    duration = samples / SAMPLE_RATE
    turns = sorted(turns_of(conversation, duration), key=lambda t: (t.start, t.speaker))
    cid = conversation.conversation_id
    document = {
        "conversation_id": cid, "split": split, "duration": duration, "num_samples": samples,
        "sample_rate": SAMPLE_RATE,
        "segments": [{"start": t.start, "end": t.end, "speaker": t.speaker} for t in turns],
        "legs": [{"speaker": leg.speaker_label, "sha256": leg.sha256,
                  "snr_db": _nan(leg.snr_db), "music_share": _nan(leg.music_share)}
                 for leg in conversation.legs],
        "flags": ",".join(sorted(conversation.flags)), "labeller": conversation.labeller,
    }  # fmt: skip
    return json.dumps(document).encode(), fmt.rttm_text(cid, turns).encode()


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)  # mode 0644, owner 0, time 0: the same bytes on every build
    info.size = size
    return info


def _stored(name: str, size: int) -> int:
    """A member's bytes in the tar: its header (a PAX one first for a long name), its data
    padded to a block."""
    header = _tar_info(name, size).tobuf(TAR_FORMAT, "utf-8", "surrogateescape")
    return len(header) + -(-size // BLOCK) * BLOCK


def _estimate(conversation: StoredConversation, split: str) -> Member:
    """The sample's bytes and duration from the recorded legs' lengths (exact while the
    records are), before anything is mixed."""
    samples = max(round(leg.duration_seconds * SAMPLE_RATE) for leg in conversation.legs)
    meta, rttm = _sample_texts(conversation, split, samples)
    key = sample_key(conversation.conversation_id)
    size = (_stored(f"{key}.json", len(meta)) + _stored(f"{key}.rttm", len(rttm))
            + _stored(f"{key}.wav", WAV_HEADER + SAMPLE_WIDTH * samples))  # fmt: skip
    fingerprint = _fingerprint(conversation, split)
    return Member(conversation.conversation_id, fingerprint, size, samples / SAMPLE_RATE)


def _manifest(shard: Shard, chosen: Chosen) -> bytes:
    """The shard's lines of a NeMo tarred manifest (NeMo ignores the keys it does not know)."""
    lines = []
    for member in shard.members:
        conversation, _ = chosen[member.conversation_id]
        key = sample_key(member.conversation_id)
        entry = fmt.nemo_entry(
            member.duration, turns_of(conversation, member.duration), measures_of(conversation),
            sorted(conversation.flags), audio=f"{key}.wav", rttm=f"{key}.rttm",
        )  # fmt: skip
        entry.update(shard_id=shard.number, conversation_id=member.conversation_id)
        lines.append(json.dumps(entry) + "\n")
    return "".join(lines).encode()


class _ShardExport:
    def __init__(self, output: str, settings: Settings, progress: bool) -> None:
        self.output, self.settings, self.progress = output, settings, progress
        self.place = place_at(output, settings)
        self.summary = ShardSummary()
        self.chosen: Chosen = {}
        self.bounds = ShardBounds()

    def _split_place(self, split: str) -> Place:
        if is_bucket_url(self.output):
            return place_at(f"{self.output.rstrip('/')}/{FOLDER}/{split}", self.settings)
        return place_at(Path(self.output) / FOLDER / split, self.settings)

    def _present(self) -> dict[str, int]:
        """Shard files there now: "<split>/shard-NNNNNN.tar" (or .jsonl) -> bytes. In a folder
        (locked), what an interrupted export left half-written goes first."""
        found = {}
        for split in SPLITS:
            place = self._split_place(split)
            if not is_bucket_url(self.output):
                for left in Path(place.url).glob(f"{_TEMPORARY}*"):
                    left.unlink(missing_ok=True)
            entries = place.entries()  # a bucket that is not there: StorageError (objects.py)
            found.update({f"{split}/{e.name}": e.size for e in entries if _FILE.match(e.name)})
        return found

    def _temporary(self, split: str, name: str) -> Path:
        """A new local file's path: in a folder, beside the shards (a rename puts it in place;
        the next export removes one an interruption left), else in the settings' local store."""
        if is_bucket_url(self.output):
            work = Path(self.settings.audio_storage_dir)
        else:
            work = Path(self.output) / FOLDER / split
        work.mkdir(parents=True, exist_ok=True)
        return work / f"{_TEMPORARY}{name}.{os.getpid()}.{os.urandom(8).hex()}"

    def run(
        self,
        conversations: Iterable[StoredConversation],
        split: tuple[float, float, float],
        include_flagged: bool,
        bounds: ShardBounds | None,
    ) -> ShardSummary:
        index_data = self.place.read_bytes(INDEX)
        previous, recorded = read_index(index_data)
        self.bounds = bounds = bounds or recorded or ShardBounds()
        wanted: dict[str, list[Member]] = {name: [] for name in SPLITS}
        for conversation, which in selected(conversations, split, include_flagged, self.summary):
            self.chosen[conversation.conversation_id] = (conversation, which)
            wanted[which].append(_estimate(conversation, which))
        planned = [
            shard
            for name in SPLITS
            for shard in plan_split(
                name, [s for s in previous if s.split == name], wanted[name], bounds
            )
        ]
        present = self._present()
        intact = {
            s.contents: s for s in previous if s.complete and present.get(f"{s.name}.tar") == s.size
        }
        sources = [intact.get(shard.contents) for shard in planned]
        names = {shard.name for shard in planned}
        leaving = ({s.name for s in previous} | {n.rsplit(".", 1)[0] for n in present}) - names
        changing = {
            shard.name
            for shard, source in zip(planned, sources, strict=True)
            if source is None or source.name != shard.name
        }
        touched = (changing | leaving) & {s.name for s in previous}
        if touched:  # an interrupted export leaves them to be written again, not trusted
            self.place.write_bytes(INDEX, index_bytes(marked_incomplete(previous, touched), bounds))
        final = self._write(planned, sources, present)
        for name in sorted(leaving):
            tar_there = self.place.delete(f"{FOLDER}/{name}.tar")
            manifest_there = self.place.delete(f"{FOLDER}/{name}.jsonl")
            self.summary.shards_deleted += tar_there or manifest_there
        written = index_bytes(final, bounds)
        if written != index_data:
            self.place.write_bytes(INDEX, written)
        return self._summed(final, previous)

    def _write(
        self, planned: list[Shard], sources: list[Shard | None], present: dict[str, int]
    ) -> list[Shard]:
        to_build = sum(
            len(s.members) for s, source in zip(planned, sources, strict=True) if source is None
        )
        final = []
        with tqdm(total=to_build, desc="sharding", unit="conv", disable=not self.progress) as bar:
            for shard, source in zip(planned, sources, strict=True):
                if source is None:
                    done = self._build(shard, bar)
                    self.summary.shards_written += 1
                    self.summary.written += len(done.members)
                elif source.name != shard.name:
                    done = self._renumber(source, shard.number)
                    self.summary.shards_renumbered += 1
                else:
                    done = source
                    self.summary.shards_unchanged += 1
                if done is not source or f"{done.name}.jsonl" not in present:
                    self.place.write_bytes(
                        f"{FOLDER}/{done.name}.jsonl", _manifest(done, self.chosen)
                    )
                final.append(done)
        return final

    def _build(self, shard: Shard, bar: tqdm[Any]) -> Shard:
        temporary = self._temporary(shard.split, f"shard-{shard.number:06d}.tar")
        members = []
        try:
            with open(temporary, "xb") as handle:
                with tarfile.open(
                    fileobj=handle, mode="w", format=TAR_FORMAT, encoding="utf-8"
                ) as tar:
                    for planned in shard.members:
                        conversation, which = self.chosen[planned.conversation_id]
                        members.append(self._add(tar, conversation, which))
                        bar.update()
                handle.flush()
                os.fsync(handle.fileno())
            size = temporary.stat().st_size
            self.place.put_file(temporary, f"{FOLDER}/{shard.name}.tar")
        finally:
            temporary.unlink(missing_ok=True)
        most = self.bounds.max_bytes
        if most is not None and size > most and len(members) > 1:  # a record's length was wrong
            log.warning("shard %s came to %d bytes, over its bound", shard.name, size)
        return replace(shard, members=tuple(members), size=size, complete=True)

    def _add(self, tar: tarfile.TarFile, conversation: StoredConversation, which: str) -> Member:
        """One conversation into the tar: its legs mixed into a temporary WAV, then its
        members; returns what it holds, measured."""
        cid = conversation.conversation_id
        key = sample_key(cid)
        mix = self._temporary(which, f"{key}.wav")
        first, second = conversation.legs
        try:
            with (
                local_copy(first.filepath, self.settings) as first_path,
                local_copy(second.filepath, self.settings) as second_path,
            ):
                samples = fmt.write_mix(first_path, second_path, mix)
            meta, rttm = _sample_texts(conversation, which, samples)
            size = 0
            for name, data in ((f"{key}.json", meta), (f"{key}.rttm", rttm)):
                tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
                size += _stored(name, len(data))
            audio_size = mix.stat().st_size
            with open(mix, "rb") as audio:
                tar.addfile(_tar_info(f"{key}.wav", audio_size), audio)
            size += _stored(f"{key}.wav", audio_size)
        finally:
            mix.unlink(missing_ok=True)
        return Member(cid, _fingerprint(conversation, which), size, samples / SAMPLE_RATE)

    def _renumber(self, source: Shard, number: int) -> Shard:
        """The same tar under the number of a shard that emptied (its manifest follows)."""
        moved = replace(source, number=number, complete=True)
        temporary = self._temporary(moved.split, f"shard-{number:06d}.tar")
        try:
            self.place.download(f"{FOLDER}/{source.name}.tar", temporary)
            self.place.put_file(temporary, f"{FOLDER}/{moved.name}.tar")
        finally:
            temporary.unlink(missing_ok=True)
        return moved

    def _summed(self, final: list[Shard], previous: list[Shard]) -> ShardSummary:
        summary = self.summary
        summary.exported = len(self.chosen)
        summary.unchanged = summary.exported - summary.written
        summary.shards = len(final)
        before = {m.conversation_id for shard in previous for m in shard.members}
        summary.removed_ids = sorted(before - set(self.chosen))
        summary.removed = len(summary.removed_ids)
        for shard in final:
            for member in shard.members:
                conversation, which = self.chosen[member.conversation_id]
                summary.hours[which] += member.duration / 3600
                turns = turns_of(conversation, member.duration)
                summary.speech_hours += sum(t.end - t.start for t in turns) / 3600
        return summary
