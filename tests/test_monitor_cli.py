"""hourly_monitor.sh as cron runs it (a bare environment, any directory, one run at a time), and
the decisions of cli/monitor.py, its Python side, called directly."""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import ROOT
from support.cli_helpers import populated_service, use_settings
from support.source_server import SourceServer
from support.stores import make_settings

from diarization_audio.cli import monitor as progress_monitor
from diarization_audio.settings import Settings, get_settings

SCRIPT = ROOT / "hourly_monitor.sh"
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d"
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
        # cron's PATH, after the folder of the Python running these tests: in a checkout without
        # .venv (a git worktree) that is the python3 the script falls back to.
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
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
    """From / with only PATH and HOME, each run appends a summary stamped in LOG_TIMEZONE's
    default (Asia/Kolkata, whatever the machine's zone), target 100 h."""
    for _ in range(2):
        run = cron(store, tmp_path)
        assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    lines = log_lines(tmp_path)
    assert len(lines) == 2
    for line in lines:
        match = SUMMARY.match(line)
        assert match and match["target"] == "100"
        assert line[19:26] == "+05:30 "
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
    assert [line.split(" ", 2)[2] for line in lines if "TARGET" in line] == [
        "TARGET REACHED: 0.005 h", "TARGET_REACHED_COMMAND exited 0: ok", "TARGET REACHED: 0.005 h",
    ]  # fmt: skip
    assert fired.read_text() == "done\n"
    assert SUMMARY.match(lines[0]) and SUMMARY.match(lines[3])


def test_target_in_speech_counts_speech_hours(store: Settings, tmp_path: Path) -> None:
    """TARGET_IN_SPEECH=1 measures the target in speech hours: the stored test tones hold
    audio hours past a 0.005 h target but no speech, so it is not reached."""
    assert cron(store, tmp_path, TARGET_HOURS="0.005", TARGET_IN_SPEECH="1").returncode == 0
    [line] = log_lines(tmp_path)
    assert " 0.0000/0.005 h of speech (0.00%), 6 conversations" in line
    assert not any("TARGET REACHED" in line for line in log_lines(tmp_path))


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
    assert run.stderr.startswith("hourly_monitor.sh: error: the metadata file is not valid JSON")
    assert len(run.stderr.splitlines()) == 1
    (line,) = log_lines(tmp_path)
    assert re.match(rf"^{STAMP} ERROR \(exit 1\): error: the metadata file is not valid JSON", line)


def test_help_prints_the_crontab_line_and_runs_nothing(tmp_path: Path) -> None:
    """--help shows how to install it in cron and leaves no log behind."""
    run = subprocess.run([str(SCRIPT), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0
    assert "0 * * * * TARGET_HOURS=100 /absolute/path/to/hourly_monitor.sh" in run.stdout
    assert "TARGET_REACHED_COMMAND" in run.stdout and list(tmp_path.iterdir()) == []
    assert "TARGET_REACHED_TIMEOUT" in run.stdout


# cli/monitor.py, the Python side of the script, called directly --------------------------


@pytest.fixture
def use_store(
    store: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., None]]:
    """Point the settings at the module's store, with `overrides` (e.g. log_timezone)."""

    def use(**overrides: object) -> None:
        values: dict[str, object] = {
            "metadata_file": store.metadata_file,
            "audio_storage_dir": store.audio_storage_dir,
            **overrides,
        }
        use_settings(monkeypatch, make_settings(tmp_path, **values))

    yield use
    get_settings.cache_clear()


def monitor(home: Path, *args: str) -> int:
    return progress_monitor.main(["--log-file", str(home / "hourly_log.txt"), *args])


def messages(home: Path) -> list[str]:
    """The log's lines without their timestamps."""
    return [line.split(" ", 2)[2] for line in log_lines(home)]


def test_below_the_target_only_the_progress_line_is_written(
    use_store: Callable[..., None], tmp_path: Path
) -> None:
    """Below the target each run writes the progress line alone: no marker, no command."""
    use_store()
    fired = tmp_path / "fired.txt"
    for _ in range(2):
        assert monitor(tmp_path, "--target", "100", "--command", f"touch {fired}") == 0
    lines = log_lines(tmp_path)
    assert len(lines) == 2 and all(SUMMARY.match(line) for line in lines)
    assert not fired.exists()


def test_the_command_runs_once_however_many_runs_find_the_target_reached(
    use_store: Callable[..., None], tmp_path: Path
) -> None:
    """Every run past the target logs TARGET REACHED; the command runs on the first one only, its
    exit code and output are logged, and a higher target arms it again."""
    use_store()
    fired = tmp_path / "fired.txt"
    command = f"echo run >> {fired}; echo out; echo err >&2; exit 3"
    for _ in range(3):
        assert monitor(tmp_path, "--target", "0.005", "--command", command) == 0
    lines = log_lines(tmp_path)
    assert [bool(SUMMARY.match(line)) for line in lines] == [
        True, False, False, True, False, True, False,
    ]  # fmt: skip
    assert [messages(tmp_path)[n] for n in (1, 2, 4, 6)] == [
        "TARGET REACHED: 0.005 h", "TARGET_REACHED_COMMAND exited 3: out | err",
        "TARGET REACHED: 0.005 h", "TARGET REACHED: 0.005 h",
    ]  # fmt: skip
    assert fired.read_text() == "run\n"

    assert monitor(tmp_path, "--target", "0.006", "--command", command) == 0
    assert messages(tmp_path)[-2:] == [
        "TARGET REACHED: 0.006 h", "TARGET_REACHED_COMMAND exited 3: out | err",
    ]  # fmt: skip
    assert fired.read_text() == "run\nrun\n"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_command_that_hangs_is_killed_with_all_it_started(
    use_store: Callable[..., None], tmp_path: Path
) -> None:
    """Past --command-timeout the command's whole process group is killed, what it printed and
    that it was killed are logged, and the run ends (releasing cron's lock)."""
    use_store()
    started = tmp_path / "started.txt"
    command = f"sleep 300 & echo $! > {started}; echo waiting; sleep 300"
    args = ["--target", "0.005", "--command", command, "--command-timeout", "1"]
    assert monitor(tmp_path, *args) == 0
    assert messages(tmp_path)[-1] == (
        "TARGET_REACHED_COMMAND killed after 1 s (--command-timeout): waiting"
    )
    background = int(started.read_text())
    for _ in range(100):  # reaped by whoever adopts it, within moments of the kill
        if not _alive(background):
            break
        time.sleep(0.05)
    assert not _alive(background)


def test_a_marker_in_the_earlier_stamp_format_counts(
    use_store: Callable[..., None], tmp_path: Path
) -> None:
    """A TARGET REACHED line stamped the way earlier versions did (`+0000`) still means the
    command already ran."""
    use_store()
    (tmp_path / "hourly_log.txt").write_text("2026-11-24 09:00:01 +0000 TARGET REACHED: 0.005 h\n")
    fired = tmp_path / "fired.txt"
    assert monitor(tmp_path, "--target", "0.005", "--command", f"touch {fired}") == 0
    assert messages(tmp_path)[-1] == "TARGET REACHED: 0.005 h"
    assert not fired.exists()


def test_failures_are_an_error_line_in_the_log_and_on_stderr(
    use_store: Callable[..., None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Unreadable metadata is exit 1; a bad target, setting or time zone exit 2; each is one
    ERROR line in the log and one line on stderr, and the command never runs."""
    fired = tmp_path / "fired.txt"
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    use_store(metadata_file=broken)
    assert monitor(tmp_path, "--target", "0.001", "--command", f"touch {fired}") == 1
    use_store()
    assert monitor(tmp_path, "--target", "-3", "--command", f"touch {fired}") == 2
    monkeypatch.setenv("LOG_TIMEZONE", "Mars/Olympus")
    get_settings.cache_clear()
    assert monitor(tmp_path, "--target", "0.001", "--command", f"touch {fired}") == 2
    monkeypatch.delenv("LOG_TIMEZONE")
    monkeypatch.setenv("DOWNLOAD_RETRIES", "99")
    get_settings.cache_clear()
    assert monitor(tmp_path, "--target", "0.001", "--command", f"touch {fired}") == 2

    logged = messages(tmp_path)
    assert len(logged) == 4
    assert logged[0].startswith("ERROR (exit 1): error: the metadata file is not valid JSON")
    assert logged[1:] == [
        "ERROR (exit 2): error: invalid target hours (TARGET_HOURS): must be a positive "
        "number; got '-3'",
        "ERROR (exit 2): error: invalid settings: LOG_TIMEZONE: unknown time zone 'Mars/Olympus'",
        "ERROR (exit 2): error: invalid settings: DOWNLOAD_RETRIES: Input should be less than "
        "or equal to 20",
    ]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"hourly_monitor.sh: {line.split(': ', 1)[1]}" for line in logged]
    assert not fired.exists()


@pytest.mark.parametrize(("zone", "offset"), [("Asia/Kolkata", "+05:30"), ("UTC", "+00:00")])
def test_every_line_is_stamped_in_log_timezone(
    zone: str, offset: str, use_store: Callable[..., None], tmp_path: Path
) -> None:
    """Progress, marker, command and skipped lines carry the current time in LOG_TIMEZONE."""
    use_store(log_timezone=zone)
    before = datetime.now(UTC).replace(microsecond=0)
    assert monitor(tmp_path, "--target", "0.005", "--command", "true") == 0
    assert monitor(tmp_path, "--skipped", "other.lock") == 0
    after = datetime.now(UTC)
    assert messages(tmp_path)[1:] == [
        "TARGET REACHED: 0.005 h", "TARGET_REACHED_COMMAND exited 0",
        "SKIPPED: another hourly_monitor.sh run holds other.lock",
    ]  # fmt: skip
    for line in log_lines(tmp_path):
        assert line[19:26] == f"{offset} "
        assert before <= datetime.fromisoformat(line[:25]) <= after
