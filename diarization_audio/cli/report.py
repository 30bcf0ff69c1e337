"""Storage analysis: progress toward a target, collection rate, speakers, durations, consistency.

Its figures are the store's reports (store/reports.py) and the projection of
diarization_audio.progress, the same as the dashboard's. It reads the store and
lists the storage directory; it writes neither, so it is safe to run while the service is
downloading. The consistency check compares the two without a lock;
only a problem it finds is looked at again under the tracker's write lock, so a file that the
service is publishing at that very moment is not reported.

Exit codes: 0 done; 1 the metadata or storage could not be read; 2 bad option or settings;
3 with --check-target, the target is not reached yet; 4 with --strict, consistency problems.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from diarization_audio import progress
from diarization_audio.atomic import write_atomically
from diarization_audio.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    invalid_settings,
    positive_float,
    script_settings,
)
from diarization_audio.cli.report_text import render, summary_line
from diarization_audio.errors import AudioError, StorageError
from diarization_audio.objects import Folder, Place, audio_place
from diarization_audio.store.layout import wav_files
from diarization_audio.store.reports import LAST_DAY_SECONDS, SpeakerTotal, speech_statistics
from diarization_audio.store.tracker import MetadataTracker

EXIT_BELOW_TARGET, EXIT_INCONSISTENT = 3, 4
SPEAKER_GROUPS = ("agent", "customer", "other")
EXPORT_COLUMNS = [
    "conversation_id", "speaker_label", "filename", "filepath", "url", "duration_seconds",
    "file_size_bytes", "file_size_mb", "sample_rate", "channels", "sha256", "downloaded_at",
    "conversation_created_at", "conversation_updated_at",
]  # fmt: skip
RECENT_FAILURES = 5


# Reading ---------------------------------------------------------------------------------


def consistency(rows: list[dict[str, Any]], on_disk: dict[str, int]) -> dict[str, Any]:
    """Entries whose file is missing or of another size, and .wav files no entry knows."""
    missing, mismatched = [], []
    for row in rows:
        size = on_disk.get(row["filename"])
        if size is None:
            missing.append(row["filename"])
        elif size != row["file_size_bytes"]:
            recorded = row["file_size_bytes"]
            mismatched.append(
                {"file": row["filename"], "recorded_bytes": recorded, "actual_bytes": size}
            )
    unknown = sorted(set(on_disk) - {row["filename"] for row in rows})
    return {
        "missing_files": sorted(missing),
        "size_mismatches": mismatched,
        "unknown_files": unknown,
    }


def _look_again(tracker: MetadataTracker, place: Place) -> dict[str, Any]:
    """The check redone with the service's writes held off, so nothing is half-published."""
    rows, on_disk = tracker.file_rows_locked(lambda: wav_files(place))
    return consistency(rows, on_disk)


# The report ------------------------------------------------------------------------------


def build_report(
    tracker: MetadataTracker, place: Place, target: float, now: datetime, speech: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything the script prints, as a JSON-ready dictionary, and the rows it came from.

    With `speech`, progress counts speech hours, and the rate is the audio rate times the
    collection's speech share (diarization_audio.progress says how the target date is projected).
    """
    rows, _ = tracker.snapshot()
    on_disk = wav_files(place)
    problems = consistency(rows, on_disk)
    if any(problems.values()):
        problems = _look_again(tracker, place)
    today = now.date()
    start = progress.first_day(today, 1)
    figures = tracker.report(start.isoformat(), RECENT_FAILURES)
    totals = figures.totals
    spoken = sum(figures.speech["speaker_micros"].values())
    stats = progress.statistics_of(
        totals, target, now.isoformat(timespec="seconds"), spoken if speech else None
    )
    toward = stats["progress"]
    share = progress.speech_share(spoken, totals.micros) if speech else 1.0
    trend = progress.daily({d.day: d.seconds for d in figures.days}, start, today, totals.first)[-1]
    projection = progress.project(toward, trend.trend * share, now)
    report = {
        "generated_at": stats["timestamp"],
        "metadata_store": tracker.name,
        "storage_directory": place.url,
        "summary": stats["summary"],
        "progress": toward,
        "rate": {
            "window_hours": LAST_DAY_SECONDS / 3600,
            "hours_last_24h": progress.hours(figures.last_day_micros * share),
            "measured_in": toward["measured_in"],
            "hours_per_day": projection.hours_per_day,
            "rate_days": trend.trend_days,
            "rate_rule": progress.rate_rule(trend.trend_days),
            "days_to_target": projection.days_to_target,
            "projected_target_date": projection.projected_date,
        },
        "speakers": _speakers(figures.speakers),
        "speech": speech_statistics(figures.speech, totals.micros),
        "flagged": [
            {"conversation_id": cid, "reason": reason, "detail": detail}
            for cid, reason, detail in tracker.flags()
        ],
        "durations": {"conversations": figures.lengths.conversations}
        | {key: figures.lengths.quantiles.get(key) for key in ("min", "median", "p90", "max")},
        "storage": _storage(rows, on_disk, place),
        "failures": figures.failures,
        "erased_conversations": figures.erased,
        "consistency": {"ok": not any(problems.values()), **problems},
    }
    return report, rows


def _speakers(speakers: list[SpeakerTotal]) -> dict[str, dict[str, Any]]:
    """Files and audio hours of the agents, the customers, and every other label together."""
    groups = {name: {"files": 0, "micros": 0} for name in SPEAKER_GROUPS}
    for speaker in speakers:
        label = speaker.speaker_label
        group = groups[label if label in groups else "other"]
        group["files"] += speaker.files
        group["micros"] += speaker.audio_micros
    return {
        name: {"files": group["files"], "hours": progress.hours(group["micros"])}
        for name, group in groups.items()
    }


def _storage(rows: list[dict[str, Any]], on_disk: dict[str, int], place: Place) -> dict[str, Any]:
    free: int | None = None
    if isinstance(place, Folder):  # a bucket has no free space to speak of
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(place.directory).free
    return {
        "wav_files": len(on_disk),
        "wav_bytes": sum(on_disk.values()),
        "recorded_bytes": sum(int(row["file_size_bytes"]) for row in rows),
        "free_bytes": free,
    }


def export_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows to `path` atomically, the known columns first, then any others."""
    extra = sorted({key for row in rows for key in row} - set(EXPORT_COLUMNS))

    def write(handle: IO[str]) -> None:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS + extra)
        writer.writeheader()
        writer.writerows(rows)

    try:
        write_atomically(path, write, newline="")
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc


# The command -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Progress toward a target in hours, collection rate, hours per speaker, "
        "duration distribution, storage used, and a consistency check of metadata and files.",
        epilog="Exit codes: 0 done, 1 unreadable metadata or storage, 2 bad option or settings, "
        "3 target not reached (with --check-target), 4 problems found (with --strict).",
    )
    add = parser.add_argument
    add("--target", type=positive_float, default=100.0, metavar="HOURS", help="default: 100")
    add("--metadata-file", type=Path, help="default: METADATA_FILE from the settings")
    add(
        "--storage-dir",
        type=Path,
        help="a folder to check (default: AUDIO_STORAGE_URL's bucket, else AUDIO_STORAGE_DIR)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--summary-line", action="store_true", help="print it as one line")
    add(
        "--export-csv",
        nargs="?",
        const=Path("conversations_metadata.csv"),
        type=Path,
        metavar="PATH",
        help="one row per stored file (default: %(const)s)",
    )
    add("--save", action="store_true", help="also write storage_report_<timestamp>.json")
    add("--strict", action="store_true", help="exit 4 when the consistency check finds problems")
    add("--check-target", action="store_true", help="exit 3 while the target is not reached")
    add("--speech", action="store_true", help="count progress toward the target in speech hours")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = script_settings(args.metadata_file)
        tracker = MetadataTracker.from_settings(settings)
        place = Folder(args.storage_dir) if args.storage_dir else audio_place(settings)
        now = datetime.now(tracker.tz)
        report, rows = build_report(tracker, place, args.target, now, args.speech)
        written = []
        if args.export_csv:
            export_csv(rows, args.export_csv)
            written.append(f"metadata exported to {args.export_csv}")
        if args.save:
            saved = Path(f"storage_report_{now.strftime('%Y%m%d_%H%M%S')}.json")
            write_atomically(
                saved, lambda handle: handle.write(json.dumps(report, indent=2) + "\n")
            )
            written.append(f"report saved to {saved}")
    except ValidationError as exc:
        return fail(EXIT_USAGE, invalid_settings(exc))
    except AudioError as exc:
        return fail(EXIT_FAILED, exc.full_message)
    except OSError as exc:
        return fail(EXIT_FAILED, f"cannot write the report: {exc}")
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.summary_line:
        print(summary_line(report))
    else:
        print(render(report))
    for line in written:  # stdout stays pure JSON or one line for the tools that read it
        print(line, file=sys.stderr if args.json or args.summary_line else sys.stdout)
    if args.strict and not report["consistency"]["ok"]:
        return fail(EXIT_INCONSISTENT, "the metadata and the stored files disagree (see above)")
    if args.check_target and not report["progress"]["target_reached"]:
        return EXIT_BELOW_TARGET
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
