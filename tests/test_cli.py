"""What the scripts share (cli/common.py): invalid settings and bad numbers end in the same way."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ROOT
from support.cli_helpers import use_settings

from diarization_audio.cli import batch as batch_download_from_csv
from diarization_audio.cli import check as test_single_download
from diarization_audio.cli import report as analyze_storage
from diarization_audio.cli import serve as main
from diarization_audio.cli import store as metadata_tracker
from diarization_audio.service.process import free_port
from diarization_audio.settings import Settings, get_settings

SCRIPTS: dict[str, Callable[[list[str] | None], int]] = {
    "batch_download_from_csv.py": batch_download_from_csv.main,
    "test_single_download.py": test_single_download.main,
    "analyze_storage.py": analyze_storage.main,
    "metadata_tracker.py": metadata_tracker.main,
    "main.py": main.main,  # `make run`
}
BAD_SETTINGS = {
    "DOWNLOAD_RETRIES": ("99", "Input should be less than or equal to 20"),
    "LOG_TIMEZONE": ("Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
}


@pytest.mark.parametrize("variable", BAD_SETTINGS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_an_invalid_setting_is_one_line_naming_it_and_exit_2(
    script: str,
    variable: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A setting out of range or unknown is one `error: invalid settings: NAME: ...` line and
    exit 2, before anything starts."""
    value, message = BAD_SETTINGS[variable]
    use_settings(monkeypatch, settings)
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        assert SCRIPTS[script]([]) == 2
    finally:
        get_settings.cache_clear()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: invalid settings: {variable}: {message}\n"


@pytest.mark.parametrize(
    ("script", "option", "value", "message"),
    [
        ("batch_download_from_csv.py", "--concurrency", "0", "must be at least 1; got 0"),
        ("batch_download_from_csv.py", "--concurrency", "two", "not a whole number: 'two'"),
        ("batch_download_from_csv.py", "--stop-at-target", "-5", "must be a positive number"),
        ("batch_download_from_csv.py", "--timeout", "nan", "must be a positive number"),
        ("test_single_download.py", "--timeout", "0", "must be a positive number; got '0'"),
        ("analyze_storage.py", "--target", "inf", "must be a positive number; got 'inf'"),
        ("analyze_storage.py", "--target", "lots", "not a number: 'lots'"),
    ],
)
def test_numbers_that_must_be_positive_are_refused_as_usage_errors(
    script: str,
    option: str,
    value: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Zero, negative, infinite or non-numeric values of a count or a duration are exit 2."""
    with pytest.raises(SystemExit) as stopped:
        SCRIPTS[script]([option, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {option}: {message}" in err


def test_the_default_csv_is_the_checkouts_example() -> None:
    """Run without a CSV argument, the batch script reads examples/conversations.csv."""
    from diarization_audio.cli.conversations_csv import DEFAULT_CSV

    assert Path(__file__).resolve().parents[1] / "examples" / "conversations.csv" == DEFAULT_CSV
    assert DEFAULT_CSV.is_file()


@pytest.mark.parametrize("workers", [1, 2])
def test_uvicorn_with_an_invalid_setting_says_one_line_and_stops(
    workers: int, tmp_path: Path
) -> None:
    """`uvicorn main:app` (with or without --workers) and a bad setting: the error line naming
    it, no traceback, and the server stops instead of starting workers again and again."""
    env = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "PORT", "HOST"}}
    env["DOWNLOAD_RETRIES"] = "99"
    port = str(free_port())
    command = [sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(ROOT),
               "--host", "127.0.0.1", "--port", port, "--workers", str(workers)]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    line = "error: invalid settings: DOWNLOAD_RETRIES: Input should be less than or equal to 20"
    assert "Traceback" not in done.stderr
    assert line in done.stderr.splitlines()
    if workers == 1:
        assert done.returncode == 2
        assert done.stderr.splitlines() == [line]
    else:  # each worker says it once; the supervisor is stopped, not restarting them
        assert done.stderr.count(line) == workers
