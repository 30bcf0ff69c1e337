"""Case 9: sources behind a link of limited rate, as object stores are reached in production.

Every request of one rate shares one link (the source server's /link/<bytes per second>/), so
parallel downloads split its bandwidth as they would on a real uplink. Side by side at each
rate: the download alone, bare ffmpeg alone on the local file, the service, and yt-dlp (which
downloads, then converts) on the same URLs.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.case_batch import _batch_script, _check_wavs, _ffmpeg_dir, _write_csv, _yt_dlp
from bench.harness import (
    MB,
    Context,
    Row,
    bare_ffmpeg,
    client,
    median,
    paired_ratio,
    post_single,
    service,
    timed,
)
from bench.media import batch_files, long_file

CASE9 = "9 limited-rate link"
SINGLE_TARGET = 1.15  # service / max(download alone, bare ffmpeg alone)
BATCH_TARGET = 1.5  # yt-dlp in long-lived processes / service


def _download(ctx: Context, url: str, target: Path) -> None:
    with client(ctx.url("")) as http, http.stream("GET", url) as response:
        response.raise_for_status()
        with open(target, "wb") as handle:
            for chunk in response.iter_bytes(1 << 20):
                handle.write(chunk)


def _single(ctx: Context, rate_mb: int, rounds: int) -> list[Row]:
    """One long MP3: the service converts while downloading, so it should take about the
    longer of the download and the conversion, not their sum."""
    name = long_file(ctx.media, ctx.scale.long_minutes)
    url = ctx.url(f"/link/{rate_mb * MB}/{name}")
    base = ctx.work / f"case9-single-{rate_mb}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    ffmpeg_dir = _ffmpeg_dir(base)
    times: dict[str, list[float]] = {"service": [], "download": [], "bare": [], "yt-dlp": []}
    with service(base / "service", label_speech=False) as server, client(server.base_url) as http:
        store = base / "service" / "store"
        out = base / "yt-dlp"
        for n in range(rounds):
            times["download"].append(timed(lambda: _download(ctx, url, base / "fetched.mp3")))
            times["bare"].append(timed(lambda: bare_ffmpeg(ctx.media / name, base / "bare.wav")))
            cid = f"single{n}"
            times["service"].append(timed(lambda: post_single(http, cid, url)))  # noqa: B023
            out.mkdir()
            times["yt-dlp"].append(timed(lambda: _yt_dlp([url], out, ffmpeg_dir)))
            _check_wavs(out, 1)
            shutil.rmtree(out)
            for path in store.glob("*.wav"):
                path.unlink()
    shutil.rmtree(base, ignore_errors=True)
    floors = [max(d, b) for d, b in zip(times["download"], times["bare"], strict=True)]
    ratio = paired_ratio(times["service"], floors)
    title = f"{ctx.scale.long_minutes:g}-min MP3 at {rate_mb} MB/s"
    runs = f"median of {rounds}"
    m = {key: median(values) for key, values in times.items()}
    return [
        Row(CASE9, f"{title}: download alone / bare ffmpeg alone ({runs})",
            f"{m['download']:.2f} s / {m['bare']:.2f} s"),
        Row(CASE9, f"{title}: service / yt-dlp ({runs})",
            f"{m['service']:.2f} s / {m['yt-dlp']:.2f} s"),
        Row(CASE9, f"{title}: service / max(download, bare ffmpeg)", f"{ratio:.3f}x",
            f"<= {SINGLE_TARGET}x", ratio <= SINGLE_TARGET),
    ]  # fmt: skip


def _batch(ctx: Context, rate_mb: int, rounds: int) -> list[Row]:
    """The CSV batch through the batch script against yt-dlp in long-lived processes, every
    file fetched over the same link."""
    files = batch_files(ctx.media, ctx.scale)
    link = f"/link/{rate_mb * MB}/"
    urls = [ctx.url(link + name) for _, _, name in files]
    in_flight = 2 * ctx.cores  # as case 2: the script's conversations times their two speakers
    base = ctx.work / f"case9-batch-{rate_mb}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    ffmpeg_dir = _ffmpeg_dir(base)
    times: dict[str, list[float]] = {"service": [], "download": [], "yt-dlp": []}
    with service(base / "service", label_speech=False) as server:
        store = base / "service" / "store"
        fetched, out = base / "fetched", base / "yt-dlp"
        shares = [urls[i::in_flight] for i in range(in_flight)]

        def fetch(i: int) -> None:
            _download(ctx, urls[i], fetched / f"{i}")

        def yt_dlp(share: list[str]) -> None:
            _yt_dlp(share, out, ffmpeg_dir)

        for n in range(rounds):
            fetched.mkdir()
            with ThreadPoolExecutor(in_flight) as pool:
                started = time.perf_counter()
                list(pool.map(fetch, range(len(urls))))
                times["download"].append(time.perf_counter() - started)
            shutil.rmtree(fetched)

            csv_path = base / f"round{n}.csv"
            _write_csv(csv_path, f"r{n}_", files, ctx, lambda name: ctx.url(link + name))
            times["service"].append(_batch_script(csv_path, server.base_url, ctx.cores, base))
            _check_wavs(store, len(files))
            for path in store.glob("*.wav"):
                path.unlink()

            out.mkdir()
            with ThreadPoolExecutor(in_flight) as pool:
                started = time.perf_counter()
                list(pool.map(yt_dlp, shares))
                times["yt-dlp"].append(time.perf_counter() - started)
            _check_wavs(out, len(files))
            shutil.rmtree(out)
    shutil.rmtree(base, ignore_errors=True)
    speedup = paired_ratio(times["yt-dlp"], times["service"])
    m = {key: median(values) for key, values in times.items()}
    title = f"batch of {len(files)} x {ctx.scale.batch_minutes:g} min at {rate_mb} MB/s"
    return [
        Row(CASE9, f"{title}: download alone / service / yt-dlp (median of {rounds})",
            f"{m['download']:.2f} s / {m['service']:.2f} s / {m['yt-dlp']:.2f} s"),
        Row(CASE9, f"{title}: yt-dlp / service", f"{speedup:.2f}x", f">= {BATCH_TARGET}x",
            speedup >= BATCH_TARGET),
    ]  # fmt: skip


def run(ctx: Context) -> list[Row]:
    rounds = ctx.scale.rounds if ctx.smoke else 3
    rows: list[Row] = []
    for rate_mb in (10, 40):
        rows += _single(ctx, rate_mb, rounds)
    for rate_mb in (10, 40):
        rows += _batch(ctx, rate_mb, 1 if ctx.smoke else ctx.scale.batch_rounds)
    return rows
