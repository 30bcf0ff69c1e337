"""batch_download_from_csv.py end to end: a real service process and the real audio server."""

from __future__ import annotations

import shlex
import threading
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from support.cli_helpers import (
    audio_hits,
    conversation_rows,
    read_csv,
    run_batch,
    use_settings,
    wav_durations,
    write_csv,
)
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.stores import make_settings, recorded_conversations

from diarization_audio.cli.batch import main as batch_main
from diarization_audio.cli.conversations_csv import Row, write_failed_rows
from diarization_audio.service.process import free_port
from diarization_audio.settings import Settings

pytestmark = pytest.mark.usefixtures("script_settings")


def failed_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("failed_rows_*.csv"))


def stored_conversations(settings: Settings) -> set[str]:
    return set(recorded_conversations(settings))


def test_thirteen_rows_then_resume_downloads_nothing(
    tmp_path: Path,
    settings: Settings,
    server_process: ServerProcess,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 13-row batch stores every file; the same command again skips all 13 without a fetch."""
    rows = conversation_rows(source, 13)
    csv_path = write_csv(tmp_path / "conversations.csv", rows)

    assert run_batch(csv_path, server_process.base_url) == 0
    out = capsys.readouterr().out
    stored = wav_durations(Path(settings.audio_storage_dir))
    expected = {f"{r[0]}_agent.wav" for r in rows} | {f"{r[0]}_customer.wav" for r in rows if r[2]}
    assert set(stored) == expected and len(stored) == 24
    assert all(seconds == pytest.approx(2.0, abs=0.05) for seconds in stored.values())
    assert "succeeded 13, partial 0, failed 0, skipped 0 (already stored), invalid rows 0" in out
    assert f"hours added {sum(stored.values()) / 3600:.4f}" in out
    fetched = audio_hits(source)
    assert fetched == 24

    assert run_batch(csv_path, server_process.base_url) == 0
    out = capsys.readouterr().out
    assert "succeeded 0, partial 0, failed 0, skipped 13 (already stored)" in out
    assert "hours added 0.0000" in out
    assert audio_hits(source) == fetched
    assert failed_files(tmp_path) == []


def test_invalid_and_failing_rows_then_the_failed_rows_file_is_retried(
    tmp_path: Path,
    settings: Settings,
    server_process: ServerProcess,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Invalid rows are named by line and skipped, failures land in a retry file that works."""
    rows = [
        ["good", source.file_url("mp3.mp3"), source.file_url("wav.wav")],  # line 2
        ["", source.file_url("mp3.mp3"), ""],  # line 3: blank id
        ["bad_url", "ftp://example.com/a.mp3", ""],  # line 4: not http(s)
        ["gone", source.url("/status/404"), ""],  # line 5: fails
        ["flaky", source.url("/flaky/3/ogg.ogg"), ""],  # line 6: fails 3 tries, then serves
        ["half", source.file_url("flac.flac"), source.url("/html")],  # line 7: partial
        ["good", source.file_url("mp3.mp3"), ""],  # line 8: repeats line 2
    ]
    csv_path = write_csv(tmp_path / "batch.csv", rows)

    assert run_batch(csv_path, server_process.base_url) == 1
    captured = capsys.readouterr()
    for expected in ("INVALID line 3: conversation_id is blank",
                     "INVALID line 4: agent_audio_url must be an http or https URL",
                     "INVALID line 8: good repeats line 2",
                     "FAILED line 5 gone: source_error:", "FAILED line 6 flaky: source_error:",
                     "PARTIAL line 7 half: customer:",
                     "succeeded 1, partial 1, failed 2, skipped 0 (already stored), "
                     "invalid rows 3"):  # fmt: skip
        assert expected in captured.out
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    (retry_file,) = failed_files(tmp_path)
    assert f"retry: python3 batch_download_from_csv.py {retry_file}" in captured.err
    assert read_csv(retry_file) == [read_csv(csv_path)[0], rows[3], rows[4], rows[5]]
    assert stored_conversations(settings) == {"good", "half"}

    retry_file.rename(tmp_path / "retry.csv")
    assert run_batch(tmp_path / "retry.csv", server_process.base_url) == 1
    out = capsys.readouterr().out
    assert "succeeded 1, partial 1, failed 1, skipped 0" in out
    assert stored_conversations(settings) == {"good", "half", "flaky"}
    assert (Path(settings.audio_storage_dir) / "flaky_agent.wav").is_file()
    (second_retry,) = failed_files(tmp_path)
    assert [row[0] for row in read_csv(second_retry)[1:]] == ["gone", "half"]


def test_other_column_names_and_extra_columns_survive_into_the_retry_file(
    tmp_path: Path, server_process: ServerProcess, source: SourceServer
) -> None:
    """--id/--agent/--customer-column map other headers; the retry file keeps every column."""
    header = ["call_id", "notes", "agent", "client"]
    rows = [
        ["c1", 'said "hi", then left', source.file_url("mp3.mp3"), source.file_url("m4a.m4a")],
        ["c2", "line\nbreak", source.url("/status/404"), ""],
    ]
    csv_path = write_csv(tmp_path / "calls.csv", rows, header)
    code = run_batch(csv_path, server_process.base_url, extra=("--id-column", "call_id",
                     "--agent-column", "agent", "--customer-column", "client"))  # fmt: skip
    assert code == 1
    (retry_file,) = failed_files(tmp_path)
    assert read_csv(retry_file) == [header, rows[1]]


def test_unknown_column_is_one_line_and_exit_2(
    tmp_path: Path, source: SourceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV without the named column is refused before anything is sent."""
    csv_path = write_csv(tmp_path / "x.csv", conversation_rows(source, 2))
    assert run_batch(csv_path, "http://127.0.0.1:9", extra=("--customer-column", "client")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CSV ") and "no column 'client'" in err
    assert len(err.splitlines()) == 1


def test_stop_at_target_sends_no_more_rows(
    tmp_path: Path,
    settings: Settings,
    server_process: ServerProcess,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Once the service reports the target reached, no further row is sent, and it says so."""
    csv_path = write_csv(tmp_path / "batch.csv", conversation_rows(source, 8))
    # Each conversation holds 2 + 2 seconds; 10.8 s is reached by the third.
    assert run_batch(csv_path, server_process.base_url,
                     extra=("--stop-at-target", "0.003", "--concurrency", "1")) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Stopped: target of 0.003 h reached (the service has 0.0033 h)" in out
    assert "5 conversations not sent" in out
    assert stored_conversations(settings) == {"conv_000", "conv_001", "conv_002"}
    assert failed_files(tmp_path) == []

    fetched = audio_hits(source)
    assert run_batch(csv_path, server_process.base_url, extra=("--stop-at-target", "0.003")) == 0
    assert "target of 0.003 h reached" in capsys.readouterr().out
    assert audio_hits(source) == fetched


def test_overwrite_downloads_again(
    tmp_path: Path, server_process: ServerProcess, source: SourceServer
) -> None:
    """--overwrite fetches conversations the service already stores."""
    csv_path = write_csv(tmp_path / "batch.csv", conversation_rows(source, 2))
    assert run_batch(csv_path, server_process.base_url) == 0
    assert run_batch(csv_path, server_process.base_url, extra=("--overwrite",)) == 0
    assert audio_hits(source) == 8


def test_service_not_running_is_one_line_and_exit_3(
    tmp_path: Path, source: SourceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """With nothing listening there is one message, no traceback, and no retry file."""
    csv_path = write_csv(tmp_path / "batch.csv", conversation_rows(source, 13))
    assert run_batch(csv_path, f"http://127.0.0.1:{free_port()}") == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: cannot reach the service at http://127.0.0.1:")
    assert len(captured.err.splitlines()) == 1
    assert failed_files(tmp_path) == []


def test_service_dying_mid_batch_stops_with_one_line(
    tmp_path: Path,
    settings: Settings,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A service killed mid-batch ends the run with one line; the unfinished rows can be retried."""
    rows = [["first", source.file_url("mp3.mp3"), ""]]
    rows += [[f"slow_{n}", source.url("/slow/2/mp3.mp3"), ""] for n in range(5)]
    csv_path = write_csv(tmp_path / "batch.csv", rows)
    server = ServerProcess(settings).start()

    def kill_while_the_second_is_fetched() -> None:
        # One at a time: the second row is sent only once the first one's answer is in.
        source.wait_for_hits("/slow/2/mp3.mp3", timeout=30)
        server.kill()

    killer = threading.Thread(target=kill_while_the_second_is_fetched)
    killer.start()
    try:
        assert run_batch(csv_path, server.base_url, extra=("--concurrency", "1")) == 3
    finally:
        killer.join()
        server.stop()
    captured = capsys.readouterr()
    assert captured.err.startswith("error: cannot reach the service")
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err
    (retry_file,) = failed_files(tmp_path)
    assert [row[0] for row in read_csv(retry_file)[1:]] == [f"slow_{n}" for n in range(5)]
    assert f"are in {retry_file}" in captured.err


def test_api_key_from_settings_is_sent(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With API_KEY set the batch authenticates; a wrong key stops it at once with exit 3."""
    keyed = make_settings(tmp_path, api_key="s3cret")
    csv_path = write_csv(tmp_path / "batch.csv", conversation_rows(source, 2))
    with ServerProcess(keyed) as server:
        use_settings(monkeypatch, keyed)
        assert run_batch(csv_path, server.base_url) == 0
        use_settings(monkeypatch, make_settings(tmp_path, api_key="wrong"))
        fetched = audio_hits(source)
        assert run_batch(csv_path, server.base_url, extra=("--overwrite",)) == 3
    assert audio_hits(source) == fetched  # stopped before the first row, not once per row
    err = capsys.readouterr().err
    assert err == "error: missing or wrong X-API-Key header\n"


def test_busy_service_is_asked_again_after_its_retry_after(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A row refused with 503 busy is sent again after Retry-After and is stored, not failed."""
    busy = make_settings(tmp_path, max_concurrent_jobs=1, job_queue_timeout_seconds=0.2)
    rows = [[f"queued_{n}", source.url("/slow/1/mp3.mp3"), ""] for n in range(2)]
    csv_path = write_csv(tmp_path / "batch.csv", rows)
    with ServerProcess(busy) as server:
        use_settings(monkeypatch, busy)
        assert run_batch(csv_path, server.base_url, extra=("--concurrency", "2")) == 0
    assert "succeeded 2, partial 0, failed 0" in capsys.readouterr().out
    assert "POST /download/dual -> 503 busy" in server.output()


def test_failed_rows_files_never_replace_each_other_and_appear_whole(tmp_path: Path) -> None:
    """Every name a run in these seconds could pick is taken already: the file gets the next
    free suffix, the files already there keep their contents, and no temporary file is left."""
    now = datetime.now()
    taken = [
        tmp_path / f"failed_rows_{now + timedelta(seconds=s):%Y%m%d_%H%M%S}.csv" for s in range(3)
    ]
    for path in taken:
        path.write_text("someone else's\n")
    rows = [
        Row(2, "c2", "http://127.0.0.1/b.mp3", None, {"conversation_id": "c2", "agent_url": "b"}),
        Row(1, "c1", "http://127.0.0.1/a.mp3", None, {"conversation_id": "c1", "agent_url": "a"}),
    ]
    written = [write_failed_rows(tmp_path, ["conversation_id", "agent_url"], rows) for _ in "ab"]
    assert len(set(written)) == 2 and not set(written) & set(taken)
    assert all(path.name.endswith(("_2.csv", "_3.csv")) for path in written)
    for path in written:
        assert path.read_text() == "conversation_id,agent_url\nc1,a\nc2,b\n"
    assert all(path.read_text() == "someone else's\n" for path in taken)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_rows_file_that_cannot_be_written_whole_is_not_written(tmp_path: Path) -> None:
    """A row that cannot be encoded stops the write half-way: no file, no temporary file."""
    rows = [
        Row(1, "c1", "http://127.0.0.1/a.mp3", None, {"conversation_id": "c1", "agent_url": "a"}),
        Row(
            2,
            "c2",
            "http://127.0.0.1/b.mp3",
            None,
            {"conversation_id": "c2", "agent_url": "\udc80"},
        ),
    ]
    with pytest.raises(UnicodeEncodeError):
        write_failed_rows(tmp_path, ["conversation_id", "agent_url"], rows)
    assert list(tmp_path.iterdir()) == []


def test_erased_conversations_are_counted_not_failed_until_allowed(
    tmp_path: Path,
    settings: Settings,
    server_process: ServerProcess,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A conversation the service answers 410 erased is counted as erased: not failed, not in a
    failed-rows file, nothing fetched for it, exit 0; --allow-erased stores it again."""
    rows = conversation_rows(source, 3)
    csv_path = write_csv(tmp_path / "batch.csv", rows)
    with httpx.Client(base_url=server_process.base_url, trust_env=False) as http:
        for cid in ("conv_000", "conv_002"):
            assert http.delete(f"/conversations/{cid}").status_code == 200

    assert run_batch(csv_path, server_process.base_url) == 0
    out = capsys.readouterr().out
    assert "succeeded 1, partial 0, failed 0, skipped 0 (already stored), invalid rows 0" in out
    assert "  erased 2 (refused by the service; --allow-erased stores them again)" in out
    assert "ERASED line 2 conv_000: conversation 'conv_000' was erased at" in out
    assert failed_files(tmp_path) == []
    assert stored_conversations(settings) == {"conv_001"}
    assert audio_hits(source) == 2  # conv_001's two legs only

    assert run_batch(csv_path, server_process.base_url, extra=("--allow-erased",)) == 0
    out = capsys.readouterr().out
    assert "succeeded 2, partial 0, failed 0, skipped 1 (already stored)" in out
    assert "  erased 0 (" in out
    assert stored_conversations(settings) == {"conv_000", "conv_001", "conv_002"}
    assert failed_files(tmp_path) == []


def test_the_retry_command_keeps_the_options_of_the_run(
    tmp_path: Path,
    settings: Settings,
    server_process: ServerProcess,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The retry command printed for failed rows carries the run's options (--allow-erased among
    them), so run as printed it stores an erased conversation whose download failed the first
    time, instead of counting it as erased."""
    with httpx.Client(base_url=server_process.base_url, trust_env=False) as http:
        assert http.delete("/conversations/back").status_code == 200
    # Fails every try of the first run (the service tries 3 times), then serves.
    csv_path = write_csv(tmp_path / "batch.csv", [["back", source.url("/flaky/3/ogg.ogg"), ""]])
    options = ("--allow-erased", "--concurrency", "2", "--timeout", "90")
    assert run_batch(csv_path, server_process.base_url, extra=options) == 1
    err = capsys.readouterr().err
    (retry_file,) = failed_files(tmp_path)
    retry = err.split("retry: ", 1)[1].strip()
    assert shlex.split(retry) == [
        "python3", "batch_download_from_csv.py", str(retry_file),
        "--server", server_process.base_url, "--concurrency", "2", "--allow-erased",
        "--failed-rows-dir", str(tmp_path), "--timeout", "90.0", "--no-progress",
    ]  # fmt: skip
    assert batch_main(shlex.split(retry)[2:]) == 0  # the command as printed
    out = capsys.readouterr().out
    assert "succeeded 1, partial 0, failed 0" in out and "  erased 0 (" in out
    assert stored_conversations(settings) == {"back"}
