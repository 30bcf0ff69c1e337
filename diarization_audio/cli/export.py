"""Export the collected two-leg conversations, with their labels, as a training set.

    python3 export_dataset.py OUTPUT [--formats rttm,nemo,pyannote,huggingface,lhotse]
                              [--split 80/10/10] [--include-flagged] [--no-progress]
    python3 export_dataset.py OUTPUT --shards [--shard-size 1GB,1000] [...]

Without --shards, OUTPUT is a folder of loose files; with it, OUTPUT (a folder or
s3://bucket/prefix) gets WebDataset tar shards instead. A run also brings up to date the other
kind of export OUTPUT already holds, so a conversation erased since leaves every export there.
Conversations whose files are not labelled yet are labelled first. Each closing line counts
every conversation left out, under each reason it has (a quality flag's name, "without two
legs", "labels missing"). Run again at any time: only what is new or changed is written. Exit
codes: 0 exported, 1 unreadable store or audio, 2 bad option or settings.
"""

from __future__ import annotations

import argparse
import re
import sys
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
from diarization_audio.dataset.export import (
    ALL_FORMATS,
    ExportBusy,
    ExportSummary,
    export_dataset,
    formats_found,
)
from diarization_audio.dataset.shard_plan import ShardBounds
from diarization_audio.dataset.shards import FOLDER, ShardSummary, export_shards, shards_found
from diarization_audio.errors import AudioError
from diarization_audio.labels.labeller import label_unlabelled, thresholds_of
from diarization_audio.objects import is_bucket_url, split_bucket_url
from diarization_audio.store.tracker import MetadataTracker

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?([a-z]*)")


def formats(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ALL_FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"choose from {', '.join(ALL_FORMATS)} (comma-separated); got {text!r}"
        )
    return chosen


def split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split("/"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0:
        raise argparse.ArgumentTypeError(
            f"give train/development/test shares like 80/10/10; got {text!r}"
        )
    return parts


def shard_size(text: str) -> ShardBounds:
    """Bytes with a unit (500MB, 2GiB), a number of conversations (200), or both (500MB,200);
    the bound not given is lifted."""
    given: dict[str, int] = {}
    for part in text.split(","):
        match = _SIZE.fullmatch(part.strip().lower())
        kind, value = _bound(*match.groups()) if match else ("", 0)
        if value < 1 or kind in given:
            raise argparse.ArgumentTypeError(
                f"give bytes with a unit (500MB, 1GB, 2GiB), a number of conversations (200), "
                f"or both (1GB,500); got {text!r}"
            )
        given[kind] = value
    return ShardBounds(given.get("bytes"), given.get("conversations"))


def _bound(number: str, unit: str) -> tuple[str, int]:
    """("bytes", n) or ("conversations", n); n is 0 when the text is neither."""
    if unit:
        return "bytes", int(float(number) * UNITS[unit]) if unit in UNITS else 0
    return "conversations", 0 if "." in number else int(number)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write the labelled two-leg conversations as a diarization training set: "
        "mixed audio, RTTM and UEM, with indexes for NeMo, pyannote, Hugging Face and lhotse; "
        "or, with --shards, as WebDataset tar shards with NeMo tarred manifests. A run also "
        "brings up to date the other kind of export OUTPUT holds.",
        epilog="Exit codes: 0 exported, 1 unreadable store or audio, 2 bad option or settings.",
    )
    add = parser.add_argument
    add("output", metavar="OUTPUT", help="a folder; with --shards, also s3://bucket/prefix")
    add("--formats", type=formats, default=list(ALL_FORMATS),
        help=f"the loose files' formats, comma-separated, default all: "
        f"{','.join(ALL_FORMATS)}")  # fmt: skip
    add("--split", type=split, default=(80.0, 10.0, 10.0), metavar="TRAIN/DEV/TEST",
        help="shares of the splits (default 80/10/10)")  # fmt: skip
    add("--include-flagged", action="store_true",
        help="also export conversations with quality flags (left out by default)")  # fmt: skip
    add(
        "--shards",
        action="store_true",
        help=f"write WebDataset tar shards under OUTPUT/{FOLDER}/ instead of loose files",
    )
    add("--shard-size", type=shard_size, metavar="SIZE",
        help="close a shard before it passes SIZE: bytes with a unit (500MB, 2GiB), a number "
        "of conversations (200), or both (1GB,500); default 1GB,1000, then what the shards "
        "were last filled to")  # fmt: skip
    add("--metadata-file", type=Path, help="default: METADATA_FILE from the settings")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _usage_error(args: argparse.Namespace) -> str | None:
    if args.shard_size is not None and not args.shards:
        return "--shard-size goes with --shards"
    if not is_bucket_url(args.output):
        return None
    if not args.shards:
        return f"{args.output} is a bucket, which takes only --shards (loose files need a folder)"
    try:
        split_bucket_url(args.output)
    except ValueError as exc:
        return str(exc)
    return None


def _summary_line(done: ExportSummary, where: str, erased: int) -> str:
    """E.g. "exported 9 conversations to OUT (train 1.2 h, ...; 0.8 h of speech): 2 written,
    7 unchanged, 1 removed (1 erased); left out 3 (...)"; for shards, "... to OUT/shards in
    2 shards (...): shards 1 written, 0 renumbered, 1 unchanged, 0 deleted; 1 removed ..."."""
    hours = ", ".join(f"{name} {value:.3f} h" for name, value in done.hours.items())
    removed = f"{done.removed} removed{f' ({erased} erased)' if erased else ''}"
    if isinstance(done, ShardSummary):
        where += f" in {done.shards} shard{'' if done.shards == 1 else 's'}"
        counts = (
            f"shards {done.shards_written} written, {done.shards_renumbered} renumbered, "
            f"{done.shards_unchanged} unchanged, {done.shards_deleted} deleted; {removed}"
        )
    else:
        counts = f"{done.written} written, {done.unchanged} unchanged, {removed}"
    return (
        f"exported {done.exported} conversations to {where} ({hours}; {done.speech_hours:.3f} h "
        f"of speech): {counts}; {done.left_out_text()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output: str = args.output
    problem = _usage_error(args)
    if problem:
        return fail(EXIT_USAGE, problem)
    lines = []
    try:
        settings = script_settings(args.metadata_file)
        tracker = MetadataTracker.from_settings(settings)
        labelled = label_unlabelled(tracker, thresholds_of(settings), settings=settings)
        found = None if is_bucket_url(output) else formats_found(Path(output))
        loose_formats = found if args.shards else args.formats
        if loose_formats is not None:
            done = export_dataset(
                tracker.stored_conversations(), Path(output), formats=loose_formats,
                split=args.split, include_flagged=args.include_flagged,
                progress=not args.no_progress, settings=settings,
            )  # fmt: skip
            erased = len(tracker.erased_among(done.removed_ids))
            lines.append(_summary_line(done, output, erased))
        if args.shards or shards_found(output, settings):
            sharded = export_shards(
                tracker.stored_conversations(), output, settings, split=args.split,
                include_flagged=args.include_flagged, bounds=args.shard_size,
                progress=not args.no_progress,
            )  # fmt: skip
            erased = len(tracker.erased_among(sharded.removed_ids))
            lines.append(_summary_line(sharded, f"{output.rstrip('/')}/{FOLDER}", erased))
    except ValidationError as exc:
        return fail(EXIT_USAGE, invalid_settings(exc))
    except AudioError as exc:
        return fail(EXIT_FAILED, exc.full_message)
    except ExportBusy as exc:
        return fail(EXIT_FAILED, str(exc))
    except OSError as exc:
        return fail(EXIT_FAILED, f"cannot export: {exc}")
    if labelled:
        lines[0] += f"; labelled {labelled} first"
    print("\n".join(lines))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
