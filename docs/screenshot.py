"""Makes docs/dashboard.png: the dashboard of three weeks of collection, in headless Chromium.

The store is filled through MetadataTracker with conversations shaped like the demo's (two
legs, agent and customer, a few with a supervisor), their speech labels, some quality flags
and failures, then a real server process serves it and Chromium (no route off 127.0.0.1)
takes the picture. From the repository root: `.venv/bin/python -m docs.screenshot [OUTPUT.png]`
"""

from __future__ import annotations

import random
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.browser import offline_chromium
from diarization_audio.service.process import ServiceProcess
from diarization_audio.settings import settings_under
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.speech_labels import LegLabels
from diarization_audio.store.tracker import MetadataTracker

ROOT = Path(__file__).resolve().parent.parent

DAYS = 21
TZ = "Asia/Kolkata"
PROVENANCE = {"detector": "energy", "version": 1}
FAILURES = [
    ("source_error", "the source answered HTTP 404"),
    ("source_timeout", "no answer in 30 s"),
    ("not_audio", "the body is not decodable audio"),
    ("too_large", "the source is larger than MAX_DOWNLOAD_MB"),
]


def _leg(cid: str, label: str, seconds: float, when: datetime) -> StoredFile:
    digest = f"{abs(hash((cid, label))):064x}"[-64:]
    return StoredFile(
        filepath=f"downloaded_audios/{cid}_{label}.wav",
        url=f"https://recordings.example.com/{when:%Y/%m/%d}/{cid}_{label}.mp3",
        file_size_bytes=int(seconds * 32000) + 44, duration_seconds=seconds,
        sample_rate=16000, channels=1, sha256=digest, downloaded_at=when.isoformat("T", "seconds"),
    )  # fmt: skip


def fill(tracker: MetadataTracker, now: datetime) -> None:
    """Three weeks of conversations, the pace rising, then labels, flags and failures."""
    rng = random.Random(7)
    calls: list[tuple[str, dict[str, StoredFile]]] = []
    for back in range(DAYS - 1, -1, -1):
        day = now - timedelta(days=back)
        count = 0 if day.weekday() == 6 else int(30 + (DAYS - back) * 2.5 + rng.random() * 15)
        for n in range(count):
            when = min(day.replace(hour=9) + timedelta(minutes=n * 480 / max(count, 1)), now)
            cid = f"conv_{when:%Y%m%d}_{n + 1:03d}"
            seconds = min(rng.lognormvariate(5.9, 0.55), 3 * 3600)
            labels = ["agent", "customer"] + (["supervisor"] if rng.random() < 0.06 else [])
            calls.append((cid, {label: _leg(cid, label, seconds, when) for label in labels}))
    tracker.record_many((cid, label, f) for cid, legs in calls for label, f in legs.items())
    for number, (cid, legs) in enumerate(calls):
        flags = {}
        if number % 37 == 5:
            flags["no_speech"] = "customer: 0.4 s of speech in 212.0 s"
        if number % 53 == 8:
            flags["clipping"] = "agent: 2.31% of samples at full scale"
        if number % 71 == 3:
            flags["leak"] = "customer: 40.2 s detected alone, 3.1 s its own"
        spoken = {
            label: LegLabels(
                f.sha256,
                f.sha256,
                [(0.0, f.duration_seconds * rng.uniform(0.3, 0.5))],
                0.0,
                paired=len(legs) > 1,
            )
            for label, f in legs.items()
        }
        tracker.save_labels(cid, spoken, 4.0, flags, PROVENANCE)
    for n in range(14):
        code, detail = FAILURES[n % len(FAILURES)]
        url = f"https://recordings.example.com/missing/{n}.mp3"
        tracker.record_failure(f"conv_retry_{n:03d}", "customer", url, code, detail)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    output = Path(args[0]) if args else ROOT / "docs" / "dashboard.png"
    with tempfile.TemporaryDirectory() as folder:
        settings = settings_under(Path(folder), log_timezone=TZ, label_speech=False,
                                  dashboard_target_hours=500)  # fmt: skip
        tracker = MetadataTracker.from_settings(settings)
        fill(tracker, datetime.now(ZoneInfo(TZ)))
        tracker.close()
        with ServiceProcess(settings) as server, offline_chromium() as chromium:
            page = chromium.page(chromium.context(width=1440, height=900))
            page.goto(server.base_url + "/dashboard")
            page.wait_for_selector("#per-day")
            page.screenshot(path=str(output), full_page=True)
            outside = chromium.outside(server.base_url)
    if outside:
        print(f"error: the page asked for {outside}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
