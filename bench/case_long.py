"""Cases 1 and 4: one long recording against bare ffmpeg, and /health under eight at once."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bench.harness import (
    Context,
    Row,
    RssSampler,
    bare_ffmpeg,
    client,
    median,
    ms,
    paired_ratio,
    percentile,
    post_single,
    service,
    timed,
)
from bench.media import long_file

CASE1 = "1 one long file"
CASE4 = "4 /health under load"
WARMUP_MINUTES = 0.05
MEMORY_LIMIT_MB = 100.0
# Peak growth may differ between lengths by allocator noise, not by the length of the audio.
MEMORY_SLACK_MB = 16.0


def run_single(ctx: Context) -> list[Row]:
    """Case 1: `POST /download/single` of one long MP3, interleaved with bare ffmpeg on it."""
    scale = ctx.scale
    long_name = long_file(ctx.media, scale.long_minutes)
    longer_name = long_file(ctx.media, scale.longer_minutes)
    warmup = long_file(ctx.media, WARMUP_MINUTES)
    base = ctx.work / "case1"
    shutil.rmtree(base, ignore_errors=True)
    bare_out = base / "bare.wav"
    service_times: list[float] = []
    bare_times: list[float] = []
    growth: list[float] = []
    with service(base / "service") as server, client(server.base_url) as http:
        assert server.proc is not None
        pid = server.proc.pid
        store = base / "service" / "store"
        post_single(http, "warmup", ctx.source_url(warmup))

        def one_service_run(cid: str, name: str) -> tuple[float, float]:
            with RssSampler([pid]) as rss:
                seconds = timed(lambda: post_single(http, cid, ctx.source_url(name)))
            (store / f"{cid}_agent.wav").unlink()  # keep the disk and page cache steady
            return seconds, rss.growth_mb()

        for n in range(scale.rounds):
            # Alternate which goes first, so neither always runs on a just-warmed machine.
            if n % 2:
                bare_times.append(timed(lambda: bare_ffmpeg(ctx.media / long_name, bare_out)))
            seconds, grown = one_service_run(f"long{n}", long_name)
            service_times.append(seconds)
            growth.append(grown)
            if not n % 2:
                bare_times.append(timed(lambda: bare_ffmpeg(ctx.media / long_name, bare_out)))
        longer_service, longer_growth = one_service_run("longer", longer_name)
        longer_bare = timed(lambda: bare_ffmpeg(ctx.media / longer_name, bare_out))
    bare_out.unlink(missing_ok=True)

    service_median, bare_median = median(service_times), median(bare_times)
    ratio = paired_ratio(service_times, bare_times)
    audio_seconds = scale.long_minutes * 60
    length = f"{scale.long_minutes:g} min"
    longer = f"{scale.longer_minutes:g} min"
    runs = f"median of {scale.rounds}"
    peak = max(growth)
    return [
        Row(CASE1, f"service, {length} MP3 ({runs})",
            f"{service_median:.2f} s ({audio_seconds / service_median:.0f}x real time)"),
        Row(CASE1, f"bare ffmpeg, same file ({runs})",
            f"{bare_median:.2f} s ({audio_seconds / bare_median:.0f}x real time)"),
        Row(CASE1, "service / bare ffmpeg (median of the pairs' ratios)", f"{ratio:.3f}x",
            "<= 1.15x", ratio <= 1.15),
        Row(CASE1, f"server peak RSS growth, {length} (max of {scale.rounds})", f"{peak:.1f} MB",
            f"< {MEMORY_LIMIT_MB:g} MB", peak < MEMORY_LIMIT_MB),
        Row(CASE1, f"server peak RSS growth, {longer}", f"{longer_growth:.1f} MB",
            f"< {MEMORY_LIMIT_MB:g} MB, not growing with length",
            longer_growth < MEMORY_LIMIT_MB and longer_growth - peak < MEMORY_SLACK_MB),
        Row(CASE1, f"service / bare ffmpeg, {longer} (one run)",
            f"{longer_service / longer_bare:.3f}x ({longer_service:.2f} s / {longer_bare:.2f} s)"),
    ]  # fmt: skip


def _probe_while(base_url: str, work: Callable[[], object]) -> tuple[float, list[float]]:
    """Wall time of `work`, and the latency of /health asked every 20 ms while it runs."""
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with client(base_url, timeout=60) as own:
            while True:  # at least one probe, however quickly `work` ends
                started = time.perf_counter()
                own.get("/health").raise_for_status()
                latencies.append(time.perf_counter() - started)
                if done.wait(0.02):
                    break

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        wall = timed(work)
    finally:
        done.set()
        prober.join()
    return wall, latencies


def run_parallel(ctx: Context) -> list[Row]:
    """Case 4: /health latency while `parallel_jobs` long conversions run in one server.

    The same probe runs again while as many bare ffmpeg processes run beside the idle server:
    that is the latency the machine's scheduler alone gives a process sharing the CPU.
    """
    scale = ctx.scale
    jobs = scale.parallel_jobs
    name = long_file(ctx.media, scale.long_minutes)
    warmup = long_file(ctx.media, WARMUP_MINUTES)
    base = ctx.work / "case4"
    shutil.rmtree(base, ignore_errors=True)
    bare_dir = base / "bare"
    bare_dir.mkdir(parents=True)
    with service(base / "service") as server, client(server.base_url) as http:
        post_single(http, "warmup", ctx.source_url(warmup))

        def job(n: int) -> None:
            with client(server.base_url) as own:
                post_single(own, f"parallel{n}", ctx.source_url(name))

        def service_jobs() -> None:
            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(job, range(jobs)))

        def bare_jobs() -> None:
            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(lambda n: bare_ffmpeg(ctx.media / name, bare_dir / f"{n}.wav"),
                              range(jobs)))  # fmt: skip

        wall, latencies = _probe_while(server.base_url, service_jobs)
        bare_wall, bare_latencies = _probe_while(server.base_url, bare_jobs)
    shutil.rmtree(base, ignore_errors=True)
    p99 = percentile(latencies, 0.99)
    hours = jobs * scale.long_minutes / 60
    title = f"{jobs} x {scale.long_minutes:g} min at once"
    return [
        Row(CASE4, f"{title}: wall, audio stored (bare ffmpeg: wall)",
            f"{wall:.1f} s, {hours / wall * 3600:.0f}x real time ({bare_wall:.1f} s)"),
        Row(CASE4, f"/health p50 / max ({len(latencies)} probes)",
            f"{ms(percentile(latencies, 0.5))} / {ms(max(latencies))}"),
        Row(CASE4, "/health p99", ms(p99), "<= 50 ms", p99 <= 0.05),
        Row(CASE4, f"idle server beside {jobs} bare ffmpeg: /health p50 / p99 / max",
            f"{ms(percentile(bare_latencies, 0.5))} / {ms(percentile(bare_latencies, 0.99))} / "
            f"{ms(max(bare_latencies))}"),
    ]  # fmt: skip
