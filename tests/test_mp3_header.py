"""An MP3 converted while it downloads (ffmpeg reading a pipe) gives the same WAV, byte for byte,
as the same MP3 converted from the complete file: its exact length comes from its LAME tag."""

from __future__ import annotations

import asyncio
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.audio_factory import ffmpeg_exe

from diarization_audio.ingest.ffmpeg import run_ffmpeg
from diarization_audio.ingest.mp3_header import decoded_samples

# (name, sample rate, channels, bit rate, extra encoder options): MPEG-1, MPEG-2 and MPEG-2.5
# layer III, mono and stereo, with and without an ID3v2 tag in front.
KINDS = [
    ("mpeg1-mono", 44100, 1, "64k", []),
    ("mpeg1-stereo-id3", 48000, 2, "128k", ["-id3v2_version", "3", "-metadata", "title=call"]),
    ("mpeg2-mono", 22050, 1, "32k", []),
    ("mpeg25-mono-id3", 8000, 1, "16k", ["-id3v2_version", "4", "-metadata", "artist=agent"]),
]


def _encode(path: Path, rate: int, channels: int, bitrate: str, extra: list[str]) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "sine=frequency=310:duration=6.37",
         "-ar", str(rate), "-ac", str(channels), "-c:a", "libmp3lame", "-b:a", bitrate,
         *extra, str(path)],
        check=True,
    )  # fmt: skip


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(4096):
            yield chunk
            await asyncio.sleep(0)


def _convert(source: Path, targets: list[Path], piped: bool, samples: int | None) -> None:
    feed = _chunks(source) if piped else None
    asyncio.run(run_ffmpeg(ffmpeg_exe(), source, targets, 60, 60, feed=feed, samples=samples))


@pytest.mark.parametrize(("name", "rate", "channels", "bitrate", "extra"), KINDS)
def test_a_streamed_mp3_converts_to_the_same_wav_as_the_file(
    tmp_path: Path, name: str, rate: int, channels: int, bitrate: str, extra: list[str]
) -> None:
    source = tmp_path / f"{name}.mp3"
    _encode(source, rate, channels, bitrate, extra)
    samples = decoded_samples(source.read_bytes()[:65536])
    assert samples is not None

    # The tag's length is what ffmpeg decodes from the complete file, at the source's rate.
    raw = tmp_path / "decoded.raw"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", f"file:{source}",
         "-f", "s16le", "-c:a", "pcm_s16le", str(raw)],
        check=True,
    )  # fmt: skip
    assert raw.stat().st_size == samples * channels * 2

    from_file, from_pipe, uncut = (tmp_path / f"{kind}.wav" for kind in ("file", "pipe", "uncut"))
    _convert(source, [from_file], piped=False, samples=None)
    _convert(source, [from_pipe], piped=True, samples=samples)
    _convert(source, [uncut], piped=True, samples=None)
    assert from_pipe.read_bytes() == from_file.read_bytes()
    # Without the cut, the pipe keeps the encoder's padding: the case this guards against.
    with wave.open(str(uncut)) as longer, wave.open(str(from_file)) as exact:
        assert longer.getnframes() > exact.getnframes()

    if channels == 2:  # a stereo call split into its two legs, both cut alike
        legs_file = [tmp_path / "left_file.wav", tmp_path / "right_file.wav"]
        legs_pipe = [tmp_path / "left_pipe.wav", tmp_path / "right_pipe.wav"]
        _convert(source, legs_file, piped=False, samples=None)
        _convert(source, legs_pipe, piped=True, samples=samples)
        for file_leg, pipe_leg in zip(legs_file, legs_pipe, strict=True):
            assert pipe_leg.read_bytes() == file_leg.read_bytes()


def test_heads_without_an_exact_length_give_none(tmp_path: Path) -> None:
    """No cut for what is not an MP3 with a frame count and LAME delays, or is cut short."""
    plain = tmp_path / "plain.mp3"
    _encode(plain, 44100, 1, "64k", ["-write_xing", "0"])
    tagged = tmp_path / "tagged.mp3"
    _encode(tagged, 44100, 1, "64k", [])
    wav = tmp_path / "tone.wav"
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "sine=duration=1", str(wav)],
        check=True,
    )  # fmt: skip
    head = tagged.read_bytes()[:65536]
    assert decoded_samples(head) is not None
    assert decoded_samples(plain.read_bytes()[:65536]) is None  # no Xing/Info frame
    assert decoded_samples(wav.read_bytes()[:65536]) is None
    assert decoded_samples(b"") is None
    assert decoded_samples(b"ID3\x04\x00") is None  # a tag header cut short
    assert decoded_samples(head[:40]) is None  # the tag cut short
