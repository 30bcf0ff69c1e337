"""The hourly monitor's decisions: the progress line, TARGET REACHED, and its command run once.

hourly_monitor.sh is only the cron glue (its folder, the lock, the Python); it calls this
module, which appends every line to the hourly log, stamped in LOG_TIMEZONE as the service's
own log is:

    2026-11-24 09:00:01+05:30 61.2031/100 h (61.20%), 3672 conversations, ...
    2026-11-24 10:00:01+05:30 100.0120/100 h (100.00%), 6001 conversations, ...
    2026-11-24 10:00:01+05:30 TARGET REACHED: 100 h
    2026-11-24 10:00:02+05:30 TARGET_REACHED_COMMAND exited 0: mail sent

The numbers are analyze_storage.py's summary line. Once the target is met every run writes
`TARGET REACHED: N h`; the command runs on the first run that finds no such line for the same
target in the log, so raising the target arms it again. A failure is an `ERROR (exit N): error:
...` line in the log and the same line on stderr, where cron mails it.

The command gets `--command-timeout` seconds (10 minutes by default); past that its whole process
group is killed and the log says so, so a command that hangs cannot keep the run, and with it
the cron lock, forever.

Exit codes: 0 the progress was logged, target reached or not; 1 the metadata or storage could not
be read, or the log could not be written; 2 a bad option or setting.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from diarization_audio.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    error_line,
    invalid_settings,
    positive_float,
)
from diarization_audio.cli.report import build_report
from diarization_audio.cli.report_text import summary_line
from diarization_audio.errors import AudioError
from diarization_audio.objects import audio_place
from diarization_audio.settings import Settings, get_settings
from diarization_audio.store.tracker import MetadataTracker

JOB = "hourly_monitor.sh"  # the name cron and the log know this job by
COMMAND_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class HourlyLog:
    """The log file; `tz` None stamps in the machine's zone, for when the settings are unusable."""

    path: Path
    tz: tzinfo | None

    def write(self, message: str) -> None:
        moment = datetime.now(self.tz) if self.tz else datetime.now().astimezone()
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{moment.isoformat(sep=' ', timespec='seconds')} {message}\n")

    def has(self, message: str) -> bool:
        """Whether an earlier run logged `message` (whatever the stamp's format then)."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                return any(line.rstrip("\n").endswith(f" {message}") for line in handle)
        except FileNotFoundError:
            return False


class Failure(Exception):
    """Why this run cannot log the progress, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One hourly progress check (hourly_monitor.sh runs it from cron): append the "
        "progress line to the log, then TARGET REACHED once the target is met, and run the "
        "command the first time it is.",
        epilog="Exit codes: 0 progress logged, 1 unreadable metadata or storage or log, "
        "2 bad option or settings.",
    )
    add = parser.add_argument
    add("--log-file", type=Path, default=Path("hourly_log.txt"), metavar="PATH",
        help="the log to append to (default: %(default)s)")  # fmt: skip
    # Checked in main(), not by argparse, so that a bad TARGET_HOURS is logged like any error.
    add("--target", default="100", metavar="HOURS", help="hours to collect (default 100)")
    add("--command", default="", metavar="SHELL_COMMAND",
        help="run with bash, once, when the target is first reached")  # fmt: skip
    add("--command-timeout", type=positive_float, default=COMMAND_TIMEOUT_SECONDS,
        metavar="SECONDS", help="kill the command and all it started after this long "
        "(default %(default)g)")  # fmt: skip
    add("--speech", action="store_true", help="count the target in speech hours")
    add("--skipped", type=Path, metavar="LOCK_FILE",
        help="only log that another run holds LOCK_FILE, and check nothing")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = HourlyLog(args.log_file, None)
    try:
        settings = get_settings()
        log = HourlyLog(args.log_file, ZoneInfo(settings.log_timezone))  # checked by Settings
        if args.skipped:
            log.write(f"SKIPPED: another {JOB} run holds {args.skipped}")
            return EXIT_OK
        check(log, settings, _target(args.target), args.command, args.speech, args.command_timeout)
    except ValidationError as exc:
        return _failed(log, Failure(EXIT_USAGE, invalid_settings(exc)))
    except Failure as failure:
        return _failed(log, failure)
    except AudioError as exc:
        return _failed(log, Failure(EXIT_FAILED, exc.full_message))
    except OSError as exc:  # the log itself: say so where cron sees it, the only place left
        print(f"{JOB}: {error_line(f'cannot write the log {log.path}: {exc}')}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def check(
    log: HourlyLog,
    settings: Settings,
    target: float,
    command: str,
    speech: bool = False,
    command_timeout: float = COMMAND_TIMEOUT_SECONDS,
) -> None:
    """Log the progress line; past the target, the marker, and the command's outcome once."""
    tracker = MetadataTracker.from_settings(settings)
    try:
        now = datetime.now(tracker.tz)
        report, _ = build_report(tracker, audio_place(settings), target, now, speech)
    finally:
        tracker.close()
    log.write(summary_line(report))
    if not report["progress"]["target_reached"]:
        return
    marker = f"TARGET REACHED: {target:g} h" + (" of speech" if speech else "")
    first_time = not log.has(marker)
    log.write(marker)
    if first_time and command:
        log.write(run_command(command, command_timeout))


def run_command(command: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
    """Run the command with bash in the current folder, in a process group of its own that is
    killed whole after `timeout` seconds; the log line saying how it went."""
    try:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return f"TARGET_REACHED_COMMAND could not start: {exc}"
    try:
        output, _ = proc.communicate(timeout=timeout)
        outcome = f"exited {proc.returncode}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:  # what it printed before; a process that left the group may still hold the pipe
            output, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            output = b""
        proc.kill()
        proc.wait()
        outcome = f"killed after {timeout:g} s (--command-timeout)"
    text = (output or b"").decode(errors="replace").rstrip("\n").replace("\n", " | ")
    return f"TARGET_REACHED_COMMAND {outcome}" + (f": {text}" if text else "")


def _target(text: str) -> float:
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError as exc:
        raise Failure(EXIT_USAGE, f"invalid target hours (TARGET_HOURS): {exc}") from exc


def _failed(log: HourlyLog, failure: Failure) -> int:
    """The error in the log and on stderr (cron mails it); a log that cannot be written too."""
    line = error_line(failure.message)
    print(f"{JOB}: {line}", file=sys.stderr)
    try:
        log.write(f"ERROR (exit {failure.code}): {line}")
    except OSError as exc:
        print(f"{JOB}: {error_line(f'cannot write the log {log.path}: {exc}')}", file=sys.stderr)
    return failure.code


if __name__ == "__main__":
    raise SystemExit(main())
