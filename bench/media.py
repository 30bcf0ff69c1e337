"""The benchmark's audio, made at bench time with ffmpeg and kept in bench/.work: tones, and
long MP3s made quickly (the tests make theirs with these functions too)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.harness import Scale, ffmpeg_exe

SPEAKERS = ("agent", "customer")
# Generous ceilings so a wedged ffmpeg fails instead of hanging the whole run.
SHORT_TIMEOUT_SECONDS = 120.0


class FFmpegError(RuntimeError):
    """ffmpeg exited non-zero, or reported errors while decoding."""


def run_ffmpeg(args: Sequence[str], timeout: float) -> None:
    """ffmpeg with `args`, quietly; FFmpegError with what it said if it fails."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise FFmpegError(f"ffmpeg exited {proc.returncode}: {proc.stderr.strip()}")


def tone_source(
    seconds: float,
    sample_rate: int,
    channels: int,
    frequency: float,
    turns: float | None = None,
    first_turn: int = 0,
) -> str:
    """The lavfi source of a sine tone, channel n at `frequency * 1.5**n`."""

    # One expression per channel at a different pitch, so a wrong downmix or a dropped channel
    # is visible in the output rather than hidden by identical channels. With `turns`, channel
    # n sounds only in every other stretch of `turns` seconds, starting with the n-th: two
    # speakers taking turns (a mono file of the second speaker: `first_turn` 1).
    def gate(channel: int) -> str:
        if turns is None:
            return ""
        turn = channel + first_turn
        return f"*eq(mod(floor(t/{turns!r})+{turn}\\,2)\\,0)"  # commas escaped for lavfi

    exprs = "|".join(f"0.5*sin(2*PI*{frequency * 1.5**n!r}*t){gate(n)}" for n in range(channels))
    return f"aevalsrc=exprs={exprs}:s={sample_rate}:d={float(seconds)!r}"


def encode_tone(
    path: Path,
    muxer: str,
    codec_args: Sequence[str],
    seconds: float,
    sample_rate: int,
    channels: int,
    frequency: float,
    timeout: float,
    turns: float | None = None,
    first_turn: int = 0,
) -> Path:
    """`seconds` of tone_source's tone written to `path` by `muxer` with `codec_args`."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if channels < 1 or sample_rate < 1:
        raise ValueError(f"bad layout: {channels} channels at {sample_rate} Hz")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = tone_source(seconds, sample_rate, channels, frequency, turns, first_turn)
    # The muxer is named explicitly so the caller's file name never decides the container.
    run_ffmpeg(["-f", "lavfi", "-i", source, *codec_args, "-f", muxer, str(path)], timeout)
    return path


def make_long_mp3(
    path: Path,
    minutes: float,
    sample_rate: int = 44100,
    channels: int = 2,
    frequency: float = 440.0,
    bitrate: str = "128k",
    segment_seconds: float = 60.0,
) -> Path:
    """Write a CBR MP3 of `minutes` minutes quickly; return path.

    Encodes one `segment_seconds` segment and stream-copies it in a loop up to the full length
    (cut on a frame boundary, so the duration is exact to ~26 ms, with a proper Xing header).
    The audio repeats every segment and has a ~50 ms encoder gap at each seam: fine for
    conversion benchmarks, not for listening. Measured on a 2-vCPU machine: 60 minutes of
    44.1 kHz stereo at 128 kbit/s (57.6 MB) in ~1.1 s, against ~15 s for encoding it whole.
    """
    total = minutes * 60.0
    codec_args = ("-c:a", "libmp3lame", "-b:a", bitrate)
    timeout = SHORT_TIMEOUT_SECONDS + total / 10
    if total <= segment_seconds:
        return encode_tone(
            path, "mp3", codec_args, total, sample_rate, channels, frequency, timeout
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".segment-", suffix=".mp3", dir=path.parent)
    os.close(fd)
    segment = Path(name)
    try:
        # No Xing/LAME or ID3 header in the segment: repeated, they would sit mid-stream.
        seg_args = (*codec_args, "-write_xing", "0", "-id3v2_version", "0")
        encode_tone(
            segment, "mp3", seg_args, segment_seconds, sample_rate, channels, frequency, timeout
        )
        loops = math.ceil(total / segment_seconds)  # one spare play; -t stops reading early
        run_ffmpeg(
            [
                "-stream_loop", str(loops), "-i", str(segment),
                "-map", "0:a", "-c", "copy", "-t", repr(total), "-f", "mp3", str(path),
            ],
            timeout,
        )  # fmt: skip
    finally:
        segment.unlink(missing_ok=True)
    return path


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
