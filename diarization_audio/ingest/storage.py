"""The storage as a job sees it: free space, what is already stored, the job's temporary
names, and publishing converted files into place (a folder or a bucket) with their records.

Jobs write in the storage directory (AUDIO_STORAGE_DIR) under temporary names; the finished WAVs
go to `objects.audio_place`: that directory, or the bucket of AUDIO_STORAGE_URL. Every temporary
name starts with a dot and carries the writer's pid, so a restarted server can tell an abandoned
leftover from another worker's file in progress.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diarization_audio.errors import (
    AudioError,
    AudioTooLong,
    IdenticalChannels,
    InsufficientStorage,
    NotAudio,
    NotStereo,
    StorageError,
    UrlConflict,
)
from diarization_audio.objects import Following, audio_place
from diarization_audio.progress import MB
from diarization_audio.settings import Settings
from diarization_audio.store.layout import remove_leftovers, stored_name, temporary_stem
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.tracker import MetadataTracker
from diarization_audio.url_secrets import scrub, shown, source_sha256
from diarization_audio.wav import HASH_CHUNK_BYTES, pcm_chunks, read_wav_info, sha256_of

log = logging.getLogger(__name__)


class Storage:
    """The storage directory and the store's record of it, for the downloader's jobs."""

    def __init__(self, settings: Settings, tracker: MetadataTracker) -> None:
        self.settings = settings
        self.tracker = tracker
        self.directory = Path(settings.audio_storage_dir)  # work in progress
        self.place = audio_place(settings)  # finished files

    def prepare(self) -> int:
        """Create the directory and remove leftovers of dead processes; returns their count."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return remove_leftovers(self.directory, self.place)

    def check_free_space(self, incoming_bytes: int) -> None:
        """Refuse a job that would leave less than MIN_FREE_DISK_MB on the storage disk."""
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError as exc:
            raise storage_error(exc, self.directory, "cannot inspect") from exc
        # The download and its WAV can both be on disk at once; the WAV is usually larger.
        needed = self.settings.min_free_disk_bytes + 2 * incoming_bytes
        if free < needed:
            raise InsufficientStorage(
                f"{free / MB:.0f} MB free on the storage disk; this job needs "
                f"{incoming_bytes / MB:.0f} MB plus MIN_FREE_DISK_MB="
                f"{self.settings.min_free_disk_mb:g} kept free",
                log_detail=f"storage directory {self.directory}",
            )

    def existing(
        self, conversation_id: str, speaker_label: str, url: str, overwrite: bool
    ) -> StoredFile | None:
        """The stored record when this exact file is already collected and still on disk."""
        if overwrite:
            return None
        record = self.tracker.get_file(conversation_id, speaker_label)
        if record is None:
            return None
        name = stored_name(conversation_id, speaker_label)
        if self.place.size(name) != record.file_size_bytes:
            log.warning(
                "stored file %s is missing or changed; downloading it again",
                self.place.location(name),
            )
            return None
        if (record.source_sha256 or source_sha256(record.url)) != source_sha256(url):
            elsewhere = (
                "another URL at the same address (a different query string)"
                if shown(record.url) == shown(url)
                else shown(record.url)
            )
            raise UrlConflict(
                f"{name} is already stored from {elsewhere}, not {shown(url)}; send "
                "overwrite=true to replace it"
            )
        return record

    def temporaries(self, conversation_id: str, labels: Sequence[str]) -> tuple[Path, list[Path]]:
        """Where a job writes its download and its converted file for each label."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file may now stand where the directory was
            raise storage_error(exc, self.directory) from exc
        source = self.directory / f"{temporary_stem(conversation_id, labels[0])}.download"
        converted = [
            self.directory / f"{temporary_stem(conversation_id, label)}.wav" for label in labels
        ]
        return source, converted

    def follow(
        self, conversation_id: str, labels: Sequence[str], converted: Sequence[Path]
    ) -> list[Following]:
        """Start sending each converted file to its place while it is written (a bucket: a
        multipart upload overlapping the conversion; a folder: nothing until it is complete)."""
        return [
            self.place.follow(path, stored_name(conversation_id, label))
            for label, path in zip(labels, converted, strict=True)
        ]

    def publish(
        self,
        conversation_id: str,
        labels: Sequence[str],
        source: Path,
        converted: Sequence[Path],
        url: str,
        agent_id: str | None,
        allow_erased: bool,
        following: Sequence[Following],
    ) -> list[StoredFile]:
        """Read the converted files back, then publish and record each with its transaction.

        `following` are the uploads that followed the conversion (`follow`). An erase that
        committed meanwhile refuses it with Erased (the converted files stay where they are,
        for the caller to remove; the caller abandons `following`).
        """
        source.unlink(missing_ok=True)  # a large file can take a while to free: not in the loop
        names = [stored_name(conversation_id, label) for label in labels]
        records = [self._describe(c, n, url) for c, n in zip(converted, names, strict=True)]
        if len(converted) == 2 and any(all_zero(path) for path in converted):
            raise NotStereo(
                f"{url} has one channel (or one that is silent throughout), not two speakers; "
                "post it to /download/single"
            )
        if len(converted) == 2 and same_audio(converted[0], converted[1]):
            raise IdenticalChannels(
                f"the two channels of {url} hold the same audio (a mono recording saved as "
                "stereo); they cannot be labelled as two speakers, so nothing was stored"
            )
        for label, record, name, upload in zip(labels, records, names, following, strict=True):
            self._publish_one(conversation_id, label, record, name, upload, agent_id,
                              allow_erased)  # fmt: skip
        return records

    def _publish_one(
        self,
        conversation_id: str,
        label: str,
        record: StoredFile,
        name: str,
        upload: Following,
        agent_id: str | None,
        allow_erased: bool,
    ) -> None:
        """Make the file ready under its name (a bucket: its last parts uploaded), then show it
        in the transaction that records it. A record that fails to commit after the file showed
        takes the file away again: no file is left that the store does not know."""
        pending = upload.finish()
        shown_now = False

        def publish() -> None:
            nonlocal shown_now
            pending.publish()
            shown_now = True

        try:
            self.tracker.record_file(
                conversation_id, label, record, publish, agent_id, allow_erased=allow_erased
            )
        except BaseException:
            if shown_now:
                self.place.delete(name)
            else:
                pending.abandon()
            raise

    def _describe(self, converted: Path, name: str, url: str) -> StoredFile:
        info = read_wav_info(converted)
        if info.duration_seconds <= 0:
            raise NotAudio("it decoded to no audio at all")
        limit = self.settings.max_audio_hours * 3600
        if info.duration_seconds > limit:
            raise AudioTooLong(
                f"{url} is longer than MAX_AUDIO_HOURS={self.settings.max_audio_hours:g}"
            )
        return StoredFile(
            filepath=self.place.location(name),
            url=url if self.settings.store_url_query else shown(url),
            source_sha256=source_sha256(url),
            file_size_bytes=converted.stat().st_size,
            duration_seconds=info.duration_seconds,
            sample_rate=info.sample_rate,
            channels=info.channels,
            sha256=sha256_of(converted),
            downloaded_at=self.tracker.now(),
        )

    def record_failure(
        self, conversation_id: str, speaker_label: str, url: str, exc: AudioError
    ) -> None:
        """Keep a failed attempt in the store, so reports can say what fails and how often."""
        try:
            self.tracker.record_failure(conversation_id, speaker_label, shown(url), exc.code,
                                        scrub(exc.message))  # fmt: skip
        except AudioError as problem:  # the answer is the download's error, not this one
            log.error("cannot record the failure of %s: %s", shown(url), problem.message)


def same_audio(first: Path, second: Path, tolerance_db: float = 40.0) -> bool:
    """Whether two converted legs hold the same audio: their difference at least `tolerance_db`
    below the signal (a mono recording saved as two channels, even through a lossy codec)."""
    if read_wav_info(first).frames != read_wav_info(second).frames:
        return False
    difference = signal = 0.0
    chunks = (pcm_chunks(path, HASH_CHUNK_BYTES) for path in (first, second))
    for x, y in zip(*chunks, strict=True):
        left = np.frombuffer(x, dtype="<i2").astype(np.float64)
        right = np.frombuffer(y, dtype="<i2").astype(np.float64)
        difference += float(np.square(left - right).sum())
        signal += float(np.square(left).sum())
    if signal == 0.0:
        return difference == 0.0
    return difference <= signal * 10 ** (-tolerance_db / 10)


def all_zero(path: Path) -> bool:
    """Whether a converted leg holds nothing but digital silence (what ffmpeg writes for a
    channel the source does not have)."""
    return not any(data.strip(b"\x00") for data in pcm_chunks(path, HASH_CHUNK_BYTES))


def storage_error(exc: OSError, directory: Path, action: str = "cannot write in") -> AudioError:
    """The client hears what failed and why; only the log hears where (the path) and errno."""
    where = f"storage directory {directory}: {exc}"
    if exc.errno == 28:  # ENOSPC
        return InsufficientStorage("no space left in the storage directory", log_detail=where)
    reason = exc.strerror or "operating system error"
    return StorageError(f"{action} the storage directory: {reason}", log_detail=where)
