"""What the command-line scripts share: exit codes, one-line errors and warnings, number options."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from diarization_audio.settings import Settings, get_settings
from diarization_audio.settings import invalid_settings as invalid_settings  # the scripts' line

# Every script means the same by these; 3 and above are each script's own (see its --help).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def error_line(message: str) -> str:
    """The one line a failure ends with."""
    return f"error: {message}"


def fail(code: int, message: str) -> int:
    """Say what went wrong in one line on stderr and hand back the exit code."""
    print(error_line(message), file=sys.stderr)
    return code


def warn(message: str) -> None:
    """Something the user should know that does not stop the script, in one line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}")
    return value


def script_settings(metadata_file: Path | None) -> Settings:
    """The settings a script runs with: the environment's, with its --metadata-file if given."""
    settings = get_settings()
    if metadata_file:
        settings = settings.model_copy(update={"metadata_file": metadata_file})
    return settings
