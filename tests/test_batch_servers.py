"""batch_download_from_csv.py with several --server options: two real service processes that
share one store (the same storage directory and metadata database), and the real audio server."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli_helpers import CORPUS, audio_hits, conversation_rows, run_batch, write_csv
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.stores import recorded_conversations

from diarization_audio.cli import report as analyze_storage
from diarization_audio.service.process import free_port
from diarization_audio.settings import Settings

STORED = re.compile(r"conversation=(\S+) speaker=\S+ url=\S+ outcome=success ")


pytestmark = pytest.mark.usefixtures("script_settings")


@pytest.fixture
def servers(settings: Settings, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two service processes on the same settings, each with its own console log."""
    first = ServerProcess(settings, log_path=tmp_path / "first.out")
    second = ServerProcess(settings, log_path=tmp_path / "second.out")
    with first, second:
        yield first, second


def rows_per_server(out: str, *servers: ServerProcess) -> list[int]:
    """The counts of the summary's `rows per server` line, in the order of `servers`."""
    pattern = ", ".join(
        rf"{re.escape(s.base_url)} (\d+)(?: \(left the rotation\))?" for s in servers
    )
    match = re.search(rf"^  rows per server: {pattern}$", out, flags=re.MULTILINE)
    assert match, out
    return [int(count) for count in match.groups()]


def stored_by(server: ServerProcess) -> set[str]:
    """Conversations with a file this server downloaded and stored, from its own log."""
    return set(STORED.findall(server.output()))


def expected_files(rows: list[list[str]]) -> set[str]:
    return {f"{r[0]}_agent.wav" for r in rows} | {f"{r[0]}_customer.wav" for r in rows if r[2]}


def finished_files(settings: Settings) -> set[str]:
    """Stored .wav files, without the temporary files of a killed server."""
    store = Path(settings.audio_storage_dir)
    return {path.name for path in store.glob("*.wav") if not path.name.startswith(".")}


def recorded(settings: Settings) -> dict[str, list[str]]:
    return {cid: sorted(e["speakers"]) for cid, e in recorded_conversations(settings).items()}


def test_rows_are_spread_over_both_servers_and_each_is_stored_once(
    tmp_path: Path,
    settings: Settings,
    servers: tuple[ServerProcess, ServerProcess],
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Twelve conversations over two servers: both take rows, each file is fetched and stored
    once, and the summary's per-server counts match what each server's log says it stored."""
    first, second = servers
    rows = conversation_rows(source, 12)
    csv_path = write_csv(tmp_path / "batch.csv", rows)

    assert run_batch(csv_path, first.base_url, second.base_url) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert f"12 conversations in {csv_path} -> {first.base_url}, {second.base_url}" in captured.out
    assert "succeeded 12, partial 0, failed 0, skipped 0 (already stored)" in captured.out
    took = rows_per_server(captured.out, first, second)
    assert sum(took) == 12 and min(took) > 0
    assert [len(stored_by(first)), len(stored_by(second))] == took
    assert stored_by(first) | stored_by(second) == {row[0] for row in rows}
    assert finished_files(settings) == expected_files(rows)
    assert audio_hits(source) == len(expected_files(rows)) == 22
    assert recorded(settings) == {
        row[0]: ["agent", "customer"] if row[2] else ["agent"] for row in rows
    }


def test_a_rerun_over_both_servers_skips_what_one_of_them_stored(
    tmp_path: Path,
    settings: Settings,
    servers: tuple[ServerProcess, ServerProcess],
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a batch through one server, the same CSV over both skips every row without a fetch:
    the shared store, not the server, decides what is done."""
    first, second = servers
    csv_path = write_csv(tmp_path / "batch.csv", conversation_rows(source, 12))
    assert run_batch(csv_path, first.base_url) == 0
    fetched = audio_hits(source)
    capsys.readouterr()

    assert run_batch(csv_path, first.base_url, second.base_url, extra=("--concurrency", "2")) == 0
    out = capsys.readouterr().out
    assert "succeeded 0, partial 0, failed 0, skipped 12 (already stored)" in out
    assert "hours added 0.0000" in out
    took = rows_per_server(out, first, second)
    assert sum(took) == 12 and min(took) > 0
    assert audio_hits(source) == fetched
    assert list(tmp_path.glob("failed_rows_*.csv")) == []


def test_a_server_killed_mid_batch_leaves_its_rows_to_the_other(
    tmp_path: Path,
    settings: Settings,
    servers: tuple[ServerProcess, ServerProcess],
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server killed once it has stored its first file leaves the rotation with one warning;
    its row in flight and every later row are stored through the other, and the run exits 0."""
    first, second = servers
    # The agent audio answers after a second, so a row is still in flight when the customer
    # file (served at once) is logged as stored.
    rows = [
        [f"conv_{n:03d}", source.url(f"/slow/1/{CORPUS[n % len(CORPUS)]}"),
         source.file_url(CORPUS[(n + 1) % len(CORPUS)])]
        for n in range(12)
    ]  # fmt: skip
    csv_path = write_csv(tmp_path / "batch.csv", rows)
    killed = threading.Event()

    def kill_after_its_first_stored_file() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if STORED.search(second.output()):
                second.kill()
                killed.set()
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_after_its_first_stored_file)
    killer.start()
    try:
        code = run_batch(csv_path, first.base_url, second.base_url)
    finally:
        killer.join()
    captured = capsys.readouterr()
    assert killed.is_set()
    assert code == 0, captured.err
    (warning,) = captured.err.splitlines()
    assert warning.startswith(f"warning: cannot reach the service at {second.base_url}")
    assert warning.endswith("; its rows go to the 1 other server(s)")
    assert "partial 0, failed 0" in captured.out
    took = rows_per_server(captured.out, first, second)
    assert sum(took) == 12
    assert f"{second.base_url} {took[1]} (left the rotation)" in captured.out
    assert finished_files(settings) == expected_files(rows)
    assert recorded(settings) == {row[0]: ["agent", "customer"] for row in rows}
    assert list(tmp_path.glob("failed_rows_*.csv")) == []
    assert analyze_storage.main(["--strict", "--summary-line"]) == 0  # files and record agree


def test_a_server_not_answering_at_the_start_is_left_out_with_a_warning(
    tmp_path: Path,
    settings: Settings,
    server_process: ServerProcess,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreachable server among several is one warning and the rest do the work; when none
    answers, the run stops before sending anything, with one error line and exit 3."""
    dead = f"http://127.0.0.1:{free_port()}"
    rows = conversation_rows(source, 3)
    csv_path = write_csv(tmp_path / "batch.csv", rows)

    assert run_batch(csv_path, dead, server_process.base_url) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"warning: cannot reach the service at {dead} ")
    assert captured.err.endswith("; going on with the 1 other server(s)\n")
    assert len(captured.err.splitlines()) == 1
    assert f"3 conversations in {csv_path} -> {server_process.base_url}\n" in captured.out
    assert f"rows per server: {dead} 0 (left the rotation), {server_process.base_url} 3\n" in (
        captured.out
    )
    assert finished_files(settings) == expected_files(rows)

    other_dead = f"http://127.0.0.1:{free_port()}"
    fetched = audio_hits(source)
    assert run_batch(csv_path, dead, other_dead, extra=("--overwrite",)) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        f"error: none of the 2 services answers; the last: cannot reach the service at {other_dead}"
    )
    assert len(captured.err.splitlines()) == 1
    assert audio_hits(source) == fetched
    assert list(tmp_path.glob("failed_rows_*.csv")) == []
