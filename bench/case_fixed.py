"""Case 6: the fixed cost of one short file, posted with curl, against bare ffmpeg on it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.harness import Context, Row, bare_ffmpeg, ffmpeg_exe, median, ms, service, timed

CASE6 = "6 fixed cost per file"
TARGET_SECONDS = 0.015
SAMPLES = {"full": 40, "smoke": 3}


def _one_second_wav(media: Path) -> Path:
    path = media / "one_second.wav"
    if not path.exists():
        subprocess.run(
            [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", "sine=frequency=440:duration=1", "-ar", "44100", "-ac", "2", str(path)],
            check=True,
        )  # fmt: skip
    return path


def _pairs(
    ctx: Context, source: Path, base: Path, samples: int, label_speech: bool
) -> tuple[list[float], list[float]]:
    """`samples` posts of `source` with curl, each followed by bare ffmpeg on it."""
    url = ctx.source_url(source.name)
    posted: list[float] = []
    bare: list[float] = []
    with service(base / "service", label_speech=label_speech) as server:

        def curl(cid: str) -> None:
            subprocess.run(
                ["curl", "--silent", "--fail", "--output", "/dev/null", "-X", "POST",
                 f"{server.base_url}/download/single", "-F", f"conversation_id={cid}",
                 "-F", f"audio_url={url}"],
                check=True,
            )  # fmt: skip

        for n in range(3):  # warm both: page cache, connection pool, imports
            curl(f"warm{n}")
            bare_ffmpeg(source, base / "bare.wav")
        for n in range(samples):
            posted.append(timed(lambda n=n: curl(f"fixed{n}")))  # type: ignore[misc]
            bare.append(timed(lambda: bare_ffmpeg(source, base / "bare.wav")))
    return posted, bare


def run(ctx: Context) -> list[Row]:
    """`curl -F ... /download/single` of a 1-second stereo WAV, interleaved with bare ffmpeg;
    then again with speech labelling off, to show its share."""
    source = _one_second_wav(ctx.media)
    base = ctx.work / "case6"
    samples = SAMPLES[ctx.scale.name]
    shutil.rmtree(base, ignore_errors=True)
    posted, bare = _pairs(ctx, source, base / "labelling", samples, label_speech=True)
    unlabelled, bare_too = _pairs(ctx, source, base / "no-labelling", samples, label_speech=False)
    shutil.rmtree(base, ignore_errors=True)
    extra = median([p - b for p, b in zip(posted, bare, strict=True)])
    without = median([p - b for p, b in zip(unlabelled, bare_too, strict=True)])
    return [
        Row(CASE6, f"1 s WAV posted with curl (median of {samples})", ms(median(posted))),
        Row(CASE6, "bare ffmpeg on the same file, interleaved", ms(median(bare))),
        Row(CASE6, "fixed cost per file: service minus bare (median of the pairs)", ms(extra),
            f"<= {ms(TARGET_SECONDS)}", extra <= TARGET_SECONDS),
        Row(CASE6, "the same with LABEL_SPEECH=false (labels follow the answer either way)",
            ms(without)),
    ]  # fmt: skip
