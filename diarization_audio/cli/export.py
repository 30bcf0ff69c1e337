"""Export the collected two-leg conversations, with their labels, as a training set.

    python3 export_dataset.py OUTPUT_DIR [--formats rttm,nemo,pyannote,huggingface,lhotse]
                              [--split 80/10/10] [--include-flagged] [--no-progress]

Conversations whose files are not labelled yet are labelled first. The closing line counts every
conversation left out, under each reason it has (a quality flag's name, "without two legs",
"labels missing"). Run again at any time: only what is new or changed is written. Exit codes:
0 exported, 1 unreadable store or audio, 2 bad option or settings.
"""

from __future__ import annotations

import argparse
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
from diarization_audio.dataset.export import ALL_FORMATS, ExportBusy, export_dataset
from diarization_audio.errors import AudioError
from diarization_audio.labels.labeller import label_unlabelled, thresholds_of
from diarization_audio.store.tracker import MetadataTracker


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write the labelled two-leg conversations as a diarization training set: "
        "mixed audio, RTTM and UEM, with indexes for NeMo, pyannote, Hugging Face and lhotse.",
        epilog="Exit codes: 0 exported, 1 unreadable store or audio, 2 bad option or settings.",
    )
    add = parser.add_argument
    add("output_dir", type=Path, metavar="OUTPUT_DIR")
    add("--formats", type=formats, default=list(ALL_FORMATS),
        help=f"comma-separated, default all: {','.join(ALL_FORMATS)}")  # fmt: skip
    add("--split", type=split, default=(80.0, 10.0, 10.0), metavar="TRAIN/DEV/TEST",
        help="shares of the splits (default 80/10/10)")  # fmt: skip
    add("--include-flagged", action="store_true",
        help="also export conversations with quality flags (left out by default)")  # fmt: skip
    add("--metadata-file", type=Path, help="default: METADATA_FILE from the settings")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = script_settings(args.metadata_file)
        tracker = MetadataTracker.from_settings(settings)
        labelled = label_unlabelled(tracker, thresholds_of(settings), settings=settings)
        done = export_dataset(
            tracker.stored_conversations(),
            args.output_dir, formats=args.formats, split=args.split,
            include_flagged=args.include_flagged, progress=not args.no_progress,
            settings=settings,
        )  # fmt: skip
        erased = len(tracker.erased_among(done.removed_ids))
    except ValidationError as exc:
        return fail(EXIT_USAGE, invalid_settings(exc))
    except AudioError as exc:
        return fail(EXIT_FAILED, exc.full_message)
    except ExportBusy as exc:
        return fail(EXIT_FAILED, str(exc))
    except OSError as exc:
        return fail(EXIT_FAILED, f"cannot export: {exc}")
    hours = ", ".join(f"{name} {value:.3f} h" for name, value in done.hours.items())
    print(
        f"exported {done.exported} conversations to {args.output_dir} ({hours}; "
        f"{done.speech_hours:.3f} h of speech): {done.written} written, {done.unchanged} "
        f"unchanged, {done.removed} removed{f' ({erased} erased)' if erased else ''}; "
        f"{done.left_out_text()}" + (f"; labelled {labelled} first" if labelled else "")
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
