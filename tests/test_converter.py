"""converter.run_ffmpeg gives, byte for byte, what plain ffmpeg gives with the same output
options: the way it runs ffmpeg (decoded audio regrouped into bigger frames, a session of its
own, lower priority) changes how fast, never what is stored."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from support.audio_factory import FFMPEG_BUILDS, FORMATS, ffmpeg_build, ffmpeg_exe

from diarization_audio.ingest.ffmpeg import FRAME_SAMPLES, run_ffmpeg

OUTPUT = [
    "-vn", "-sn", "-dn", "-map_metadata", "-1", "-ar", "16000", "-c:a", "pcm_s16le",
    "-fflags", "+bitexact", "-flags:a", "+bitexact", "-f", "wav",
]  # fmt: skip


def _plain(source: Path, *graph: str, binary: str | None = None) -> None:
    subprocess.run(
        [binary or ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y",
         "-i", f"file:{source}", *graph],
        check=True,
    )  # fmt: skip


@pytest.mark.parametrize("build", FFMPEG_BUILDS)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_converts_to_the_bytes_plain_ffmpeg_gives(
    corpus_dir: Path, tmp_path: Path, fmt: str, build: str
) -> None:
    """With the ffmpeg the service prefers and with the bundled one it falls back on."""
    binary = ffmpeg_build(build)
    source = corpus_dir / f"{fmt}{FORMATS[fmt]}"
    service, plain = tmp_path / "service.wav", tmp_path / "plain.wav"
    asyncio.run(run_ffmpeg(binary, source, service, 60, 60, niceness=10))
    _plain(source, "-map", "0:a:0", "-ac", "1", *OUTPUT, f"file:{plain}", binary=binary)
    assert service.stat().st_size > 44 + 2 * FRAME_SAMPLES  # longer than one regrouped frame
    assert service.read_bytes() == plain.read_bytes()


def test_a_stereo_call_splits_into_the_legs_plain_ffmpeg_gives(
    corpus_dir: Path, tmp_path: Path
) -> None:
    source = corpus_dir / f"flac{FORMATS['flac']}"
    legs = [tmp_path / "left.wav", tmp_path / "right.wav"]
    asyncio.run(run_ffmpeg(ffmpeg_exe(), source, legs, 60, 60))
    for channel, leg in enumerate(legs):
        plain = tmp_path / f"plain{channel}.wav"
        _plain(source, "-map", "0:a:0", "-af", f"pan=mono|c0=c{channel}", *OUTPUT, f"file:{plain}")
        assert leg.read_bytes() == plain.read_bytes()
