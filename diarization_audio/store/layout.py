"""The storage's layout: stored file names, the listing of stored WAVs, temporary names.

A stored file is `{conversation_id}_{speaker_label}.wav`. Work in progress lives beside it under
dot-names that carry the writing process's id (`.<stem>.<pid>.<hex>.download|.wav`), so a
listing never shows it and a restarted service can tell an abandoned leftover from a live
sibling worker's file.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

from diarization_audio.objects import Place
from diarization_audio.processes import running

log = logging.getLogger(__name__)

_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{32}\.(?:download|wav|wav\.upload)$")


def stored_name(conversation_id: str, speaker_label: str) -> str:
    """The stored file's name: `{conversation_id}_{speaker_label}.wav`."""
    return f"{conversation_id}_{speaker_label}.wav"


def wav_files(place: Place) -> dict[str, int]:
    """Name -> size of the stored .wav files (work in progress starts with a dot: not listed)."""
    return {entry.name: entry.size for entry in place.entries() if entry.name.endswith(".wav")}


def remove_stored(place: Place, conversation_id: str, speaker_labels: list[str]) -> int:
    """Delete the conversation's stored files of these speakers; returns how many were there.

    A file already gone counts as removed; any other failure is a StorageError, with nothing
    after it deleted. A folder is synced, so the deletions survive a power cut.
    """
    return sum(place.delete(stored_name(conversation_id, label)) for label in speaker_labels)


def temporary_stem(conversation_id: str, speaker_label: str) -> str:
    """A fresh dot-name for one job's files; add `.download` or `.wav`."""
    return f".{conversation_id}_{speaker_label}.{os.getpid()}.{uuid.uuid4().hex}"


def remove_leftovers(directory: Path, place: Place) -> int:
    """Delete temporary files of processes that are gone, and abort the bucket uploads they
    noted (`.upload`); returns how many files."""
    removed = 0
    for path in directory.iterdir():
        match = _TEMP_RE.match(path.name)
        if match and _left_over(int(match.group(1))):
            if path.name.endswith(".upload"):
                place.abandon_recorded(path)
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d leftover temporary file(s) from %s", removed, directory)
    return removed


def _left_over(pid: int) -> bool:
    """A temporary file's writer has ended (this process's own, from before it started work,
    count as left over too)."""
    return pid == os.getpid() or not running(pid)
