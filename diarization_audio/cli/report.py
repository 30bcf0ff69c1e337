"""Storage analysis: progress toward a target, collection rate, speakers, durations, consistency.

It reads the store through metadata_tracker (one read transaction, so one consistent view) and
lists the storage directory; it writes neither, so it is safe to run while the service is
downloading. The consistency check compares the two without a lock;
only a problem it finds is looked at again under the tracker's write lock, so a file that the
service is publishing at that very moment is not reported.

Exit codes: 0 done; 1 the metadata or storage could not be read; 2 bad option or settings;
3 with --check-target, the target is not reached yet; 4 with --strict, consistency problems.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from diarization_audio.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    invalid_settings,
    positive_float,
    script_settings,
)
from diarization_audio.errors import AudioError, StorageError
from diarization_audio.store.json_export import statistics_of
from diarization_audio.store.layout import wav_files
from diarization_audio.store.speech_labels import speech_statistics
from diarization_audio.store.tracker import MetadataTracker

EXIT_BELOW_TARGET, EXIT_INCONSISTENT = 3, 4
RATE_WINDOW = timedelta(hours=24)
SPEAKER_GROUPS = ("agent", "customer", "other")
EXPORT_COLUMNS = [
    "conversation_id", "speaker_label", "filename", "filepath", "url", "duration_seconds",
    "file_size_bytes", "file_size_mb", "sample_rate", "channels", "sha256", "downloaded_at",
    "conversation_created_at", "conversation_updated_at",
]  # fmt: skip
BAR_WIDTH = 40
RECENT_FAILURES = 5
FLAGS_SHOWN = 20
MB = 1024 * 1024


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


def _look_again(tracker: MetadataTracker, storage_dir: Path) -> dict[str, Any]:
    """The check redone with the service's writes held off, so nothing is half-published."""
    rows, on_disk = tracker.file_rows_locked(lambda: wav_files(storage_dir))
    return consistency(rows, on_disk)


# The report ------------------------------------------------------------------------------


def build_report(
    tracker: MetadataTracker, storage_dir: Path, target: float, now: datetime, speech: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything the script prints, as a JSON-ready dictionary, and the rows it came from.

    With `speech`, progress counts speech hours, and the pace of the last 24 hours is taken as
    their audio hours times the collection's speech share.
    """
    rows, totals = tracker.snapshot()
    on_disk = wav_files(storage_dir)
    problems = consistency(rows, on_disk)
    if any(problems.values()):
        problems = _look_again(tracker, storage_dir)
    summary = tracker.speech_summary()
    spoken = sum(summary["speaker_micros"].values())
    stamp = now.isoformat(timespec="seconds")
    stats = statistics_of(totals, target, stamp, spoken if speech else None)
    speech_report = speech_statistics(summary, totals.micros)
    progress = stats["progress"]
    rate = _rate(rows, now, tracker.tz)
    if speech:
        rate["hours_last_24h"] = round(rate["hours_last_24h"] * speech_report["speech_share"], 4)
    rate["measured_in"] = progress["measured_in"]
    report = {
        "generated_at": stats["timestamp"],
        "metadata_store": tracker.name,
        "storage_directory": str(storage_dir),
        "summary": stats["summary"],
        "progress": progress,
        "rate": {**rate, **_projection(progress, rate["hours_last_24h"], now)},
        "speakers": _speakers(rows),
        "speech": speech_report,
        "flagged": [
            {"conversation_id": cid, "reason": reason, "detail": detail}
            for cid, reason, detail in tracker.flags()
        ],
        "durations": _durations(rows),
        "storage": _storage(rows, on_disk, storage_dir),
        "failures": tracker.failure_summary(recent=RECENT_FAILURES),
        "consistency": {"ok": not any(problems.values()), **problems},
    }
    return report, rows


def _rate(rows: list[dict[str, Any]], now: datetime, tz: tzinfo) -> dict[str, Any]:
    cutoff = now - RATE_WINDOW
    seconds = 0.0
    for row in rows:
        moment = datetime.fromisoformat(row["downloaded_at"])
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz)
        if cutoff <= moment <= now:
            seconds += float(row["duration_seconds"])
    return {
        "window_hours": RATE_WINDOW.total_seconds() / 3600,
        "hours_last_24h": round(seconds / 3600, 4),
    }


def _projection(progress: dict[str, Any], per_day: float, now: datetime) -> dict[str, Any]:
    """When the target is reached if collection goes on at the last 24 hours' pace."""
    if progress["target_reached"]:
        return {"days_to_target": 0.0, "projected_target_date": now.date().isoformat()}
    if per_day <= 0:
        return {"days_to_target": None, "projected_target_date": None}
    days = progress["remaining_hours"] / per_day
    try:
        date = (now + timedelta(days=days)).date().isoformat()
    except OverflowError:
        date = None
    return {"days_to_target": round(days, 2), "projected_target_date": date}


def _speakers(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups = {name: {"files": 0, "hours": 0.0} for name in SPEAKER_GROUPS}
    for row in rows:
        group = groups[row["speaker_label"] if row["speaker_label"] in groups else "other"]
        group["files"] += 1
        group["hours"] += float(row["duration_seconds"]) / 3600
    for group in groups.values():
        group["hours"] = round(group["hours"], 4)
    return groups


def _durations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Distribution of conversation lengths (all speakers together), in seconds."""
    per_conversation: dict[str, float] = {}
    for row in rows:
        cid = row["conversation_id"]
        per_conversation[cid] = per_conversation.get(cid, 0.0) + float(row["duration_seconds"])
    seconds = sorted(per_conversation.values())
    if not seconds:
        return {"conversations": 0, "min": None, "median": None, "p90": None, "max": None}
    # quantiles() needs two values; one conversation is its own 90th percentile.
    p90 = statistics.quantiles(seconds, n=10, method="inclusive")[8] if seconds[1:] else seconds[0]
    return {
        "conversations": len(seconds),
        "min": round(seconds[0], 3),
        "median": round(statistics.median(seconds), 3),
        "p90": round(p90, 3),
        "max": round(seconds[-1], 3),
    }


def _storage(
    rows: list[dict[str, Any]], on_disk: dict[str, int], directory: Path
) -> dict[str, Any]:
    try:
        free: int | None = shutil.disk_usage(directory).free
    except OSError:
        free = None
    return {
        "wav_files": len(on_disk),
        "wav_bytes": sum(on_disk.values()),
        "recorded_bytes": sum(int(row["file_size_bytes"]) for row in rows),
        "free_bytes": free,
    }


# Output ----------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    """The report for a person."""
    p, rate, sizes = report["progress"], report["rate"], report["storage"]
    filled = round(BAR_WIDTH * p["progress_percentage"] / 100)
    lines = [
        f"Storage report {report['generated_at']}",
        f"  metadata {report['metadata_store']}, storage {report['storage_directory']}",
        "",
        f"Progress toward {p['target_hours']:g} h of {p['measured_in']}",
        f"  [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {p['progress_percentage']:.2f}%"
        + ("  TARGET REACHED" if p["target_reached"] else ""),
        f"  collected  {_hours(p['current_hours'])} in "
        f"{report['summary']['total_conversations']} conversations",
        f"  remaining  {_hours(p['remaining_hours'])}, about "
        f"{p['estimated_conversations_needed']} more conversations",
        f"  last 24 h  {_hours(rate['hours_last_24h'])} collected; {_eta(rate, p)}",
        "",
        "Hours by speaker",
    ]
    for name, group in report["speakers"].items():
        lines.append(f"  {name:<9} {_hours(group['hours'])} in {group['files']} files")
    lines += ["", *_speech(report["speech"], report["flagged"])]
    d = report["durations"]
    lines += ["", f"Conversation durations ({d['conversations']} conversations)"]
    if d["conversations"]:
        lines.append(
            "  " + "   ".join(f"{key} {_clock(d[key])}" for key in ("min", "median", "p90", "max"))
        )
    free = "unknown" if sizes["free_bytes"] is None else _size(sizes["free_bytes"])
    lines += [
        "",
        "Storage",
        f"  {sizes['wav_files']} .wav files, {_size(sizes['wav_bytes'])} on disk "
        f"(metadata records {_size(sizes['recorded_bytes'])}); {free} free",
        "",
        *_failures(report["failures"]),
        "",
        "Consistency",
        *_problems(report["consistency"]),
    ]
    return "\n".join(lines)


def _speech(speech: dict[str, Any], flagged: list[dict[str, str]]) -> list[str]:
    lines = [
        f"Speech ({speech['labelled_files']} files labelled, {speech['unlabelled_files']} waiting)",
        f"  speech     {_hours(speech['speech_hours'])}, {speech['speech_share']:.1%} of the "
        f"audio; both talking {_hours(speech['overlap_hours'])}",
    ]
    lines += [f"  {name:<9}  {_hours(hours)}"
              for name, hours in speech["speech_hours_by_speaker"].items()]  # fmt: skip
    quality = speech["quality"]
    median = quality["snr_median_db"]
    unknown = speech["labelled_files"] - quality["snr_measured_legs"]
    lines.append(
        f"  SNR        median {'unknown' if median is None else f'{median:.1f} dB'} over "
        f"{quality['snr_measured_legs']} legs ({unknown} without speech or measured before); "
        f"{speech['flags'].get('low_snr', 0)} conversations low_snr"
    )
    lines.append(
        f"  music      {quality['legs_with_music']} legs with music or tones; "
        f"{speech['flags'].get('music', 0)} conversations music"
    )
    lines += ["", f"Flagged conversations: {speech['flagged_conversations']} (left out of "
              "dataset exports unless asked for)"]  # fmt: skip
    lines += [f"  {reason:<22} {count}" for reason, count in speech["flags"].items()]
    lines += [f"  {f['conversation_id']}: {f['reason']}: {f['detail']}"
              for f in flagged[:FLAGS_SHOWN]]  # fmt: skip
    if len(flagged) > FLAGS_SHOWN:
        lines.append(f"  ... {len(flagged) - FLAGS_SHOWN} more (--json lists every one)")
    return lines


def _failures(failures: dict[str, Any]) -> list[str]:
    lines = [f"Failed attempts: {failures['total']} in all, {failures['last_24_hours']} in the "
             "last 24 h"]  # fmt: skip
    lines += [f"  {code:<22} {count}" for code, count in failures["by_error_last_24_hours"].items()]
    lines += [f"  latest: {f['failed_at']} {f['conversation_id']}_{f['speaker_label']} "
              f"{f['error_code']}: {f['detail']}" for f in failures.get("recent", [])]  # fmt: skip
    return lines


def summary_line(report: dict[str, Any]) -> str:
    """The report in one line, for logs (hourly_monitor.sh)."""
    p, rate, c = report["progress"], report["rate"], report["consistency"]
    problems = sum(len(c[k]) for k in ("missing_files", "size_mismatches", "unknown_files"))
    of_speech = " of speech" if p["measured_in"] == "speech" else ""
    return (
        f"{p['current_hours']:.4f}/{p['target_hours']:g} h{of_speech} "
        f"({p['progress_percentage']:.2f}%), "
        f"{report['summary']['total_conversations']} conversations, "
        f"{p['remaining_hours']:.4f} h to go (~{p['estimated_conversations_needed']} "
        f"conversations), last 24 h +{rate['hours_last_24h']:.4f} h, "
        f"projected {rate['projected_target_date'] or 'unknown'}, "
        f"{report['storage']['wav_files']} files {_size(report['storage']['wav_bytes'])}, "
        f"{problems} consistency problems"
    )


def _problems(check: dict[str, Any]) -> list[str]:
    if check["ok"]:
        return ["  OK: every entry has its file and every .wav file has an entry"]
    lines = [f"  missing  {name} (in metadata, not on disk)" for name in check["missing_files"]]
    lines += [
        f"  size     {m['file']} recorded {m['recorded_bytes']} bytes, on disk {m['actual_bytes']}"
        for m in check["size_mismatches"]
    ]
    lines += [f"  unknown  {name} (on disk, not in metadata)" for name in check["unknown_files"]]
    return [f"  {len(lines)} problems:", *lines]


def _eta(rate: dict[str, Any], progress: dict[str, Any]) -> str:
    if progress["target_reached"]:
        return "target reached"
    if rate["projected_target_date"] is None:
        return "no projection (nothing collected in the last 24 h)"
    days, date = rate["days_to_target"], rate["projected_target_date"]
    return f"at this pace the target is reached in {days:g} days, around {date}"


def _hours(hours: float) -> str:
    return f"{hours:.4f} h ({_clock(hours * 3600)})"


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _size(size: int) -> str:
    return f"{size / MB / 1024:.2f} GB" if size >= 1024 * MB else f"{size / MB:.2f} MB"


def export_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows to `path` atomically, the known columns first, then any others."""
    extra = sorted({key for row in rows for key in row} - set(EXPORT_COLUMNS))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=EXPORT_COLUMNS + extra)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
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
    add("--storage-dir", type=Path, help="default: AUDIO_STORAGE_DIR from the settings")
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
        storage_dir = Path(args.storage_dir or settings.audio_storage_dir)
        now = datetime.now(tracker.tz)
        report, rows = build_report(tracker, storage_dir, args.target, now, args.speech)
        written = []
        if args.export_csv:
            export_csv(rows, args.export_csv)
            written.append(f"metadata exported to {args.export_csv}")
        if args.save:
            saved = Path(f"storage_report_{now.strftime('%Y%m%d_%H%M%S')}.json")
            saved.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
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
