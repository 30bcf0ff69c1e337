"""Case 2: a CSV batch through batch_download_from_csv.py, bare ffmpeg and yt-dlp, side by side."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import ROOT, Context, Row, bare_ffmpeg, ffmpeg_exe, median, paired_ratio, service
from bench.media import batch_files
from diarization_audio.ingest.ffmpeg import FRAME_SAMPLES

CASE2 = "2 CSV batch"
REGROUP = f"asetnsamples=n={FRAME_SAMPLES}:p=0"
SCRIPT = ROOT / "batch_download_from_csv.py"


def _write_csv(
    path: Path,
    prefix: str,
    files: list[tuple[str, str, str]],
    ctx: Context,
    url_of: Callable[[str], str] | None = None,
) -> None:
    """The batch's CSV; each file's URL is `url_of(name)` (default: served whole)."""
    url_of = url_of or ctx.source_url
    urls: dict[str, dict[str, str]] = {}
    for cid, speaker, name in files:
        urls.setdefault(cid, {})[speaker] = url_of(name)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["conversation_id", "agent_audio_url", "customer_audio_url"])
        for cid, by_speaker in urls.items():
            writer.writerow([f"{prefix}{cid}", by_speaker["agent"], by_speaker["customer"]])


def _batch_script(csv_path: Path, server_url: str, concurrency: int, work: Path) -> float:
    """Wall time of the real command line, as a user would run it."""
    command = [
        sys.executable, str(SCRIPT), str(csv_path), "--server", server_url,
        "--concurrency", str(concurrency), "--no-progress", "--failed-rows-dir", str(work),
    ]  # fmt: skip
    started = time.perf_counter()
    # Run from the work directory so a developer's own .env is not picked up.
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"batch script exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds


def _ffmpeg_dir(work: Path) -> Path:
    """A directory whose `ffmpeg` is the service's binary, for yt-dlp's --ffmpeg-location."""
    directory = work / "bin"
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "ffmpeg"
    link.unlink(missing_ok=True)
    link.symlink_to(ffmpeg_exe())
    return directory


def _yt_dlp(urls: list[str], out: Path, ffmpeg_dir: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("yt-dlp")), "--quiet", "--no-progress",
        "--no-cache-dir", "--force-generic-extractor", "--ffmpeg-location", str(ffmpeg_dir),
        "-x", "--audio-format", "wav", "--postprocessor-args", "ExtractAudio:-ar 16000 -ac 1",
        "-o", str(out / "%(id)s.%(ext)s"), *urls,
    ]  # fmt: skip
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def _check_wavs(directory: Path, expected: int) -> None:
    """Every expected output is there and is 16 kHz mono 16-bit, or the comparison is void."""
    found = sorted(directory.glob("*.wav"))
    if len(found) != expected:
        raise RuntimeError(f"{directory}: {len(found)} WAV files, expected {expected}")
    for path in found:
        with wave.open(str(path)) as wav:
            shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if shape != (16000, 1, 2):
            raise RuntimeError(f"{path} is {shape}, not 16 kHz mono 16-bit")


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    if not SCRIPT.exists():
        return [Row(CASE2, "batch_download_from_csv.py", "missing: case not run", "present", False)]
    files = batch_files(ctx.media, scale)
    base = ctx.work / "case2"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    # The same parallelism everywhere: the script sends `cores` conversations at once and the
    # service converts both speakers of each at once, so 2 x cores files are in flight.
    in_flight = 2 * ctx.cores
    paths = [ctx.media / name for _, _, name in files]
    urls = [ctx.source_url(name) for _, _, name in files]
    ffmpeg_dir = _ffmpeg_dir(base)
    timings: dict[str, list[float]] = {
        "service": [],
        "bare": [],
        "bare-cores": [],
        "bare-regrouped": [],
        "yt-dlp": [],
        "yt-dlp-1": [],
    }
    with service(base / "service") as server:
        store = base / "service" / "store"

        def with_service(n: int) -> float:
            csv_path = base / f"round{n}.csv"
            _write_csv(csv_path, f"r{n}_", files, ctx)
            seconds = _batch_script(csv_path, server.base_url, ctx.cores, base)
            _check_wavs(store, len(files))
            for path in store.glob("*.wav"):  # the directory stays: the service expects it
                path.unlink()
            return seconds

        def with_bare(n: int, parallel: int = in_flight, options: tuple[str, ...] = ()) -> float:
            out = base / "bare"
            out.mkdir()

            def one(i: int) -> None:
                bare_ffmpeg(paths[i], out / f"{i}.wav", *options)

            with ThreadPoolExecutor(parallel) as pool:
                started = time.perf_counter()
                list(pool.map(one, range(len(paths))))
                seconds = time.perf_counter() - started
            _check_wavs(out, len(files))
            shutil.rmtree(out)
            return seconds

        def with_yt_dlp(shares: list[list[str]]) -> float:
            out = base / "yt-dlp"
            out.mkdir()
            with ThreadPoolExecutor(in_flight) as pool:
                started = time.perf_counter()
                list(pool.map(lambda share: _yt_dlp(share, out, ffmpeg_dir), shares))
                seconds = time.perf_counter() - started
            _check_wavs(out, len(files))
            shutil.rmtree(out)
            return seconds

        def with_yt_dlp_per_file(n: int) -> float:
            # As a user parallelises a command line: `xargs -P 4 -n 1 yt-dlp ...`.
            return with_yt_dlp([[url] for url in urls])

        def with_yt_dlp_shared(n: int) -> float:
            # yt-dlp at its best: one process per share of the URLs, so its start-up is paid
            # once per process rather than once per file.
            return with_yt_dlp([urls[i::in_flight] for i in range(in_flight)])

        def with_bare_cores(n: int) -> float:
            # What the service itself runs at once: one conversion per core.
            return with_bare(n, ctx.cores)

        def with_bare_regrouped(n: int) -> float:
            # The same command with the frame regrouping the service gives ffmpeg: how much
            # of the service's speed is ffmpeg run better, not ffmpeg run less.
            return with_bare(n, options=("-af", REGROUP))

        runners = [("service", with_service), ("bare", with_bare),
                   ("bare-cores", with_bare_cores), ("bare-regrouped", with_bare_regrouped),
                   ("yt-dlp-1", with_yt_dlp_per_file), ("yt-dlp", with_yt_dlp_shared)]  # fmt: skip
        for n in range(scale.batch_rounds):
            # Rotate the order each round, so none always runs first on a rested machine.
            for name, runner in runners[n % len(runners) :] + runners[: n % len(runners)]:
                timings[name].append(runner(n))

    hours = len(files) * scale.batch_minutes / 60
    walls = {name: median(values) for name, values in timings.items()}
    rate = {name: hours / wall for name, wall in walls.items()}
    vs_bare = paired_ratio(timings["service"], timings["bare"])
    vs_cores = paired_ratio(timings["service"], timings["bare-cores"])
    vs_regrouped = paired_ratio(timings["service"], timings["bare-regrouped"])
    regrouping = paired_ratio(timings["bare"], timings["bare-regrouped"])
    # Measured from outside: whole-run medians, not pairs, against the faster baseline.
    outside = walls["service"] / min(walls["bare"], walls["bare-cores"])
    vs_yt_1 = paired_ratio(timings["yt-dlp-1"], timings["service"])
    vs_yt = paired_ratio(timings["yt-dlp"], timings["service"])
    runs = f"median of {scale.batch_rounds}"
    shape = f"{scale.conversations} conversations x 2 x {scale.batch_minutes:g} min"
    return [
        Row(CASE2, f"batch script --concurrency {ctx.cores}, {shape} ({runs})",
            f"{walls['service']:.2f} s, {rate['service']:.3f} h stored per s"),
        Row(CASE2, f"bare ffmpeg, {in_flight} files at a time ({runs})",
            f"{walls['bare']:.2f} s, {rate['bare']:.3f} h per s"),
        Row(CASE2, f"yt-dlp, one process per file, {in_flight} at a time ({runs})",
            f"{walls['yt-dlp-1']:.2f} s, {rate['yt-dlp-1']:.3f} h per s"),
        Row(CASE2, f"yt-dlp, {in_flight} processes sharing the URLs ({runs})",
            f"{walls['yt-dlp']:.2f} s, {rate['yt-dlp']:.3f} h per s"),
        Row(CASE2, f"bare ffmpeg, {ctx.cores} files at a time ({runs})",
            f"{walls['bare-cores']:.2f} s, {rate['bare-cores']:.3f} h per s"),
        Row(CASE2, f"bare ffmpeg with the service's frames (-af {REGROUP}), {in_flight} at a "
            f"time ({runs})", f"{walls['bare-regrouped']:.2f} s, "
            f"{rate['bare-regrouped']:.3f} h per s; plain / this {regrouping:.3f}x"),
        Row(CASE2, f"service / bare ffmpeg {in_flight} at a time (median of the rounds' ratios)",
            f"{vs_bare:.3f}x", "<= 1.10x", vs_bare <= 1.10),
        Row(CASE2, f"service / bare ffmpeg {ctx.cores} at a time (median of the rounds' ratios)",
            f"{vs_cores:.3f}x", "<= 1.10x", vs_cores <= 1.10),
        Row(CASE2, f"service / bare ffmpeg with the service's frames, {in_flight} at a time (same)",
            f"{vs_regrouped:.3f}x"),
        Row(CASE2, "service / the faster bare ffmpeg (median walls, as timed from outside)",
            f"{outside:.3f}x", "<= 1.10x", outside <= 1.10),
        Row(CASE2, "yt-dlp one per file / service (same)", f"{vs_yt_1:.2f}x", ">= 1.5x",
            vs_yt_1 >= 1.5),
        Row(CASE2, "yt-dlp sharing processes / service (same)", f"{vs_yt:.2f}x", ">= 1.5x",
            vs_yt >= 1.5),
    ]  # fmt: skip
