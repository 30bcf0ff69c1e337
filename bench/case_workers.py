"""Case 5: `--workers 4` and many simultaneous downloads: every one recorded, throughput."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.harness import Context, Row, RssSampler, bare_ffmpeg, process_tree, service, timed
from bench.media import batch_files

CASE5 = "5 many at once"


async def _post_all(base_url: str, jobs: list[tuple[str, str]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(jobs), max_keepalive_connections=len(jobs))
    async with httpx.AsyncClient(
        base_url=base_url, timeout=3600, trust_env=False, limits=limits
    ) as http:
        return list(
            await asyncio.gather(
                *(
                    http.post("/download/single", data={"conversation_id": cid, "audio_url": url})
                    for cid, url in jobs
                )
            )
        )


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    files = batch_files(ctx.media, scale)
    names = [files[n % len(files)][2] for n in range(scale.simultaneous)]
    jobs = [(f"many{n:03d}", ctx.source_url(name)) for n, name in enumerate(names)]
    base = ctx.work / "case5"
    shutil.rmtree(base, ignore_errors=True)
    with service(base / "service", workers=scale.workers) as server:
        assert server.proc is not None
        with RssSampler(process_tree(server.proc.pid)) as rss:
            started = time.perf_counter()
            responses = asyncio.run(_post_all(server.base_url, jobs))
            wall = time.perf_counter() - started
        counted = httpx.get(server.base_url + "/statistics", trust_env=False).json()
    document = json.loads((base / "service" / "conversations_metadata.json").read_bytes())
    recorded = sorted(document["conversations"])
    stored = sorted(p.name for p in (base / "service" / "store").glob("*.wav"))
    ok = sum(r.status_code == 200 for r in responses)
    all_recorded = (
        ok == len(jobs)
        and recorded == sorted(cid for cid, _ in jobs)
        and stored == sorted(f"{cid}_speaker.wav" for cid, _ in jobs)
        and counted["summary"]["total_conversations"] == len(jobs)
    )
    shutil.rmtree(base / "service" / "store", ignore_errors=True)

    out = base / "bare"
    out.mkdir(parents=True, exist_ok=True)

    def bare(n: int) -> None:
        bare_ffmpeg(ctx.media / names[n], out / f"{n}.wav")

    with ThreadPoolExecutor(ctx.cores) as pool:
        bare_wall = timed(lambda: list(pool.map(bare, range(len(names)))))
    shutil.rmtree(out, ignore_errors=True)

    hours = len(jobs) * scale.batch_minutes / 60
    title = f"{len(jobs)} simultaneous POSTs, --workers {scale.workers}"
    return [
        Row(CASE5, f"{title}: recorded", f"{ok} answered 200, {len(recorded)} recorded, "
            f"{len(stored)} stored, /statistics counts {counted['summary']['total_conversations']}",
            "every one", all_recorded),
        Row(CASE5, f"{title}: throughput", f"{wall:.1f} s, {len(jobs) / wall:.1f} files/s, "
            f"{hours / wall * 3600:.0f} s of audio per s"),
        Row(CASE5, f"bare ffmpeg, same files, {ctx.cores} at a time", f"{bare_wall:.1f} s "
            f"(service / bare {wall / bare_wall:.2f}x)"),
        Row(CASE5, "peak RSS growth of the busiest server process", f"{rss.growth_mb():.1f} MB"),
    ]  # fmt: skip
