"""Real audio files of every supported format, made with ffmpeg at test time (the tones and
long MP3s come from the benchmark's bench/media.py, which makes its audio the same way)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.media import (
    SHORT_TIMEOUT_SECONDS,
    FFmpegError,
    encode_tone,
    run_ffmpeg,
)
from diarization_audio.cli.file_server import CONTENT_TYPES as SERVED_TYPES
from diarization_audio.ingest.ffmpeg import bundled_ffmpeg

_DECODE_RATE = 16000  # decode to 16 kHz mono s16le: 2 bytes per sample, easy to count


@dataclass(frozen=True)
class _Encoding:
    extension: str
    muxer: str
    codec_args: tuple[str, ...]
    # Set when the format only makes sense at one rate / layout (telephony codecs, Opus).
    sample_rate: int | None = None
    channels: int | None = None


_ENCODINGS: dict[str, _Encoding] = {
    "mp3": _Encoding(".mp3", "mp3", ("-c:a", "libmp3lame", "-b:a", "128k")),
    "wav": _Encoding(".wav", "wav", ("-c:a", "pcm_s16le")),
    "wav24": _Encoding(".wav", "wav", ("-c:a", "pcm_s24le")),
    "wav_mulaw": _Encoding(".wav", "wav", ("-c:a", "pcm_mulaw"), sample_rate=8000, channels=1),
    "wav_alaw": _Encoding(".wav", "wav", ("-c:a", "pcm_alaw"), sample_rate=8000, channels=1),
    "ogg": _Encoding(".ogg", "ogg", ("-c:a", "libvorbis", "-q:a", "4")),
    "opus": _Encoding(".opus", "opus", ("-c:a", "libopus", "-b:a", "64k"), sample_rate=48000),
    "flac": _Encoding(".flac", "flac", ("-c:a", "flac")),
    "aac": _Encoding(".aac", "adts", ("-c:a", "aac", "-b:a", "128k")),
    # The ipod muxer is what ffmpeg itself picks for .m4a; moov stays at the end (no faststart),
    # as many real-world files have it.
    "m4a": _Encoding(".m4a", "ipod", ("-c:a", "aac", "-b:a", "128k")),
}

#: fmt -> file suffix, dotted like ``Path.suffix`` (several fmts share ``.wav``).
FORMATS: dict[str, str] = {fmt: enc.extension for fmt, enc in _ENCODINGS.items()}

#: file suffix (dotted, lower case) -> MIME type a typical web server would send: the audio
#: types of the package's file server, which the source server builds on.
CONTENT_TYPES: dict[str, str] = {
    suffix: kind for suffix, kind in SERVED_TYPES.items() if kind.startswith("audio/")
}


def ffmpeg_exe() -> str:
    """The ffmpeg to use: $FFMPEG_BINARY, else ffmpeg on PATH, else the imageio-ffmpeg binary."""
    # Env and PATH are re-read every call so tests can monkeypatch them.
    configured = os.environ.get("FFMPEG_BINARY")
    if configured:
        return configured
    return shutil.which("ffmpeg") or bundled_ffmpeg()


#: The ffmpeg builds the service may run: the one it prefers (Debian's, which `make test`
#: installs) and the bundled one it falls back on; the same binary where nothing else is there.
FFMPEG_BUILDS = ("preferred", "bundled")


def ffmpeg_build(name: str) -> str:
    """The path of one of FFMPEG_BUILDS."""
    return ffmpeg_exe() if name == "preferred" else bundled_ffmpeg()


def make_audio(
    path: Path,
    fmt: str,
    seconds: float = 2.0,
    sample_rate: int = 44100,
    channels: int = 2,
    frequency: float = 440.0,
    turns: float | None = None,
    first_turn: int = 0,
) -> Path:
    """Write `seconds` of a sine tone to `path` in format `fmt` (a key of FORMATS); return path.

    Channel n carries `frequency * 1.5**n`; with `turns`, channels take turns of that many
    seconds (channel 0 first, or channel 1 with `first_turn=1`). `wav_mulaw`/`wav_alaw` are
    always 8 kHz mono and `opus` always 48 kHz, whatever `sample_rate`/`channels` say. A 2-second
    file takes ~50 ms.
    """
    try:
        enc = _ENCODINGS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}") from None
    return encode_tone(
        path,
        enc.muxer,
        enc.codec_args,
        seconds,
        enc.sample_rate or sample_rate,
        enc.channels or channels,
        frequency,
        SHORT_TIMEOUT_SECONDS + seconds,
        turns,
        first_turn,
    )


def encode_pcm(path: Path, fmt: str, pcm: bytes, rate: int, channels: int) -> Path:
    """Interleaved s16le `pcm` (`rate` Hz, `channels`) written to `path` in format `fmt`, at
    22.05 kHz where the format allows, as make_audio writes it."""
    enc = _ENCODINGS[fmt]
    layout = ["-ar", str(enc.sample_rate or 22050), "-ac", str(enc.channels or channels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".raw") as raw:
        raw.write(pcm)
        raw.flush()
        run_ffmpeg(
            ["-f", "s16le", "-ar", str(rate), "-ac", str(channels), "-i", raw.name, *layout,
             *enc.codec_args, "-f", enc.muxer, str(path)],
            SHORT_TIMEOUT_SECONDS + len(pcm) / (2 * rate * channels),
        )  # fmt: skip
    return path


def make_corpus(directory: Path, seconds: float = 2.0) -> dict[str, Path]:
    """Write one file per format into `directory` (named ``<fmt><ext>``); return fmt -> path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # ffmpeg runs in subprocesses, so threads give real parallelism here.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {
            fmt: pool.submit(make_audio, directory / f"{fmt}{ext}", fmt, seconds)
            for fmt, ext in FORMATS.items()
        }
        return {fmt: future.result() for fmt, future in futures.items()}


def decoded_duration(path: Path) -> float:
    """Decode `path` fully with ffmpeg and return its audio duration in seconds.

    Raises FFmpegError if ffmpeg exits non-zero or prints any error while decoding, so this
    doubles as a "does this file decode cleanly" check.
    """
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-i", str(path),
        "-map", "0:a:0", "-ac", "1", "-ar", str(_DECODE_RATE), "-f", "s16le", "-",
    ]  # fmt: skip
    decoded = 0
    # stderr goes to a file, not a pipe: a flood of decode errors must not deadlock the reader.
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        ) as proc:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 20):
                decoded += len(chunk)
        errors.seek(0)
        message = errors.read().decode(errors="replace").strip()
    if proc.returncode != 0 or message:
        raise FFmpegError(f"decoding {path} failed ({proc.returncode}): {message}")
    return decoded / 2 / _DECODE_RATE
