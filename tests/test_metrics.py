"""GET /metrics: exact counts summed over four real worker processes, who may scrape it, and the
metric files' directory of each run of the service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from support import ROOT
from support.audio_factory import make_audio
from support.server_process import ServerProcess
from support.source_server import HTML_BODY, SourceServer
from support.stores import make_settings

from diarization_audio.service.app import create_app
from diarization_audio.settings import Settings
from diarization_audio.store.tracker import MetadataTracker

# Durations differ so that a sum cannot come out right by accident.
SOURCES = {"a1.mp3": ("mp3", 1.0), "a2.wav": ("wav", 1.5), "a3.flac": ("flac", 2.5),
           "a4.ogg": ("ogg", 3.0), "st.wav": ("wav", 2.0)}  # fmt: skip
LEGS = ["a1.mp3", "a2.wav", "a3.flac", "a4.ogg"]
RANDOM_BYTES = 5000
NEVER_A_PID = 2**22 + 1  # above Linux's largest pid


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list[Sample], name: str, **labels: str) -> float:
    """The one sample called `name` with exactly these labels."""
    [match] = [s.value for s in found if s.name == name and s.labels == labels]
    return match


def scrape(base_url: str, **headers: str) -> list[Sample]:
    response = httpx.get(base_url + "/metrics", headers=headers, trust_env=False, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


def downloads(found: list[Sample]) -> dict[tuple[str, str], float]:
    """(outcome, error) -> count, leaving out the series still at zero."""
    return {
        (s.labels["outcome"], s.labels["error"]): s.value
        for s in found
        if s.name == "audio_downloads_total" and s.value
    }


async def _post_all(base_url: str, requests: list[tuple[str, dict[str, str]]]) -> list[int]:
    # A connection per request, so that the kernel hands them to different workers.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=120, trust_env=False, limits=limits
    ) as client:
        answers = await asyncio.gather(*(client.post(path, data=data) for path, data in requests))
    return [answer.status_code for answer in answers]


def _single(cid: str, url: str) -> tuple[str, dict[str, str]]:
    return "/download/single", {"conversation_id": cid, "audio_url": url}


def _worker_downloads(run_dir: Path) -> dict[int, float]:
    """Downloads counted by each worker process, read from its own file."""
    counted = {}
    for path in run_dir.glob("counter_*.db"):
        merged = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        counted[int(path.stem.split("_")[1])] = sum(
            s.value for m in merged for s in m.samples if s.name == "audio_downloads_total"
        )
    return counted


@pytest.mark.slow
def test_four_workers_are_counted_exactly(tmp_path: Path) -> None:
    """Downloads spread over `--workers 4`, then one worker killed: every count in /metrics
    equals what was done and stored, gauges show waiting and running jobs, labels are route
    templates and codes, and the run's metric directory replaces the ones of ended runs."""
    for name, (fmt, seconds) in SOURCES.items():
        make_audio(tmp_path / "src" / name, fmt, seconds)
    sizes = {name: (tmp_path / "src" / name).stat().st_size for name in SOURCES}
    metrics_dir = tmp_path / "metrics"
    (metrics_dir / f"{NEVER_A_PID}-5").mkdir(parents=True)  # left by a run that has ended
    settings = make_settings(
        tmp_path, metrics_dir=metrics_dir, max_concurrent_jobs=1, download_retries=0
    )
    with SourceServer(tmp_path / "src") as src, ServerProcess(settings, workers=4) as server:
        base, file = server.base_url, src.file_url
        assert server.proc is not None
        [run_dir] = metrics_dir.iterdir()
        assert run_dir.name.startswith(f"{server.proc.pid}-")  # uvicorn's supervisor

        singles = [_single(f"mconv-s{n}", file(LEGS[n % 4])) for n in range(8)]
        batch = [
            *singles,
            ("/download/dual", {"conversation_id": "mconv-d0", "audio_url_agent": file("a1.mp3"),
                                "audio_url_customer": file("a2.wav")}),
            ("/download/dual", {"conversation_id": "mconv-d1", "audio_url_agent": file("a3.flac"),
                                "audio_url_customer": file("a4.ogg")}),
            ("/download/dual", {"conversation_id": "mconv-p0", "audio_url_agent": file("a2.wav"),
                                "audio_url_customer": src.url("/status/404")}),
            ("/download/stereo", {"conversation_id": "mconv-st", "audio_url": file("st.wav")}),
            _single("mconv-f404", src.url("/status/404")),
            _single("mconv-f410", src.url("/status/410")),
            _single("mconv-html", src.url("/html")),
            _single("mconv-random", src.url(f"/random/{RANDOM_BYTES}")),
            _single("../mconv-bad", file("a1.mp3")),
        ]  # fmt: skip
        assert asyncio.run(_post_all(base, batch)) == [200] * 12 + [502, 502, 422, 422, 400]
        again = [singles[0], singles[1], singles[2], _single("mconv-s3", file("a1.mp3"))]
        assert asyncio.run(_post_all(base, again)) == [200, 200, 200, 409]

        # Five jobs over four workers of one slot each: some wait while others run.
        slow = [_single(f"mconv-g{n}", src.url("/slow/1/a1.mp3")) for n in range(5)]
        posting = asyncio.run(_start_and_watch_jobs(base, slow))
        assert posting["statuses"] == [200] * 5
        assert posting["seen"]["running"] >= 1 and posting["seen"]["waiting"] >= 1
        assert posting["seen"]["running"] + posting["seen"]["waiting"] == 5

        with httpx.Client(base_url=base, trust_env=False, timeout=30) as client:
            assert client.get("/conversations/mconv-s0").status_code == 200
            assert client.get("/no/such/mconv-s0").status_code == 404
            listed = client.get("/conversations", params={"limit": 1000}).json()
        before_kill = scrape(base)

        # A worker dies: what it counted stays in the sums, its gauges leave them.
        per_worker = _worker_downloads(run_dir)
        assert len(per_worker) >= 4
        assert sum(1 for n in per_worker.values() if n) >= 2, per_worker  # spread over workers
        victim = max(per_worker, key=lambda pid: per_worker[pid])
        os.kill(victim, signal.SIGKILL)
        _wait_until_gone(victim)
        after_kill = scrape(base)
        assert not (run_dir / f"gauge_livesum_{victim}.db").exists()
        assert (run_dir / f"counter_{victim}.db").exists()
    assert not (metrics_dir / f"{NEVER_A_PID}-5").exists()

    for found in (before_kill, after_kill):
        assert downloads(found) == {
            ("success", ""): 8 + 4 + 1 + 2 + 5,
            ("exists", ""): 3,
            ("failed", "source_error"): 3,
            ("failed", "not_audio"): 2,
            ("failed", "url_conflict"): 1,
        }
        durations = [
            leg["duration_seconds"]
            for conversation in listed["conversations"]
            for leg in conversation["speakers"].values()
        ]
        assert len(durations) == 20
        assert value(found, "audio_stored_seconds_total") == pytest.approx(sum(durations), abs=1e-6)
        assert value(found, "audio_stored_speech_seconds_total") == pytest.approx(
            _stored_speech_seconds(settings), abs=1e-5
        )
        fetched = (sum(sizes[LEGS[n % 4]] for n in range(8))
                   + sizes["a1.mp3"] + sizes["a2.wav"] + sizes["a3.flac"] + sizes["a4.ogg"]
                   + sizes["a2.wav"] + sizes["st.wav"] + 5 * sizes["a1.mp3"]
                   + len(HTML_BODY) + RANDOM_BYTES)  # fmt: skip
        assert value(found, "audio_fetched_bytes_total") == fetched
        # Fetches that got the whole body (the two that were not audio did) and ffmpeg runs
        # that succeeded (the stereo call is one run for two files).
        assert value(found, "audio_download_duration_seconds_count") == 20 - 1 + 2
        assert value(found, "audio_download_duration_seconds_bucket", le="+Inf") == 21
        assert value(found, "audio_conversion_duration_seconds_count") == 19
        assert value(found, "audio_conversion_duration_seconds_sum") > 0
        assert value(found, "audio_jobs_waiting") == 0
        assert value(found, "audio_jobs_running") == 0
        requests = {
            (s.labels["handler"], s.labels["method"], s.labels["status"]): s.value
            for s in found
            if s.name == "http_requests_total"
        }
        assert requests[("/download/single", "POST", "200")] == 8 + 3 + 5
        assert requests[("/download/single", "POST", "502")] == 2
        assert requests[("/download/single", "POST", "422")] == 2
        assert requests[("/download/single", "POST", "409")] == 1
        assert requests[("/download/single", "POST", "400")] == 1
        assert requests[("/download/dual", "POST", "200")] == 3
        assert requests[("/download/stereo", "POST", "200")] == 1
        assert requests[("/conversations/{conversation_id}", "GET", "200")] == 1
        assert requests[("none", "GET", "404")] == 1
        labels = {v for s in found for v in s.labels.values()}
        assert not [v for v in labels if "mconv" in v or "127.0.0.1" in v or "/files" in v]


async def _start_and_watch_jobs(
    base_url: str, requests: list[tuple[str, dict[str, str]]]
) -> dict[str, Any]:
    """Post `requests` at once; while they run, scrape until every job is waiting or running."""
    posting = asyncio.create_task(_post_all(base_url, requests))
    seen: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not posting.done():
            found = samples((await client.get("/metrics")).text)
            now = {
                "running": value(found, "audio_jobs_running"),
                "waiting": value(found, "audio_jobs_waiting"),
            }
            if now["running"] + now["waiting"] == len(requests):
                seen = now
                break
            await asyncio.sleep(0.05)
    return {"statuses": await posting, "seen": seen or {"running": 0, "waiting": 0}}


def _wait_until_gone(pid: int) -> None:
    """Until uvicorn's supervisor has reaped the killed worker (it checks twice a second)."""
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        assert time.monotonic() < deadline, f"worker {pid} still runs"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _stored_speech_seconds(settings: Settings) -> float:
    tracker = MetadataTracker.from_settings(settings)
    try:
        micros: dict[str, int] = tracker.speech_summary()["speaker_micros"]
        return sum(micros.values()) / 1e6
    finally:
        tracker.close()


# Who may scrape ---------------------------------------------------------------------------------


def test_api_key_guards_metrics_unless_metrics_public(tmp_path: Path) -> None:
    """With API_KEY set /metrics needs X-API-Key, unless METRICS_PUBLIC=true opens it (and only
    it); without API_KEY it is open."""
    with TestClient(create_app(make_settings(tmp_path / "a", api_key="s3cret"))) as client:
        for headers in ({}, {"X-API-Key": "wrong"}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"] == "unauthorized"
        allowed = client.get("/metrics", headers={"X-API-Key": "s3cret"})
        assert allowed.status_code == 200
        assert "audio_downloads_total" in {s.name for s in samples(allowed.text)}
    public = make_settings(tmp_path / "b", api_key="s3cret", metrics_public=True)
    with TestClient(create_app(public)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/statistics").status_code == 401
    with TestClient(create_app(make_settings(tmp_path / "c"))) as client:
        assert client.get("/metrics").status_code == 200


def test_one_process_counts_a_download(tmp_path: Path, source: SourceServer) -> None:
    """In a single process (the app in this one) a download moves each of its metrics by
    exactly its own amounts."""
    url = source.file_url("mp3.mp3")
    size = len(httpx.get(url, trust_env=False).content)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        before = samples(client.get("/metrics").text)
        answer = client.post("/download/single", data={"conversation_id": "one", "audio_url": url})
        assert answer.status_code == 200
        after = samples(client.get("/metrics").text)

    def grew(name: str, **labels: str) -> float:
        was = [s.value for s in before if s.name == name and s.labels == labels] or [0.0]
        return value(after, name, **labels) - sum(was)  # absent before: nothing counted yet

    assert grew("audio_downloads_total", outcome="success", error="") == 1
    assert grew("audio_stored_seconds_total") == pytest.approx(answer.json()["duration_seconds"])
    assert grew("audio_fetched_bytes_total") == size
    assert grew("audio_download_duration_seconds_count") == 1
    assert grew("audio_conversion_duration_seconds_count") == 1
    assert grew("http_requests_total", handler="/download/single", method="POST", status="200") == 1


def test_importing_writes_nothing_and_the_first_count_lands_in_the_run_directory(
    tmp_path: Path,
) -> None:
    """The commands import the downloader and ffmpeg code without making any metric file; the
    first count a process makes goes to its run's directory, where a scrape reads it."""
    code = (
        "import os, pathlib\n"
        "import diarization_audio.ingest.downloader, diarization_audio.cli.check\n"
        "from diarization_audio import metrics\n"
        "print(pathlib.Path(os.environ['METRICS_DIR']).exists())\n"
        "metrics.bytes_fetched(7)\n"
        "print(metrics.run_directory())\n"
    )
    env = {**os.environ, "METRICS_DIR": str(tmp_path / "metrics"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    existed, run_dir = out.stdout.split()
    assert existed == "False"
    assert Path(run_dir).parent == tmp_path / "metrics"
    files = [str(path) for path in Path(run_dir).glob("*.db")]
    fetched = [
        s.value
        for metric in MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        for s in metric.samples
        if s.name == "audio_fetched_bytes_total"
    ]
    assert fetched == [7.0]
