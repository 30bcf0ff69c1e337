"""Real-network behaviour: resuming dropped downloads, converting while downloading, and giving
up on sources that trickle, each against a real local server that misbehaves that way."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support.audio_factory import ffmpeg_exe
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.stores import make_settings, recorded_conversations
from test_errors import assert_nothing_stored, post_single

from bench.media import make_long_mp3
from diarization_audio.ingest.fetcher import RateMeter
from diarization_audio.service.app import create_app
from diarization_audio.settings import Settings
from diarization_audio.store.tracker import MetadataTracker

MINUTES = 3


@pytest.fixture(scope="module")
def network_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceServer]:
    directory = tmp_path_factory.mktemp("network")
    make_long_mp3(directory / "call.mp3", minutes=MINUTES)
    tone = ["-f", "lavfi", "-i", "sine=frequency=300:duration=60", "-c:a", "aac", "-b:a", "64k"]
    for name, extra in (("index_last.m4a", []), ("index_first.m4a", ["-movflags", "+faststart"])):
        subprocess.run(
            [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *tone, *extra,
             str(directory / name)],
            check=True,
        )  # fmt: skip
    with SourceServer(directory) as server:
        yield server
        assert server.errors == []


@pytest.fixture
def net(network_source: SourceServer) -> SourceServer:
    network_source.reset()
    return network_source


def _client(tmp_path: Path, **overrides: object) -> tuple[TestClient, Settings]:
    settings = make_settings(tmp_path, label_speech=False, **overrides)
    return TestClient(create_app(settings)), settings


def _stored_sha(client: TestClient, url: str, cid: str) -> dict[str, object]:
    response = client.post("/download/single", data={"conversation_id": cid, "audio_url": url})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


# Resuming -----------------------------------------------------------------------------------


def test_a_dropped_download_resumes_where_it_stopped(tmp_path: Path, net: SourceServer) -> None:
    """The connection drops at half the body: the retry asks for the rest with Range + If-Range,
    the source serves about the file's size in total (not 1.5x), and the stored WAV is the
    same as from an unbroken download."""
    size = (net.root / "call.mp3").stat().st_size
    test_client, _ = _client(tmp_path)
    with test_client as client:
        whole = _stored_sha(client, net.file_url("call.mp3"), "whole")
        resumed = _stored_sha(client, net.url("/resumable/honours/call.mp3"), "resumed")
    assert resumed["sha256"] == whole["sha256"]
    assert resumed["duration_seconds"] == whole["duration_seconds"]
    requests = net.requests
    assert len(requests) == 2
    assert "Range" not in requests[0][1]
    assert requests[1][1]["Range"] == f"bytes={size // 2}-"
    assert requests[1][1]["If-Range"] == '"v1"'
    assert net.bytes_sent["/resumable/honours/call.mp3"] == size


@pytest.mark.parametrize("mode", ["ignores", "changes"])
def test_a_source_that_cannot_resume_starts_over_cleanly(
    tmp_path: Path, net: SourceServer, mode: str
) -> None:
    """A source that answers the range with the whole file (it ignores ranges, or the file's
    ETag changed) is downloaded again from the start, and the result is still right."""
    size = (net.root / "call.mp3").stat().st_size
    test_client, _ = _client(tmp_path)
    with test_client as client:
        whole = _stored_sha(client, net.file_url("call.mp3"), "whole")
        again = _stored_sha(client, net.url(f"/resumable/{mode}/call.mp3"), "again")
    assert again["sha256"] == whole["sha256"]
    assert [("Range" in headers) for _, headers in net.requests] == [False, True]
    assert net.bytes_sent[f"/resumable/{mode}/call.mp3"] == size // 2 + size


# Converting while downloading ---------------------------------------------------------------


def _piped_ffmpegs(storage: Path) -> list[int]:
    """The pids of ffmpegs converting from a pipe into `storage`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ffmpeg" in line and "pipe:0" in line and str(storage) in line:
            found.append(int(proc.name))
    return found


def _piped_ffmpeg_running(storage: Path) -> bool:
    return bool(_piped_ffmpegs(storage))


class _PipeWatch:
    """Polls, until the source has sent everything, for an ffmpeg reading a pipe."""

    def __init__(self, storage: Path, source: SourceServer, path: str, size: int) -> None:
        self.piped_before_end = False
        self._thread = threading.Thread(
            target=self._watch, args=(storage, source, path, size), daemon=True
        )
        self._thread.start()

    def _watch(self, storage: Path, source: SourceServer, path: str, size: int) -> None:
        deadline = time.monotonic() + 60
        while source.bytes_sent[path] < size and time.monotonic() < deadline:
            if _piped_ffmpeg_running(storage):
                self.piped_before_end = source.bytes_sent[path] < size
                return
            time.sleep(0.02)

    def join(self) -> None:
        self._thread.join(5)


def test_conversion_starts_before_the_download_ends(tmp_path: Path, net: SourceServer) -> None:
    """From a source sending at 1 MB/s, ffmpeg is already converting from a pipe while bytes
    are still arriving, and the WAV is identical to one converted from the complete file."""
    size = (net.root / "call.mp3").stat().st_size
    path = "/throttled/1000000/call.mp3"
    test_client, settings = _client(tmp_path)
    with test_client as client:
        whole = _stored_sha(client, net.file_url("call.mp3"), "whole")
        seen = _PipeWatch(Path(settings.audio_storage_dir), net, path, size)
        streamed = _stored_sha(client, net.url(path), "streamed")
        seen.join()
    assert seen.piped_before_end is True
    assert streamed["sha256"] == whole["sha256"]


def _stat_fields(path: Path) -> list[str]:
    """The fields of a /proc stat file after the command name (field 3 onwards)."""
    return path.read_text().rsplit(")", 1)[1].split()


def _priority_of(pid: int) -> tuple[int, set[int], str | None]:
    """An ffmpeg's session id, the niceness of each of its threads, and its autogroup line."""
    session = int(_stat_fields(Path(f"/proc/{pid}/stat"))[3])
    nices = {int(_stat_fields(task / "stat")[16]) for task in Path(f"/proc/{pid}/task").iterdir()}
    autogroup = Path(f"/proc/{pid}/autogroup")
    return session, nices, autogroup.read_text().strip() if autogroup.exists() else None


def test_ffmpeg_runs_below_the_server(tmp_path: Path, net: SourceServer) -> None:
    """A conversion runs in a session of its own, every ffmpeg thread at CONVERSION_NICENESS,
    and (on a kernel that groups CPU time by session) its session's group at that niceness too,
    so it cannot take CPU from the server or from other processes on the host."""
    test_client, settings = _client(tmp_path, conversion_niceness=7)
    storage = Path(settings.audio_storage_dir)
    seen: list[tuple[int, int, set[int], str | None]] = []

    def watch() -> None:
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:
            for pid in _piped_ffmpegs(storage):
                with contextlib.suppress(OSError):
                    if len(list(Path(f"/proc/{pid}/task").iterdir())) > 1:  # threads started
                        seen.append((pid, *_priority_of(pid)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with test_client as client:
        _stored_sha(client, net.url("/throttled/1000000/call.mp3"), "niced")
    watcher.join(5)
    assert seen, "no ffmpeg with threads was seen converting"
    pid, session, nices, autogroup = seen[0]
    assert session == pid != os.getsid(0)
    assert nices == {7}
    if autogroup is not None:
        assert autogroup.endswith("nice 7"), autogroup


@pytest.mark.parametrize(("name", "piped"), [("index_last.m4a", False), ("index_first.m4a", True)])
def test_an_mp4_with_its_index_at_the_end_waits_for_the_whole_file(
    tmp_path: Path, net: SourceServer, name: str, piped: bool
) -> None:
    """An M4A whose index follows the audio cannot be decoded from a pipe: it is converted once
    complete. The same audio with its index first streams. Both store the full minute."""
    size = (net.root / name).stat().st_size
    path = f"/throttled/{size}/{name}"  # about one second on the wire
    test_client, settings = _client(tmp_path)
    with test_client as client:
        seen = _PipeWatch(Path(settings.audio_storage_dir), net, path, size)
        stored = _stored_sha(client, net.url(path), "m4a")
        seen.join()
    assert seen.piped_before_end is piped
    assert stored["duration_seconds"] == pytest.approx(60.0, abs=0.1)


def test_a_long_file_cut_at_the_length_limit_stops_its_download(
    tmp_path: Path, net: SourceServer
) -> None:
    """A source longer than MAX_AUDIO_HOURS is refused with 422 as soon as ffmpeg has read past
    the limit, without waiting for the rest of a slow download."""
    size = (net.root / "call.mp3").stat().st_size
    path = f"/throttled/{size // 20}/call.mp3"  # 20 s on the wire in full
    test_client, settings = _client(tmp_path, max_audio_hours=10 / 3600)
    started = time.monotonic()
    with test_client as client:
        got, body = post_single(client, net.url(path))
    assert (got, body["error"]) == (422, "audio_too_long")
    assert net.bytes_sent[path] < size / 2
    assert time.monotonic() - started < 15
    assert_nothing_stored(settings)


# Trickling sources --------------------------------------------------------------------------


def test_a_trickling_source_fails_with_504_within_the_rate_window(
    tmp_path: Path, net: SourceServer
) -> None:
    """Under the default rate rule (10 KB/s over 30 s) and DOWNLOAD_TIMEOUT_SECONDS=3, a source
    sending one byte every 2 s fails with 504 about 30 s in, is fetched once (not retried as a
    dropped connection), and leaves nothing behind."""
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    test_client, settings = _client(
        tmp_path,
        download_timeout_seconds=3,
        download_deadline_seconds=defaults.download_deadline_seconds,
        download_retries=defaults.download_retries,
        download_retry_backoff_seconds=defaults.download_retry_backoff_seconds,
    )
    assert settings.min_download_rate_kb == 10 and settings.min_download_rate_window_seconds == 30
    started = time.monotonic()
    with test_client as client:
        got, body = post_single(client, net.url("/trickle/2/call.mp3"))
    took = time.monotonic() - started
    assert (got, body["error"]) == (504, "source_timeout")
    assert "MIN_DOWNLOAD_RATE_KB" in body["detail"]
    assert 29 <= took <= 36
    assert net.hits["/trickle/2/call.mp3"] == 1
    assert_nothing_stored(settings)


def test_rate_meter_deadline_follows_the_window() -> None:
    """The deadline is when the last `window` seconds would hold fewer than limit*window bytes
    if nothing else arrived."""
    meter = RateMeter(limit=100, window=10, now=0.0)
    assert meter.deadline() == 10.0  # nothing yet: the first full window decides
    meter.add(500, now=1.0)
    assert meter.deadline() == 10.0  # 500 < 1000 bytes in the first window
    meter.add(600, now=2.0)  # 1100 bytes by t=2: enough until the t=1 arrival leaves
    assert meter.deadline() == 11.0
    meter.add(5000, now=20.0)  # a burst keeps it alive until t=30
    assert meter.deadline() == 30.0


# Stopping -----------------------------------------------------------------------------------


def test_sigterm_finishes_short_jobs_and_cancels_long_ones_with_503(
    tmp_path: Path, net: SourceServer
) -> None:
    """SIGTERM to the server's process group (as systemd sends it) while two jobs run: the one
    that ends within SHUTDOWN_GRACE_SECONDS is stored and answered 200; the one that cannot is
    cancelled and answered 503 with Retry-After; then the server exits with no ffmpeg left,
    no partial file, and only the finished job in the store."""
    settings = make_settings(tmp_path, shutdown_grace_seconds=3, label_speech=True)
    size = (net.root / "call.mp3").stat().st_size
    slow = f"/throttled/{size // 60}/call.mp3"  # a minute on the wire
    quick = f"/throttled/{size}/call.mp3"  # about a second
    server = ServerProcess(settings).start()
    storage = Path(settings.audio_storage_dir)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:

            def post(cid: str, path: str) -> httpx.Response:
                return httpx.post(
                    server.base_url + "/download/single",
                    data={"conversation_id": cid, "audio_url": net.url(path)},
                    timeout=60,
                    trust_env=False,
                )

            long_job = pool.submit(post, "long", slow)
            assert net.wait_for_hits(slow.split("?")[0], 1, timeout=30)
            short_job = pool.submit(post, "short", quick)
            assert net.wait_for_hits(quick.split("?")[0], 1, timeout=30)
            assert server.proc is not None
            os.killpg(server.proc.pid, signal.SIGTERM)
            cancelled, finished = long_job.result(), short_job.result()
        # uvicorn ends by re-raising the signal it handled, as a signalled process should.
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    assert finished.status_code == 200, finished.text
    assert (cancelled.status_code, cancelled.json()["error"]) == (503, "shutting_down")
    assert cancelled.headers["Retry-After"].isdigit()
    assert not _piped_ffmpeg_running(storage)
    assert sorted(p.name for p in storage.iterdir()) == ["short_speaker.wav"]
    assert sorted(recorded_conversations(settings)) == ["short"]
    tracker = MetadataTracker.from_settings(settings)
    assert tracker.failure_summary()["by_error_last_24_hours"] == {"shutting_down": 1}
    assert tracker.statistics()["speech"]["labelled_files"] == 1
    tracker.close()
