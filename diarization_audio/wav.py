"""The stored audio's format (16 kHz mono 16-bit PCM WAV) and the one place WAV files are read,
written and hashed.

ffmpeg converts every download to this format (ingest/ffmpeg.py); the labeller reads the
samples back (labels/analysis.py), the dataset export mixes and writes them (dataset/formats.py),
and the single-download check compares what it finds against it (cli/check.py). Only the
standard library is imported, so that check loads nothing of the server.
"""

from __future__ import annotations

import hashlib
import struct
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from diarization_audio.errors import NotAudio

SAMPLE_RATE = 16000
CHANNELS = 1
SAMPLE_WIDTH = 2  # bytes: signed 16-bit little-endian (s16le)
HASH_CHUNK_BYTES = 1024 * 1024

Segment = tuple[float, float]  # (start, end) of a stretch of speech, in seconds from the start

_PCM_TAGS = (1, 0xFFFE)  # WAVE_FORMAT_PCM, WAVE_FORMAT_EXTENSIBLE
_OPEN_SIZES = (0, 0xFFFFFFFF)  # a data chunk size a streaming writer leaves open


@dataclass(frozen=True)
class WavInfo:
    duration_seconds: float
    sample_rate: int
    channels: int
    sample_width: int
    frames: int


def read_wav_info(path: Path) -> WavInfo:
    """Duration and format read back from the written WAV header."""
    try:
        with wave.open(str(path), "rb") as wav:
            frames, rate = wav.getnframes(), wav.getframerate()
            return WavInfo(frames / rate, rate, wav.getnchannels(), wav.getsampwidth(), frames)
    except (wave.Error, EOFError) as exc:
        raise NotAudio(f"converted file is not a readable WAV: {exc}") from exc


def _data_chunk_size(handle: IO[bytes], name: str) -> int | None:
    """Checks the header is 16 kHz mono 16-bit PCM and leaves `handle` at the samples.

    Returns the data chunk's size, or None when the header leaves it open (a streamed WAV).
    RF64 and WAVE_FORMAT_EXTENSIBLE headers are read too, which the `wave` module refuses.
    """
    riff = handle.read(12)
    if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RF64") or riff[8:12] != b"WAVE":
        raise NotAudio(f"{name} is not a WAV file")
    layout = None
    while len(header := handle.read(8)) == 8:
        chunk, size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk == b"fmt ":
            body = handle.read(size + (size & 1))
            tag, channels, rate = struct.unpack("<HHI", body[:8])
            layout = (tag in _PCM_TAGS, channels, rate, struct.unpack("<H", body[14:16])[0])
        elif chunk == b"data":
            if layout != (True, CHANNELS, SAMPLE_RATE, 8 * SAMPLE_WIDTH):
                raise NotAudio(f"{name} is not 16 kHz mono 16-bit PCM (format {layout})")
            return None if size in _OPEN_SIZES else size
        else:
            handle.seek(size + (size & 1), 1)
    raise NotAudio(f"{name} has no data chunk")


def pcm_chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    """The samples of a 16 kHz mono s16le WAV, `chunk_bytes` at a time; NotAudio for another
    format."""
    with open(path, "rb") as handle:
        left = _data_chunk_size(handle, Path(path).name)
        while left is None or left > 0:
            data = handle.read(chunk_bytes if left is None else min(chunk_bytes, left))
            if not data:
                break
            yield data
            if left is not None:
                left -= len(data)


@contextmanager
def wav_writer(target: Path | str | IO[bytes]) -> Iterator[wave.Wave_write]:
    """A new 16 kHz mono 16-bit WAV at `target` (a path or a file open for writing): write the
    samples with `writeframes`."""
    with wave.open(target if not isinstance(target, Path) else str(target), "wb") as out:
        out.setnchannels(CHANNELS)
        out.setsampwidth(SAMPLE_WIDTH)
        out.setframerate(SAMPLE_RATE)
        yield out


def sha256_of(path: Path) -> str:
    """The SHA-256 of a whole file, read a chunk at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
