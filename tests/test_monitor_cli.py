"""hourly_monitor.sh as cron runs it: a bare environment, any directory, one run at a time."""

from __future__ import annotations

import fcntl
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import populated_service
from conftest import ROOT
from source_server import SourceServer

from settings import Settings

SCRIPT = ROOT / "hourly_monitor.sh"
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}"
SUMMARY = re.compile(rf"^{STAMP} 0\.0067/(?P<target>[\d.]+) h \([\d.]+%\), 6 conversations, .*"
                     r", 12 files [\d.]+ MB, 0 consistency problems$")  # fmt: skip


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, source_server: SourceServer
) -> Iterator[Settings]:
    """Twelve two-second files stored through a real service (stopped once they are in)."""
    with populated_service(tmp_path_factory.mktemp("monitored"), source_server) as (settings, _):
        pass
    yield settings


def cron_command(settings: Settings, home: Path, **variables: str) -> list[str]:
    """The monitor under `env -i`: nothing but PATH, HOME and what the crontab line would set."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "METADATA_FILE": str(settings.metadata_file),
        "AUDIO_STORAGE_DIR": str(settings.audio_storage_dir),
        "LOG_DIR": str(home / "logs"),
        "HOURLY_LOG_FILE": str(home / "hourly_log.txt"),
        "HOURLY_LOCK_FILE": str(home / "hourly.lock"),
        **variables,
    }
    return ["env", "-i", *(f"{key}={value}" for key, value in env.items()), str(SCRIPT)]


def cron(settings: Settings, home: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    command = cron_command(settings, home, **variables)
    return subprocess.run(command, cwd="/", capture_output=True, text=True, timeout=60)


def log_lines(home: Path) -> list[str]:
    return (home / "hourly_log.txt").read_text().splitlines()


def test_cron_environment_appends_one_summary_line_per_run(store: Settings, tmp_path: Path) -> None:
    """From / with only PATH and HOME, each run appends a timestamped summary, target 100 h."""
    for _ in range(2):
        run = cron(store, tmp_path)
        assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    lines = log_lines(tmp_path)
    assert len(lines) == 2
    for line in lines:
        match = SUMMARY.match(line)
        assert match and match["target"] == "100"
    assert not any("TARGET REACHED" in line for line in lines)


def test_target_reached_is_logged_every_run_and_its_command_runs_once(
    store: Settings, tmp_path: Path
) -> None:
    """Past TARGET_HOURS every run says TARGET REACHED; TARGET_REACHED_COMMAND runs only once."""
    fired = tmp_path / "fired.txt"
    variables = {
        "TARGET_HOURS": "0.005",
        "TARGET_REACHED_COMMAND": f"echo done >> {fired}; echo ok",
    }
    for _ in range(2):
        assert cron(store, tmp_path, **variables).returncode == 0
    lines = log_lines(tmp_path)
    assert [line.split(" ", 3)[3] for line in lines if "TARGET" in line] == [
        "TARGET REACHED: 0.005 h", "TARGET_REACHED_COMMAND exited 0: ok", "TARGET REACHED: 0.005 h",
    ]  # fmt: skip
    assert fired.read_text() == "done\n"
    assert SUMMARY.match(lines[0]) and SUMMARY.match(lines[3])


def test_one_run_at_a_time(store: Settings, tmp_path: Path) -> None:
    """A run that finds the lock taken logs SKIPPED and leaves; runs started together never mix."""
    with open(tmp_path / "hourly.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = cron(store, tmp_path)
    assert run.returncode == 0
    assert re.match(
        rf"^{STAMP} SKIPPED: another hourly_monitor.sh run holds ", log_lines(tmp_path)[0]
    )

    together = [subprocess.Popen(cron_command(store, tmp_path), cwd="/") for _ in range(2)]
    assert [proc.wait(60) for proc in together] == [0, 0]
    lines = log_lines(tmp_path)[1:]
    assert len(lines) == 2
    assert all(SUMMARY.match(line) or " SKIPPED: " in line for line in lines)
    assert any(SUMMARY.match(line) for line in lines)


def test_failure_is_logged_and_reported_to_cron(store: Settings, tmp_path: Path) -> None:
    """An unreadable metadata file gives exit 1, an ERROR log line and one line on stderr."""
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    run = cron(store, tmp_path, METADATA_FILE=str(broken))
    assert run.returncode == 1
    assert run.stderr.startswith("hourly_monitor.sh: error: metadata file ")
    assert len(run.stderr.splitlines()) == 1
    (line,) = log_lines(tmp_path)
    assert re.match(rf"^{STAMP} ERROR \(exit 1\): error: metadata file ", line)


def test_help_prints_the_crontab_line_and_runs_nothing(tmp_path: Path) -> None:
    """--help shows how to install it in cron and leaves no log behind."""
    run = subprocess.run([str(SCRIPT), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0
    assert "0 * * * * TARGET_HOURS=100 /absolute/path/to/hourly_monitor.sh" in run.stdout
    assert "TARGET_REACHED_COMMAND" in run.stdout and list(tmp_path.iterdir()) == []
