"""ffmpeg: finding it, running it (the only place it runs) and reading back what it wrote."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from errors import NotAudio, StorageError

TARGET_SAMPLE_RATE = 16000
TARGET_CHANNELS = 1
HASH_CHUNK_BYTES = 1024 * 1024
_FFMPEG_ERROR_CHARS = 400


@lru_cache(maxsize=8)
def resolve_ffmpeg(configured: str | None) -> str:
    """FFMPEG_BINARY if set, else `ffmpeg` on PATH, else the binary bundled by imageio-ffmpeg."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise StorageError(f"FFMPEG_BINARY {configured!r} is not an executable")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


@lru_cache(maxsize=8)
def ffmpeg_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "-hide_banner", "-version"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"
    first = out.splitlines()[0] if out else ""
    return first.split(" Copyright")[0].removeprefix("ffmpeg version ").strip() or "unknown"


async def run_ffmpeg(
    binary: str, source: Path, target: Path, max_seconds: float, timeout: float
) -> None:
    """Convert `source` to 16 kHz mono s16le WAV at `target`; the only place ffmpeg runs."""
    args = [
        binary, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-i", f"file:{source}",
        "-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1",
        "-ac", str(TARGET_CHANNELS), "-ar", str(TARGET_SAMPLE_RATE), "-c:a", "pcm_s16le",
        # One second past the limit is enough to tell "too long" from "exactly at the limit".
        "-t", f"{max_seconds + 1:.3f}",
        "-fflags", "+bitexact", "-flags:a", "+bitexact",
        "-f", "wav", f"file:{target}",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *_dying_with_parent(), *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so a timeout kills everything it spawned
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        # Timeout, cancellation (client gone, shutdown): never leave ffmpeg running.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        raise NotAudio(f"ffmpeg could not decode it: {_ffmpeg_reason(stderr, source)}")


def _ffmpeg_reason(stderr: bytes, source: Path) -> str:
    """ffmpeg's last complaint, without the internal temporary file name."""
    lines = [
        line.replace(f"file:{source}", "<download>").replace(str(source), "<download>")
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip()
    ]
    reason = lines[-1] if lines else "no details"
    return re.sub(r"^\[[^]]*\] ", "", reason)[-_FFMPEG_ERROR_CHARS:]


@lru_cache(maxsize=1)
def _dying_with_parent() -> tuple[str, ...]:
    """The command prefix that makes ffmpeg die if the server is killed outright.

    util-linux's setpriv sets the parent-death signal and then execs ffmpeg. Doing that in the
    child from Python (preexec_fn) would call into libc between fork and exec, which is unsafe
    in a threaded server, and forces a full fork of the server's memory for every file.
    Without setpriv, ffmpeg still ends with its input or its timeout.
    """
    setpriv = shutil.which("setpriv")
    return (setpriv, "--pdeathsig", "KILL", "--") if setpriv else ()


@dataclass(frozen=True)
class WavInfo:
    duration_seconds: float
    sample_rate: int
    channels: int
    sample_width: int


def read_wav_info(path: Path) -> WavInfo:
    """Duration and format read back from the written WAV header."""
    try:
        with wave.open(str(path), "rb") as wav:
            frames, rate = wav.getnframes(), wav.getframerate()
            return WavInfo(frames / rate, rate, wav.getnchannels(), wav.getsampwidth())
    except (wave.Error, EOFError) as exc:
        raise NotAudio(f"converted file is not a readable WAV: {exc}") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
