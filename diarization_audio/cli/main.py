"""`diarization-audio COMMAND ...`: every command of the product under one installed name.

Each subcommand is the same `main(argv)` as the script at the repository root, imported only
when it is run, so `diarization-audio batch` loads no server, store or ffmpeg code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Protocol

from diarization_audio import __version__

PROG = "diarization-audio"
# name -> (module, what it does, the root script that runs the same command)
COMMANDS = {
    "serve": ("diarization_audio.cli.serve", "the HTTP service and dashboard", "main.py"),
    "batch": ("diarization_audio.cli.batch", "download a CSV's conversations through it",
              "batch_download_from_csv.py"),
    "check": ("diarization_audio.cli.check", "check it end to end with one conversation",
              "test_single_download.py"),
    "report": ("diarization_audio.cli.report", "progress, rate, speakers, consistency",
               "analyze_storage.py"),
    "monitor": ("diarization_audio.cli.monitor", "one hourly progress check, for cron",
                "hourly_monitor.sh"),
    "store": ("diarization_audio.cli.store", "statistics, JSON export, labelling",
              "metadata_tracker.py"),
    "export": ("diarization_audio.cli.export", "write the training set", "export_dataset.py"),
    "demo": ("diarization_audio.cli.demo", "the whole workflow offline", "make demo"),
}  # fmt: skip


class Command(Protocol):
    def main(self, argv: list[str] | None = None) -> int: ...


def available() -> dict[str, tuple[str, str, str]]:
    """The commands whose module is part of this installation."""
    return {
        name: command
        for name, command in COMMANDS.items()
        if importlib.util.find_spec(command[0]) is not None
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = available()
    if argv and argv[0] in commands:
        module: Command = importlib.import_module(commands[argv[0]][0])
        sys.argv[0] = f"{PROG} {argv[0]}"  # each command's usage line names it so
        return module.main(argv[1:])
    width = max(map(len, commands))
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] [--version] COMMAND [ARGUMENT ...]",
        description="Collect two-party call audio for speaker-diarization training.",
        epilog=f"{'commands:':<{width + 47}}the same as\n"
        + "\n".join(
            f"  {name:<{width}}  {what:<42} {script}"
            for name, (_, what, script) in commands.items()
        )
        + f"\n\n`{PROG} COMMAND --help` describes each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("command", choices=commands, metavar="COMMAND", help="one of those below")
    parser.parse_args(argv)  # --help, --version or a usage error: each ends the program
    return 2  # unreachable: a known command was run above


if __name__ == "__main__":
    raise SystemExit(main())
