"""Case 3: recording one more file, /statistics, start-up, memory and the JSON export, as the
store grows."""

from __future__ import annotations

import mmap
import os
import shutil
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import orjson

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
from diarization_audio.objects import Folder
from diarization_audio.settings import settings_under
from diarization_audio.store.schema import StoredFile
from diarization_audio.store.tracker import MetadataTracker

CASE3 = "3 metadata at scale"
FILL_CHUNK = 20_000  # files per transaction while filling; the fill itself is not measured
CROSS_SAMPLES = 5
# Targets at the largest size: record one file, /statistics, a new server's first /statistics,
# server memory over an empty store.
RECORD_TARGET, STATISTICS_TARGET, FIRST_TARGET, MEMORY_TARGET_MB = 0.020, 0.050, 0.200, 50.0
# ... and a new entry in the JSON export a running server keeps, in the worst case.
EXPORT_TARGET, EXPORT_SAMPLES = 5.0, 5
POLL_SECONDS = 0.002  # how often the export's file is looked at while waiting for it
WAIT_SECONDS = 120.0
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


def _document_state(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` now (a new export is a new file renamed into place)."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_mtime_ns


def _document_holds(path: Path, key: bytes) -> bool:
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return view.find(key) >= 0


def _deadline(started: float, what: str) -> None:
    if time.perf_counter() - started > WAIT_SECONDS:
        raise RuntimeError(f"no {what} within {WAIT_SECONDS:g} s")


def _export_begun(document: Path, before: tuple[int, int] | None) -> None:
    """Wait until an export of `document` is under way: its temporary file beside it (or, for
    one too quick to catch, the document already replaced)."""
    started, temporary = time.perf_counter(), f".{document.name}."
    while _document_state(document) == before and not any(
        e.name.startswith(temporary) and e.name.endswith(".tmp")
        for e in os.scandir(document.parent)
    ):
        _deadline(started, "export after a change")
        time.sleep(POLL_SECONDS)


def _entry_exported(document: Path, conversation_id: str) -> float:
    """Wait until the document renamed into place holds the conversation; when that was seen."""
    started, key = time.perf_counter(), orjson.dumps(conversation_id) + b": {"
    seen = _document_state(document)
    while True:
        state = _document_state(document)
        if state != seen:
            at, seen = time.perf_counter(), state
            if _document_holds(document, key):
                return at
        _deadline(started, f"export holding {conversation_id}")
        time.sleep(POLL_SECONDS)


def _latency(
    document: Path, writer: MetadataTracker, number: int, change: Callable[[], object]
) -> float:
    """Seconds from new conversation `number`'s commit to the exported document holding it,
    committed as soon as the server's exporter is writing the document for `change`."""
    before = _document_state(document)
    change()
    _export_begun(document, before)
    writer.record_file(f"x{number}", "agent", _record(number, "agent"))
    committed = time.perf_counter()
    return _entry_exported(document, f"x{number}") - committed


def _export_latency(
    base: Path, writer: MetadataTracker, first: int, trials: int
) -> tuple[list[float], float]:
    """How long a new conversation takes to appear in the JSON export a running server keeps:
    `trials` times after another new conversation, then once after an erase (which has the
    document written whole). Numbers `first` to `first + 2 * trials` are used.

    Each is committed while the export of the change before it is being written: the worst
    moment, when the entry waits for that export to end, the exporter's rest, and another
    export. The server is a real one with the default METADATA_EXPORT_SECONDS; the records are
    written by this process, as by another worker or a script.
    """
    document = base / "conversations_metadata.json"
    with service(base):
        latencies = [
            _latency(document, writer, n + 1,
                     partial(writer.record_file, f"x{n}", "agent", _record(n, "agent")))
            for n in range(first, first + 2 * trials, 2)
        ]  # fmt: skip
        # Erasing the first conversation stored: where its entry was is not known to the export.
        _, (oldest, *_) = writer.list_conversations(1, 0)
        erase = partial(writer.erase, oldest["conversation_id"], "bench", Folder(base / "store"))
        whole = _latency(document, writer, first + 2 * trials, erase)
    return latencies, whole


def _target(applies: bool, limit: float, value: float, unit: str = "ms") -> tuple[str, bool | None]:
    """The target cell and verdict of a measure, at the size the targets are set for."""
    if not applies:
        return "", None
    if unit == "s":
        return f"<= {limit:g} s", value <= limit
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
        trials = min(EXPORT_SAMPLES, scale.metadata_samples)
        latencies, after_erase = _export_latency(base, writer, extra + 1, trials)
        extra += 2 * trials + 1
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
            Row(CASE3, f"{label}: a new entry visible in the JSON export (latency, worst of "
                f"{trials})", f"{max(latencies):.2f} s (median {median(latencies):.2f} s)",
                *target(EXPORT_TARGET, max(latencies), "s")),
            Row(CASE3, f"{label}: a new entry visible in the JSON export, committed while it is "
                "written whole after an erase (latency)", f"{after_erase:.2f} s"),
        ]  # fmt: skip
    filler.close()
    database = Path(base / "conversations_metadata.sqlite3")
    rows.append(
        Row(CASE3, "database file size at the end", f"{database.stat().st_size / 1e6:.1f} MB")
    )
    return rows
