"""Case 7: speech labels per leg against known truth (DER per condition and detector), and
what labelling costs next to ffmpeg's conversion of a 60-minute MP3."""

from __future__ import annotations

import dataclasses
import resource
import shutil
import time
import wave
from pathlib import Path

from speech_calls import (
    CONDITIONS,
    EXTRA_CONDITIONS,
    LEGS,
    Call,
    Scorer,
    intersection,
    leg_files,
    make_call,
)

from bench.harness import Context, Row, bare_ffmpeg
from bench.media import long_file
from speech_activity import (
    DEFAULT_PARAMS,
    analyse_wav,
    label_legs,
    overlap_seconds,
    speech_seconds,
)

CASE7 = "7 speech labels"
CALLS = {"full": (8, 90.0), "smoke": (1, 25.0)}  # spoken calls, seconds each
DETECTORS = ("energy", "webrtc")
DER_TARGETS = {"clean": 0.05} | {c: 0.10 for c in CONDITIONS if c != "clean"}
COST_TARGET = 1.0  # CPU seconds per hour of one leg
CONDITION_NAMES = {
    "clean": "clean legs",
    "leak": "other leg leaking in at -20..-30 dB, plus echo 50-250 ms later",
    "noise": "white/pink/brown noise at 15-20 dB SNR",
    "mulaw": "8 kHz G.711 mu-law",
    "amrnb": "8 kHz AMR-NB 12.2 kbit/s",
    "leak+noise+amrnb": "leak and echo, noise and AMR-NB together",
    "babble": "two people talking in the background at 10-15 dB below (no target)",
}


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (ffmpeg), user plus system."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _tiled(source: Path, target: Path, seconds: float) -> Path:
    """`source`'s samples repeated into a WAV of `seconds`, written a piece at a time."""
    with wave.open(str(source), "rb") as reader:
        piece = reader.readframes(reader.getnframes())
    left = int(seconds * 16000) * 2
    with wave.open(str(target), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        while left > 0:
            out.writeframes(piece[:left])
            left -= len(piece)
    return target


def _der_rows(calls: list[Call], files: dict[tuple[int, str], dict[str, Path]]) -> list[Row]:
    rows = []
    for method in DETECTORS:
        params = dataclasses.replace(DEFAULT_PARAMS, method=method)
        default = method == DEFAULT_PARAMS.method
        for condition in CONDITIONS + EXTRA_CONDITIONS:
            scorer = Scorer()
            both = kept = 0.0
            for call in calls:
                legs = {
                    leg: analyse_wav(p, params) for leg, p in files[call.seed, condition].items()
                }
                labels = label_legs(legs, params)
                scorer.add(call.truth, labels, call.duration)
                truly = intersection(call.truth["agent"], call.truth["customer"])
                both += speech_seconds(truly)
                kept += speech_seconds(
                    intersection(truly, intersection(labels["agent"], labels["customer"]))
                )
            score = scorer.score()
            value = (f"{score.der:.1%} (missed {score.missed:.1%}, false alarm "
                     f"{score.false_alarm:.1%}, confusion {score.confusion:.1%})")  # fmt: skip
            target = DER_TARGETS.get(condition) if default else None
            rows.append(Row(
                CASE7, f"{method}{' (default)' if default else ''}: DER, "
                f"{CONDITION_NAMES[condition]}", value,
                "" if target is None else f"<= {target:.0%}",
                None if target is None else score.der <= target,
            ))  # fmt: skip
            if condition == "leak+noise+amrnb":
                rows.append(Row(
                    CASE7, f"{method}: both parties at once, kept on both legs ({condition})",
                    f"{kept:.1f} s of {both:.1f} s ({kept / both if both else 0:.0%})",
                ))  # fmt: skip
    return rows


def _cost_rows(ctx: Context, call_files: dict[str, Path], base: Path) -> list[Row]:
    """Labelling a long two-leg call with each detector, against bare ffmpeg on a long MP3."""
    minutes = ctx.scale.long_minutes
    long_legs = {
        leg: _tiled(path, base / f"long_{leg}.wav", minutes * 60)
        for leg, path in call_files.items()
    }
    mp3 = ctx.media / long_file(ctx.media, minutes)
    bare_ffmpeg(mp3, base / "bare.wav")  # warm the page cache and the binary
    started, wall = _cpu(), time.perf_counter()
    bare_ffmpeg(mp3, base / "bare.wav")
    ffmpeg_cpu, ffmpeg_wall = _cpu() - started, time.perf_counter() - wall
    rows = [Row(CASE7, f"bare ffmpeg converting a {minutes:g}-min MP3 to 16 kHz WAV",
                f"{ffmpeg_cpu:.2f} s CPU, {ffmpeg_wall:.2f} s wall")]  # fmt: skip
    for method in DETECTORS:
        params = dataclasses.replace(DEFAULT_PARAMS, method=method)
        runs = []
        for _ in range(3):
            started, wall = _cpu(), time.perf_counter()
            legs = {leg: analyse_wav(path, params) for leg, path in long_legs.items()}
            label_legs(legs, params)
            runs.append((_cpu() - started, time.perf_counter() - wall))
        cpu, wall = min(runs)
        per_leg = cpu / len(long_legs)
        per_hour = per_leg / (minutes / 60)
        default = method == DEFAULT_PARAMS.method
        rows.append(Row(
            CASE7, f"{method}{' (default)' if default else ''}: label a {minutes:g}-min call "
            "(read, hash, detect both legs; best of 3)",
            f"{per_hour:.2f} s CPU per leg-hour (both legs {cpu:.2f} s CPU, {wall:.2f} s wall); "
            f"one leg = {per_leg / ffmpeg_cpu:.1%} of the MP3's conversion",
            f"<= {COST_TARGET:g} s per hour" if default else "",
            per_hour <= COST_TARGET if default else None,
        ))  # fmt: skip
    return rows


def run(ctx: Context) -> list[Row]:
    """Spoken two-leg calls in six conditions, labelled by each detector and scored."""
    base = ctx.work / "case7"
    shutil.rmtree(base, ignore_errors=True)
    count, seconds = CALLS[ctx.scale.name]
    calls = [make_call(seed, seconds) for seed in range(count)]
    files = {
        (call.seed, condition): leg_files(call, condition, base / f"call{call.seed}_{condition}")
        for call in calls
        for condition in CONDITIONS + EXTRA_CONDITIONS
    }
    speech = sum(sum(e - s for s, e in call.truth[leg]) for call in calls for leg in LEGS)
    both = sum(overlap_seconds(call.truth["agent"], call.truth["customer"]) for call in calls)
    rows = [Row(
        CASE7, "calls spoken by espeak-ng, each leg converted by the service's ffmpeg",
        f"{count} x ~{seconds:g} s, {speech:.0f} s of speech ({both:.0f} s of both at once) "
        "per condition",
    )]  # fmt: skip
    rows += _der_rows(calls, files)
    rows += _cost_rows(ctx, files[calls[0].seed, "clean"], base)
    shutil.rmtree(base, ignore_errors=True)  # the long legs are 115 MB per leg-hour
    return rows
