"""`metadata_tracker.py`: the store's statistics, its JSON export, labelling what it holds,
and erasing conversations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

from diarization_audio.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    invalid_settings,
    script_settings,
)
from diarization_audio.cli.conversations_csv import read_ids
from diarization_audio.errors import AudioError
from diarization_audio.labels.labeller import (
    label_unlabelled,
    relabel_other_detectors,
    thresholds_of,
)
from diarization_audio.logs import setup_logging
from diarization_audio.names import validate_name
from diarization_audio.objects import Place, audio_place
from diarization_audio.store.tracker import MetadataTracker


def main(argv: list[str] | None = None) -> int:
    """Print the collection statistics as the service computes them, or write the JSON export."""
    parser = argparse.ArgumentParser(
        description="Print statistics of the collected audio, or write the JSON export."
    )
    parser.add_argument("--target", type=float, default=100.0, help="target hours (default 100)")
    parser.add_argument(
        "--metadata-file", type=Path,
        help="the JSON document (default METADATA_FILE); the default SQLite store sits beside it",
    )  # fmt: skip
    parser.add_argument(
        "--export-json", action="store_true", help="write the JSON document from the store now"
    )
    parser.add_argument(
        "--speech", action="store_true", help="count progress toward the target in speech hours"
    )
    parser.add_argument(
        "--label", action="store_true",
        help="label the speech of every stored file that has no labels yet (e.g. imported ones)",
    )  # fmt: skip
    parser.add_argument(
        "--relabel", action="store_true",
        help="with --label: also label again every conversation whose labels another detector, "
        "or another version of it, made than the current default",
    )  # fmt: skip
    parser.add_argument(
        "--erase", metavar="ID",
        help="erase one conversation: its stored WAVs, records, speech labels, flags and failure "
        "rows; a tombstone refuses its download from then on (410 erased)",
    )  # fmt: skip
    parser.add_argument(
        "--erase-file", metavar="IDS.csv", type=Path,
        help="erase every conversation of a CSV (its conversation_id column, or without that "
        "header the first column)",
    )  # fmt: skip
    parser.add_argument(
        "--reason", default="", help="with --erase or --erase-file: why, kept in the tombstone"
    )
    args = parser.parse_args(argv)
    if args.relabel and not args.label:
        parser.error("--relabel goes with --label")
    if args.reason and not (args.erase or args.erase_file):
        parser.error("--reason goes with --erase or --erase-file")
    try:
        settings = script_settings(args.metadata_file)
        tracker = MetadataTracker.from_settings(settings)
        if args.erase or args.erase_file:
            setup_logging(settings, console=False)  # each erase is logged, as the service's are
            ids = [validate_name("conversation_id", args.erase)] if args.erase else []
            if args.erase_file:
                ids += read_ids(args.erase_file)
            erase(tracker, list(dict.fromkeys(ids)), args.reason, audio_place(settings))
            return EXIT_OK
        if args.export_json:
            done = tracker.export_json(force=True)
            assert done is not None
            print(f"exported {done.conversations} conversations to {done.path} "
                  f"({done.size_bytes / 1e6:.1f} MB, {done.seconds:.2f} s)")  # fmt: skip
            return EXIT_OK
        if args.label:
            thresholds = thresholds_of(settings)
            print(
                f"labelled {label_unlabelled(tracker, thresholds, settings=settings)} conversations"
            )
            if args.relabel:
                count, detector = relabel_other_detectors(tracker, thresholds, settings=settings)
                print(f"relabelled {count} conversations labelled by another detector than "
                      f"{detector}")  # fmt: skip
            return EXIT_OK
        stats = tracker.statistics(args.target, args.speech)
    except ValidationError as exc:
        return fail(EXIT_USAGE, invalid_settings(exc))
    except AudioError as exc:
        return fail(EXIT_FAILED, exc.full_message)
    print(json.dumps(stats, indent=2))
    return EXIT_OK


def erase(tracker: MetadataTracker, ids: list[str], reason: str, place: Place) -> None:
    """Erase each conversation in turn, one line each; stops at the first that fails."""
    files = 0
    for conversation_id in ids:
        done = tracker.erase(conversation_id, reason, place)
        files += done.files
        print(f"erased {conversation_id}: {done.files} files, {done.duration_seconds:.2f} s "
              f"(at {done.erased_at})")  # fmt: skip
    print(f"erased {len(ids)} conversations ({files} files)")


if __name__ == "__main__":
    raise SystemExit(main())
