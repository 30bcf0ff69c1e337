"""Labelling processes (each service process's fork server and the labelling process forked
from it) end with the service process that started them, however it ends."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from support.process_tree import Proc, descendants, kill_all, listed, still_running
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.stores import labelled_statistics, make_settings
from support.waiting import wait_for

pytestmark = pytest.mark.slow

WORKERS = 4
ENDS_WITHIN_SECONDS = 10


def wait_until_ended(procs: list[Proc], what: str) -> None:
    deadline = time.monotonic() + ENDS_WITHIN_SECONDS
    while left := still_running(procs):
        assert time.monotonic() < deadline, f"{what}; still running:{listed(left)}"
        time.sleep(0.05)


def workers_and_labellers(supervisor: int) -> dict[Proc, list[Proc]]:
    """uvicorn's worker processes below `supervisor`, each with its labelling processes."""
    below = descendants(supervisor)
    workers = [p for p in below if p.ppid == supervisor and "spawn_main" in p.command]
    return {
        worker: [p for p in descendants(worker.pid) if "multiprocessing.forkserver" in p.command]
        for worker in workers
    }


@pytest.mark.parametrize("victim", ["supervisor", "worker"])
def test_labelling_processes_end_with_the_server_process_that_started_them(
    tmp_path: Path, source: SourceServer, victim: str
) -> None:
    """`uvicorn --workers 4` with a call labelled: SIGKILL of the supervisor ends every process
    below it (workers, fork servers, labelling processes) within seconds; SIGKILL of one worker
    ends that worker's fork server and labelling process, the other workers and theirs serve on,
    and a graceful stop then leaves nothing running."""
    settings = make_settings(tmp_path)
    server = ServerProcess(settings, workers=WORKERS).start()
    assert server.proc is not None
    supervisor = server.proc.pid
    everything: list[Proc] = []
    try:
        with httpx.Client(base_url=server.base_url, trust_env=False, timeout=60) as http:
            answer = http.post(
                "/download/dual",
                data={"conversation_id": "call", "audio_url_agent": source.file_url("mp3.mp3"),
                      "audio_url_customer": source.file_url("flac.flac")},
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            assert labelled_statistics(http)["speech"]["labelled_files"] == 2
        # Every worker's fork server and the labelling process forked from it are running.
        wait_for(
            lambda: [len(p) for p in workers_and_labellers(supervisor).values()] == [2] * WORKERS,
            30, "four workers with a fork server and a labelling process each",
        )  # fmt: skip
        everything = descendants(supervisor)
        if victim == "supervisor":
            os.kill(supervisor, signal.SIGKILL)
            server.proc.wait(10)
            wait_until_ended(everything, "every process below the killed supervisor ends")
            return
        groups = workers_and_labellers(supervisor)
        worker, labellers = next(iter(groups.items()))
        others = [p for w, ls in groups.items() if w != worker for p in (w, *ls)]
        os.kill(worker.pid, signal.SIGKILL)
        wait_until_ended(labellers, "the killed worker's labelling processes end")
        assert still_running(others) == others
        assert httpx.get(server.base_url + "/health", trust_env=False, timeout=30).is_success
        everything = descendants(supervisor)  # with the worker started in place of the killed
        server.stop()
        wait_until_ended(everything, "a graceful stop ends every process")
    finally:
        server.stop()
        kill_all(everything)
