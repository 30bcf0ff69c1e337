"""Case 3: recording one more file, /statistics, start-up, memory and the JSON export, as the
store grows."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from bench.harness import (
    Context,
    Row,
    client,
    median,
    ms,
    process_tree,
    rss_mb,
    service,
    timed,
)
from diarization_audio.settings import settings_under
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.tracker import MetadataTracker

CASE3 = "3 metadata at scale"
FILL_CHUNK = 20_000  # files per transaction while filling; the fill itself is not measured
CROSS_SAMPLES = 5
# Targets at the largest size: record one file, /statistics, a new server's first /statistics,
# server memory over an empty store.
RECORD_TARGET, STATISTICS_TARGET, FIRST_TARGET, MEMORY_TARGET_MB = 0.020, 0.050, 0.200, 50.0
TZ = "Asia/Kolkata"


def _record(n: int, speaker: str) -> StoredFile:
    """A stored file shaped like a real one (paths, URL, hash), for conversation number n."""
    return StoredFile(
        filepath=f"/srv/diarization/downloaded_audios/call{n:07d}_{speaker}.wav",
        url=f"https://recordings.example.com/2026/01/call{n:07d}/{speaker}.mp3",
        file_size_bytes=5_760_044 + n % 1000,
        duration_seconds=180.0 + (n % 600) / 10,
        sample_rate=16000,
        channels=1,
        sha256=f"{n:064x}",
        downloaded_at=f"2026-01-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00+05:30",
    )


def _conversations(start: int, stop: int) -> Iterator[tuple[str, str, StoredFile]]:
    for n in range(start, stop):
        for speaker in ("agent", "customer"):
            yield f"call{n:07d}", speaker, _record(n, speaker)


def _fill(tracker: MetadataTracker, start: int, stop: int) -> None:
    for chunk in range(start, stop, FILL_CHUNK):
        tracker.record_many(_conversations(chunk, min(chunk + FILL_CHUNK, stop)))


def _server_figures(base: Path, samples: int) -> dict[str, object]:
    """A freshly started server on the store: its first /statistics, then warm ones, its memory."""
    with service(base) as server, client(server.base_url) as http:
        assert server.proc is not None
        first = timed(lambda: http.get("/statistics").raise_for_status())
        warm = [timed(lambda: http.get("/statistics").raise_for_status()) for _ in range(samples)]
        pages = [timed(lambda: http.get("/conversations", params={"limit": 100, "offset": 0})
                       .raise_for_status()) for _ in range(samples)]  # fmt: skip
        memory = sum(rss_mb(pid) for pid in process_tree(server.proc.pid))
        counted = http.get("/statistics").json()["summary"]["total_conversations"]
    return {"first": first, "warm": warm, "pages": pages, "memory": memory, "counted": counted}


def _target(applies: bool, limit: float, value: float, unit: str = "ms") -> tuple[str, bool | None]:
    """The target cell and verdict of a measure, at the size the targets are set for."""
    if not applies:
        return "", None
    return (f"<= {ms(limit)}", value <= limit) if unit == "ms" else (f"< {limit:g} MB",
                                                                      value < limit)  # fmt: skip


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    base = ctx.work / "case3"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    settings = settings_under(base, log_timezone=TZ)
    filler = MetadataTracker.from_settings(settings)
    rows: list[Row] = []
    held = 0  # conversations in the store so far (the fill plus every measured record)
    extra = 10_000_000  # numbers of conversations recorded while measuring
    empty_memory: float | None = None
    largest = max(scale.metadata_sizes)
    for size in scale.metadata_sizes:
        if size > held:
            _fill(filler, held, size)
        held = max(held, size)
        writer = MetadataTracker.from_settings(settings)  # what a newly started process has
        writer.check()
        recording: list[float] = []
        for _ in range(scale.metadata_samples):
            extra += 1
            recording.append(
                timed(partial(writer.record_file, f"x{extra}", "agent", _record(extra, "agent")))
            )
        # Recording right after another process wrote.
        cold_recording: list[float] = []
        for _ in range(CROSS_SAMPLES):
            extra += 2
            filler.record_file(f"x{extra}", "agent", _record(extra, "agent"))
            cold_recording.append(
                timed(
                    partial(writer.record_file, f"x{extra + 1}", "agent", _record(extra, "agent"))
                )
            )
        server = _server_figures(base, scale.metadata_samples)
        expected = writer.check()
        if server["counted"] != expected:
            raise RuntimeError(f"/statistics counts {server['counted']}, the store {expected}")
        export = writer.export_json(force=True, path=base / "export.json")
        assert export is not None
        writer.close()
        memory = float(server["memory"])  # type: ignore[arg-type]
        if empty_memory is None:
            empty_memory = memory
        growth = memory - empty_memory
        at_largest = size == largest and size > 0
        label = f"{size:,} conversations"
        warm = f"median of {scale.metadata_samples}"

        target = partial(_target, at_largest)
        record = median(recording)
        answer = median(server["warm"])  # type: ignore[arg-type]
        first = float(server["first"])  # type: ignore[arg-type]
        rows += [
            Row(CASE3, f"{label}: record one more ({warm})", ms(record),
                *target(RECORD_TARGET, record)),
            Row(CASE3, f"{label}: record one more (another process wrote last, median of "
                f"{CROSS_SAMPLES})", ms(median(cold_recording))),
            Row(CASE3, f"{label}: /statistics ({warm})", ms(answer),
                *target(STATISTICS_TARGET, answer)),
            Row(CASE3, f"{label}: first /statistics of a freshly started server", ms(first),
                *target(FIRST_TARGET, first)),
            Row(CASE3, f"{label}: /conversations page of 100 ({warm})",
                ms(median(server["pages"]))),  # type: ignore[arg-type]
            Row(CASE3, f"{label}: server RSS after those requests (growth over empty store)",
                f"{memory:.1f} MB ({growth:+.1f} MB)", *target(MEMORY_TARGET_MB, growth, "MB")),
            Row(CASE3, f"{label}: JSON export (time; size)",
                f"{export.seconds * 1000:.0f} ms; {export.size_bytes / 1e6:.1f} MB"),
        ]  # fmt: skip
    filler.close()
    database = Path(base / "conversations_metadata.sqlite3")
    rows.append(
        Row(CASE3, "database file size at the end", f"{database.stat().st_size / 1e6:.1f} MB")
    )
    return rows
