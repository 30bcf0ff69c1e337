"""Real uvicorn processes: four workers under concurrent load, responsiveness, `python main.py`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support import ROOT
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.stores import make_settings, recorded_conversations

from bench.media import make_long_mp3
from diarization_audio.service.process import free_port, service_environment
from diarization_audio.settings import Settings

pytestmark = pytest.mark.slow


async def _post_all(
    base_url: str, requests: list[tuple[str, dict[str, str]]]
) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=120, trust_env=False) as client:
        return list(
            await asyncio.gather(*(client.post(path, data=data) for path, data in requests))
        )


def test_four_workers_record_forty_concurrent_downloads(
    tmp_path: Path, source: SourceServer
) -> None:
    """40 simultaneous downloads over `--workers 4`: all stored, all recorded, all counted."""
    settings = make_settings(tmp_path)
    formats = ["mp3.mp3", "wav.wav", "flac.flac", "ogg.ogg", "m4a.m4a"]
    requests = []
    for n in range(40):
        url = source.file_url(formats[n % len(formats)])
        if n % 2:
            requests.append(
                (
                    "/download/single",
                    {"conversation_id": f"cc{n:02d}", "audio_url": url, "speaker_label": "agent"},
                )
            )
        else:
            requests.append(
                (
                    "/download/dual",
                    {
                        "conversation_id": f"cc{n:02d}",
                        "audio_url_agent": url,
                        "audio_url_customer": source.file_url("opus.opus"),
                    },
                )
            )
    with ServerProcess(settings, workers=4) as server:
        responses = asyncio.run(_post_all(server.base_url, requests))
        assert [r.status_code for r in responses] == [200] * 40, [
            r.text for r in responses if r.status_code != 200
        ]
        stats = httpx.get(
            server.base_url + "/statistics", params={"target_hours": 1}, trust_env=False, timeout=60
        ).json()
    assert sorted(recorded_conversations(settings)) == [f"cc{n:02d}" for n in range(40)]
    # The JSON export is current once the service has stopped.
    doc = json.loads(Path(settings.metadata_file).read_text())
    assert sorted(doc["conversations"]) == [f"cc{n:02d}" for n in range(40)]
    files = sorted(p.name for p in Path(settings.audio_storage_dir).iterdir())
    assert len(files) == 60 and all(not name.startswith(".") for name in files)
    assert stats["summary"]["total_conversations"] == 40
    assert stats["summary"]["total_minutes"] == pytest.approx(60 * 2 / 60, abs=0.2)


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("long")
    make_long_mp3(directory / "long.mp3", minutes=20)
    return directory


def test_health_answers_while_long_conversions_run(tmp_path: Path, long_audio: Path) -> None:
    """/health keeps answering within a second while four 20-minute files convert."""
    settings = make_settings(tmp_path)
    with SourceServer(long_audio) as src, ServerProcess(settings) as server:

        async def scenario() -> tuple[list[float], list[httpx.Response], int]:
            async with httpx.AsyncClient(
                base_url=server.base_url, timeout=120, trust_env=False
            ) as client:
                jobs = [
                    asyncio.create_task(
                        client.post(
                            "/download/single",
                            data={
                                "conversation_id": f"long{n}",
                                "audio_url": src.file_url("long.mp3"),
                            },
                        )
                    )
                    for n in range(4)
                ]
                latencies: list[float] = []
                busy_probes = 0
                # Probing starts once all four jobs are under way: the source has their requests.
                assert await asyncio.to_thread(src.wait_for_hits, "/files/long.mp3", 4)
                while not all(job.done() for job in jobs):
                    started = time.monotonic()
                    response = await client.get("/health")
                    latencies.append(time.monotonic() - started)
                    assert response.status_code == 200
                    busy_probes += not all(job.done() for job in jobs)
                    await asyncio.wait(jobs, timeout=0.05)
                return latencies, [job.result() for job in jobs], busy_probes

        latencies, results, busy_probes = asyncio.run(scenario())
    assert [r.status_code for r in results] == [200] * 4
    assert all(r.json()["duration_seconds"] == pytest.approx(1200, abs=1) for r in results)
    assert busy_probes >= 5, "conversions finished before /health could be probed"
    assert max(latencies) < 1.0, sorted(latencies)[-5:]


def test_python_main_serves_on_host_and_port(tmp_path: Path) -> None:
    """`python main.py` reads HOST and PORT from the environment and serves the API there, with
    its metrics in a directory of its own under METRICS_DIR."""
    settings = make_settings(
        tmp_path, host="127.0.0.1", port=free_port(), metrics_dir=tmp_path / "metrics"
    )
    env = service_environment(settings)
    out = open(tmp_path / "out.txt", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "main.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 90
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                body = httpx.get(
                    f"http://127.0.0.1:{settings.port}/health", timeout=1, trust_env=False
                ).json()
            except httpx.TransportError:
                time.sleep(0.1)
        assert body is not None, (tmp_path / "out.txt").read_text()
        assert body["storage_directory"] == str(settings.audio_storage_dir)
        scraped = httpx.get(f"http://127.0.0.1:{settings.port}/metrics", trust_env=False)
        assert "audio_downloads_total{" in scraped.text
        [run_dir] = (tmp_path / "metrics").iterdir()
        assert run_dir.name.startswith(f"{proc.pid}-")
    finally:
        proc.terminate()
        proc.wait(20)
        out.close()
    # uvicorn re-raises the SIGTERM it handled after a clean shutdown.
    assert proc.returncode in (0, -15)
    assert "Finished server process" in (tmp_path / "out.txt").read_text()


def test_requests_are_logged_with_zone_offset(
    server_process: ServerProcess, source: SourceServer, settings: Settings
) -> None:
    """The log file records each request's id, speaker, URL, outcome, duration and time taken."""
    url = source.file_url("mp3.mp3")
    httpx.post(
        server_process.base_url + "/download/single",
        data={"conversation_id": "logged", "audio_url": url, "speaker_label": "agent"},
        trust_env=False,
        timeout=60,
    )
    httpx.post(
        server_process.base_url + "/download/single",
        data={"conversation_id": "logged2", "audio_url": source.url("/html")},
        trust_env=False,
        timeout=60,
    )
    log = (Path(settings.log_dir) / "audio_downloader.log").read_text()
    ok = next(line for line in log.splitlines() if "conversation=logged " in line)
    assert "+05:30" in ok.split(" INFO ")[0]
    for part in ("speaker=agent", f"url={url}", "outcome=success", "duration=2.00s", "took="):
        assert part in ok, ok
    bad = next(line for line in log.splitlines() if "conversation=logged2 " in line)
    assert "outcome=not_audio" in bad and "WARNING" in bad
