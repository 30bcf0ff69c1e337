"""ffmpeg encoding in the package (ingest/ffmpeg.encode), as the demo makes its recordings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from support.audio_factory import decoded_duration

from diarization_audio.cli.demo import ENCODINGS, PROMPT_RATE
from diarization_audio.errors import NotAudio
from diarization_audio.ingest.ffmpeg import encode, resolve_ffmpeg

SECONDS = 1.5


def pcm(tmp_path: Path) -> Path:
    """1.5 s of a 440 Hz tone as raw 16-bit mono PCM at the prompts' rate."""
    t = np.arange(round(SECONDS * PROMPT_RATE)) / PROMPT_RATE
    raw = tmp_path / "tone.raw"
    raw.write_bytes((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())
    return raw


@pytest.mark.parametrize("suffix", sorted(ENCODINGS))
def test_each_demo_format_is_encoded_to_the_full_length(tmp_path: Path, suffix: str) -> None:
    """Every format the demo serves comes out as decodable audio of the input's length."""
    muxer, codec, rate = ENCODINGS[suffix]
    target = tmp_path / f"tone{suffix}"
    asyncio.run(
        encode(resolve_ffmpeg(None), pcm(tmp_path), target,
               ["-f", "s16le", "-ar", str(PROMPT_RATE), "-ac", "1"],
               ["-ar", str(rate or 22050), *codec, "-f", muxer], timeout=60)
    )  # fmt: skip
    assert decoded_duration(target) == pytest.approx(SECONDS, abs=0.1)


def test_a_failed_encoding_is_not_audio_with_ffmpegs_reason(tmp_path: Path) -> None:
    """An output ffmpeg cannot write raises NotAudio carrying its complaint, not a crash."""
    target = tmp_path / "tone.bad"
    # ffmpeg 7 and later say "Error opening output", earlier ones "...: Invalid argument"
    refused = r"^ffmpeg could not encode it: .*(Error opening output|Invalid argument)"
    with pytest.raises(NotAudio, match=refused):
        asyncio.run(
            encode(resolve_ffmpeg(None), pcm(tmp_path), target, ["-f", "s16le"],
                   ["-f", "no-such-muxer"], timeout=60)
        )  # fmt: skip
    assert not target.exists()
