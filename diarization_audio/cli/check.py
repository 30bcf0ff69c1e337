"""Smoke test of a running service: health, one conversation downloaded, its WAVs checked.

Passes (exit 0) only when /health says healthy, the service stores every speaker of the
conversation, and each stored file is a readable 16 kHz mono 16-bit WAV whose duration is
non-zero and matches what the service reported. Exit 1 when any of that fails, 2 for an
unusable CSV or option, 3 when the service cannot be reached or refuses the API key.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from diarization_audio.cli.client import ServiceClient, ServiceUnreachable
from diarization_audio.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    invalid_settings,
    positive_float,
)
from diarization_audio.cli.conversations_csv import DEFAULT_CSV, Columns, Row, read_csv
from diarization_audio.errors import AudioError, InvalidInput, Unauthorized
from diarization_audio.settings import get_settings
from diarization_audio.wav import CHANNELS, SAMPLE_RATE, SAMPLE_WIDTH, read_wav_info

EXIT_UNREACHABLE = 3
DURATION_TOLERANCE_SECONDS = 0.01


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Check a running service end to end with one conversation: the first row "
        "of the CSV, or the one given by --conversation-id and --agent-url.",
        epilog="Exit codes: 0 every check passed, 1 a check failed, 2 unusable CSV or option, "
        "3 service unreachable or API key refused.",
    )
    add = parser.add_argument
    add("csv", nargs="?", type=Path, default=DEFAULT_CSV, help="default: %(default)s")
    add("--conversation-id", metavar="ID", help="download this conversation instead of the CSV's")
    add("--agent-url", metavar="URL", help="agent audio URL (with --conversation-id)")
    add("--customer-url", metavar="URL", help="customer audio URL (optional)")
    add("--server", help="service URL (default: http://127.0.0.1:PORT from the settings)")
    add("--storage-dir", type=Path, metavar="DIR", help="where the stored files are read from "
        "(default: the path the service answers)")  # fmt: skip
    add("--overwrite", action="store_true", help="download again even if already stored")
    add("--timeout", type=positive_float, metavar="SECONDS",
        help="longest wait for the download (default: as batch_download_from_csv.py)")  # fmt: skip
    args = parser.parse_args(argv)
    if bool(args.conversation_id) != bool(args.agent_url):
        parser.error("--conversation-id and --agent-url go together")
    if args.customer_url and not args.conversation_id:
        parser.error("--customer-url needs --conversation-id and --agent-url")
    return args


def chosen_row(args: argparse.Namespace) -> Row:
    """The conversation to download: from the options, else the CSV's first data row."""
    if args.conversation_id:
        record = {"conversation_id": args.conversation_id, "agent_audio_url": args.agent_url,
                  "customer_audio_url": args.customer_url or ""}  # fmt: skip
        return Row(0, args.conversation_id, args.agent_url, args.customer_url, record)
    data = read_csv(args.csv, Columns())
    first_valid = data.rows[0].line if data.rows else None
    for line, reason in data.invalid:
        if first_valid is None or line < first_valid:
            raise InvalidInput(f"{args.csv} line {line}: {reason}")
    if not data.rows:
        raise InvalidInput(f"{args.csv} has no conversations")
    return data.rows[0]


def check_file(item: dict[str, Any], storage_dir: Path | None) -> str | None:
    """Why the stored file of one download answer is not right, or None when it is."""
    path = storage_dir / item["filename"] if storage_dir else Path(item["filepath"])
    if not path.is_file():
        return f"{path} is not there (pass --storage-dir if the service stores elsewhere)"
    try:
        info = read_wav_info(path)
    except AudioError as exc:
        return f"{path}: {exc.message}"
    found = (info.sample_rate, info.channels, info.sample_width)
    wanted = (SAMPLE_RATE, CHANNELS, SAMPLE_WIDTH)
    if found != wanted:
        return f"{path} is {_layout(*found)}, not {_layout(*wanted)}"
    if info.duration_seconds <= 0:
        return f"{path} holds no audio"
    if abs(info.duration_seconds - float(item["duration_seconds"])) > DURATION_TOLERANCE_SECONDS:
        return (f"{path} lasts {info.duration_seconds:.3f} s but the service reported "
                f"{item['duration_seconds']} s")  # fmt: skip
    return None


def _layout(rate: int, channels: int, width: int) -> str:
    return f"{rate} Hz, {channels} channel(s), {8 * width}-bit"


def run(client: ServiceClient, row: Row, args: argparse.Namespace) -> list[str]:
    """Every check in order, printing as it goes; returns the problems found."""
    health = client.health()
    ffmpeg, storage = health["ffmpeg"]["version"], health["storage_directory"]
    print(f"service  {client.base_url}: {health['status']}, version {health['version']}, "
          f"ffmpeg {ffmpeg}, storage {storage}")  # fmt: skip
    problems = [] if health["status"] == "healthy" else [f"service is {health['status']}"]
    print(f"download {row.conversation_id}")
    answer = client.download_dual(row.conversation_id, row.agent_url, row.customer_url,
                                  args.overwrite)  # fmt: skip
    for item in answer["downloads"]:
        problem: str | None
        if item["status"] == "failed":
            problem = f"{item['speaker']} failed: {item['error']}"
            print(f"  {item['speaker']:<9} FAILED  {item['error']}")
        else:
            problem = check_file(item, args.storage_dir)
            print(f"  {item['speaker']:<9} {item['status']:<7} {item['filename']}  "
                  f"{item['duration_seconds']:.2f} s  {item['sample_rate']} Hz  "
                  f"{item['channels']} ch  {item['file_size_mb']:.3f} MB  "
                  f"{'OK' if problem is None else 'BAD: ' + problem}")  # fmt: skip
        if problem:
            problems.append(problem)
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = get_settings()
        row = chosen_row(args)
    except ValidationError as exc:
        return fail(EXIT_USAGE, invalid_settings(exc))
    except AudioError as exc:
        return fail(EXIT_USAGE, exc.message)
    try:
        with ServiceClient.from_settings(settings, args.server, args.timeout) as client:
            problems = run(client, row, args)
    except (ServiceUnreachable, Unauthorized) as exc:
        return fail(EXIT_UNREACHABLE, exc.message)
    except AudioError as exc:
        return fail(EXIT_FAILED, f"{row.conversation_id} was not stored: {exc.message}")
    if problems:
        print("RESULT: FAIL")
        return fail(EXIT_FAILED, "; ".join(problems))
    print("RESULT: PASS")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
