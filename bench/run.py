"""Runs the benchmark's cases and prints one table; `python -m bench [--smoke]`."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    case_batch,
    case_bucket,
    case_dashboard,
    case_fixed,
    case_labels,
    case_long,
    case_metadata,
    case_network,
    case_workers,
)
from bench.harness import FULL, ROOT, SMOKE, WORK, Context, Row, machine_summary, render_table
from bench.source import SourceServer

CASES: dict[str, Callable[[Context], list[Row]]] = {
    "1": case_long.run_single,
    "2": case_batch.run,
    "3": case_metadata.run,
    "4": case_long.run_parallel,
    "5": case_workers.run,
    "6": case_fixed.run,
    "7": case_labels.run,
    "8": case_dashboard.run,
    "9": case_network.run,
    "10": case_bucket.run,
}


SMOKE_NOTE = "smoke run: tiny sizes, checks that every case works; its numbers mean nothing"


def _output(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def code_version() -> str:
    """The commit measured, and whether tracked files differed from it when the run ended."""
    git = ["git", "-C", str(ROOT)]
    try:
        commit = _output([*git, "rev-parse", "--short", "HEAD"])
        changed = _output([*git, "status", "--porcelain", "--untracked-files=no"])
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (" with uncommitted changes" if changed else "")


def report(
    rows: list[Row], smoke: bool, argv: list[str], seconds: float, load: tuple[float, float]
) -> str:
    """The whole printed result: when, where, how, then the table."""
    command = "python -m bench " + shlex.join(argv) if argv else "python -m bench"
    return "\n".join(
        [
            f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s in all",
            f"Machine: {machine_summary()}",
            f"Code: {code_version()}",
            f"Load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f}",
            f"Command: `{command}` ({SMOKE_NOTE if smoke else 'full run'})",
            "",
            render_table(rows, smoke),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the service against ffmpeg and yt-dlp.")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks it runs, in seconds"
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated case numbers (default: all)"
    )
    parser.add_argument("--output", type=Path, help="also write the result (markdown) here")
    args = parser.parse_args(argv)
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    scale = SMOKE if args.smoke else FULL
    work = WORK / scale.name
    media = WORK / "media"
    media.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    with SourceServer(media) as source:
        ctx = Context(scale, work, media, source.file_url, source.url, os.cpu_count() or 1)
        for case in chosen:
            case_started = time.monotonic()
            print(f"case {case} ...", file=sys.stderr, flush=True)
            found = CASES[case](ctx)
            rows.extend(found)
            # Each case's rows as soon as it ends, so a long run shows its progress.
            print(render_table(found, args.smoke), file=sys.stderr)
            print(f"case {case} took {time.monotonic() - case_started:.0f} s", file=sys.stderr)
        if source.errors:
            print(f"source server errors: {source.errors}", file=sys.stderr)
            return 1
    result = report(rows, args.smoke, argv if argv is not None else sys.argv[1:],
                    time.monotonic() - started, (load_before, os.getloadavg()[0]))  # fmt: skip
    print(result)
    if args.output:
        args.output.write_text(result + "\n")
    return 0
