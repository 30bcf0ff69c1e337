"""Case 3: the cost of recording one more conversation, and of /statistics, as metadata grows."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import partial

from bench.harness import Context, Row, client, median, ms, service, timed
from metadata_tracker import FileRecord, MetadataTracker

CASE3 = "3 metadata at scale"
FILL_CHUNK = 20_000  # files per write while filling; the fill itself is not measured
CROSS_SAMPLES = 5
# Targets per size: (record, statistics) in seconds; sizes without one are reported only.
TARGETS = {20_000: 0.1, 100_000: 0.5}
TZ = "Asia/Kolkata"


def _record(n: int, speaker: str) -> FileRecord:
    """A file record shaped like a real one (paths, URL, hash), for conversation number n."""
    return FileRecord(
        filepath=f"/srv/diarization/downloaded_audios/call{n:07d}_{speaker}.wav",
        url=f"https://recordings.example.com/2026/01/call{n:07d}/{speaker}.mp3",
        file_size_bytes=5_760_044 + n % 1000,
        duration_seconds=180.0 + (n % 600) / 10,
        sample_rate=16000,
        channels=1,
        sha256=f"{n:064x}",
        downloaded_at=f"2026-01-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00+05:30",
    )


def _conversations(start: int, stop: int) -> Iterator[tuple[str, str, FileRecord]]:
    for n in range(start, stop):
        for speaker in ("agent", "customer"):
            yield f"call{n:07d}", speaker, _record(n, speaker)


def _fill(tracker: MetadataTracker, start: int, stop: int) -> None:
    for chunk in range(start, stop, FILL_CHUNK):
        tracker.record_many(_conversations(chunk, min(chunk + FILL_CHUNK, stop)))


def _verdict(size: int, seconds: float) -> tuple[str, bool | None]:
    limit = TARGETS.get(size)
    if limit is None:
        return "", None
    return f"<= {ms(limit)}", seconds <= limit


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    base = ctx.work / "case3"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    path = base / "conversations_metadata.json"
    filler = MetadataTracker(path, TZ)
    rows: list[Row] = []
    held = 0  # conversations in the file so far (the fill plus every measured record)
    extra = 10_000_000  # numbers of conversations recorded while measuring
    for size in scale.metadata_sizes:
        if size > held:
            _fill(filler, held, size)
        held = max(held, size)
        # A fresh tracker is what a newly started process has: it parses the file once.
        writer = MetadataTracker(path, TZ)
        load = timed(writer.check)
        recording: list[float] = []
        for _ in range(scale.metadata_samples):
            extra += 1
            recording.append(
                timed(partial(writer.record_file, f"x{extra}", "agent", _record(extra, "agent")))
            )
        # Recording in a process that does not hold the latest version: another one wrote last.
        cold_recording: list[float] = []
        for _ in range(CROSS_SAMPLES):
            extra += 2
            filler.record_file(f"x{extra}", "agent", _record(extra, "agent"))
            cold_recording.append(
                timed(
                    partial(writer.record_file, f"x{extra + 1}", "agent", _record(extra, "agent"))
                )
            )
        with service(base) as server, client(server.base_url) as http:
            http.get("/statistics").raise_for_status()
            answering = [timed(lambda: http.get("/statistics").raise_for_status())
                         for _ in range(scale.metadata_samples)]  # fmt: skip
            after_write: list[float] = []
            for _ in range(CROSS_SAMPLES):
                extra += 1
                writer.record_file(f"x{extra}", "agent", _record(extra, "agent"))
                after_write.append(timed(lambda: http.get("/statistics").raise_for_status()))
            counted = http.get("/statistics").json()["summary"]["total_conversations"]
        expected = writer.check()
        if counted != expected:
            raise RuntimeError(f"/statistics counts {counted}, the file holds {expected}")
        label = f"{size:,} conversations"
        warm = f"median of {scale.metadata_samples}"
        behind = f"another process wrote last, median of {CROSS_SAMPLES}"
        for measure, values in (
            (f"record one more ({warm})", recording),
            (f"record one more ({behind})", cold_recording),
            (f"/statistics ({warm})", answering),
            (f"/statistics ({behind})", after_write),
        ):
            rows.append(Row(CASE3, f"{label}: {measure}", ms(median(values)),
                            *_verdict(size, median(values))))  # fmt: skip
        rows.append(
            Row(CASE3, f"{label}: first read in a new process; file size",
                f"{ms(load)}; {path.stat().st_size / 1e6:.1f} MB")
        )  # fmt: skip
    return rows
