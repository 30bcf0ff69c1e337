"""Case 8: the dashboard's data (/dashboard/data) and page (/dashboard) as the store grows.

Every file is stamped within the last 30 days, so the hours-per-day sum covers all of them
(the worst case: an older collection has most of its files outside the days shown), and a
thousand failures fall in the last 24 hours. The files carry no speech labels (labelling a
hundred thousand calls is not what this case measures).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bench.harness import Context, Row, client, median, ms, service, timed
from diarization_audio.settings import settings_under
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.tracker import MetadataTracker

CASE8 = "8 dashboard"
FILL_CHUNK = 20_000
FAILURES = 1_000
DATA_TARGET = 0.200  # /dashboard/data at the largest size
TZ = "Asia/Kolkata"


def _record(n: int, speaker: str, now: datetime) -> StoredFile:
    when = now - timedelta(days=n % 30, minutes=n % 600)
    return StoredFile(
        filepath=f"/srv/diarization/downloaded_audios/call{n:07d}_{speaker}.wav",
        url=f"https://recordings.example.com/2026/call{n:07d}/{speaker}.mp3",
        file_size_bytes=5_760_044 + n % 1000,
        duration_seconds=120.0 + (n * 7919 % 1800) / 2,
        sample_rate=16000,
        channels=1,
        sha256=f"{n:064x}",
        downloaded_at=when.isoformat(timespec="seconds"),
    )


def _files(start: int, stop: int, now: datetime) -> Iterator[tuple[str, str, StoredFile]]:
    for n in range(start, stop):
        for speaker in ("agent", "customer"):
            yield f"call{n:07d}", speaker, _record(n, speaker, now)


def run(ctx: Context) -> list[Row]:
    base = ctx.work / "case8"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    settings = settings_under(base, log_timezone=TZ)
    tracker = MetadataTracker.from_settings(settings)
    now = datetime.now(ZoneInfo(TZ))
    codes = ("source_error", "not_audio", "source_timeout")
    for n in range(FAILURES):
        url = "https://recordings.example.com/missing.mp3"
        tracker.record_failure(f"failed{n}", "agent", url, codes[n % 3], "the source answered 404")
    rows: list[Row] = []
    held = 0
    largest = max(ctx.scale.metadata_sizes)
    samples = ctx.scale.metadata_samples
    for size in ctx.scale.metadata_sizes:
        for chunk in range(held, size, FILL_CHUNK):
            tracker.record_many(_files(chunk, min(chunk + FILL_CHUNK, size), now))
        held = max(held, size)
        with service(base, log_timezone=TZ) as server, client(server.base_url) as http:
            first = timed(lambda: http.get("/dashboard/data").raise_for_status())
            data = [timed(lambda: http.get("/dashboard/data").raise_for_status())
                    for _ in range(samples)]  # fmt: skip
            pages = [timed(lambda: http.get("/dashboard").raise_for_status())
                     for _ in range(samples)]  # fmt: skip
            answer = http.get("/dashboard/data").json()
        counted = answer["summary"]["total_conversations"]
        if counted != size or sum(b["conversations"] for b in answer["lengths"]["bins"]) != size:
            raise RuntimeError(f"/dashboard/data counts {counted} conversations of {size}")
        label = f"{size:,} conversations"
        at_largest = size == largest and size > 0
        value = median(data)
        rows += [
            Row(CASE8, f"{label}: /dashboard/data (median of {samples})", ms(value),
                *((f"<= {ms(DATA_TARGET)}", value <= DATA_TARGET) if at_largest else ("", None))),
            Row(CASE8, f"{label}: first /dashboard/data of a freshly started server", ms(first)),
            Row(CASE8, f"{label}: /dashboard page (median of {samples})", ms(median(pages))),
        ]  # fmt: skip
    tracker.close()
    return rows
