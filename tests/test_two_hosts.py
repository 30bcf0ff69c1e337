"""Several hosts share the work: two service processes, one PostgreSQL store, and one storage
folder or one bucket of a real S3 server."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import httpx
import pytest
from support.cli_helpers import audio_hits
from support.s3_server import S3Server
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.stores import make_settings, recorded_conversations

from diarization_audio.objects import audio_place
from diarization_audio.store.layout import wav_files

pytestmark = pytest.mark.slow

FORMATS = ["mp3.mp3", "wav.wav", "flac.flac", "ogg.ogg", "m4a.m4a", "aac.aac", "opus.opus"]


async def _post_split(
    hosts: list[str], jobs: list[tuple[str, str]]
) -> list[tuple[str, httpx.Response]]:
    """Every job at once, alternately to each host; (host, answer) per job."""
    async with httpx.AsyncClient(timeout=180, trust_env=False) as client:

        async def post(n: int, cid: str, url: str) -> tuple[str, httpx.Response]:
            host = hosts[n % len(hosts)]
            data = {"conversation_id": cid, "audio_url": url, "speaker_label": "agent"}
            return host, await client.post(host + "/download/single", data=data)

        return list(await asyncio.gather(*(post(n, cid, url) for n, (cid, url) in enumerate(jobs))))


@pytest.mark.parametrize("where", ["folder", "bucket"])
def test_two_hosts_share_one_postgresql_store(
    tmp_path: Path,
    source: SourceServer,
    database_url: str,
    where: str,
    request: pytest.FixtureRequest,
) -> None:
    """64 simultaneous downloads split over two hosts: each recorded once, written once, and
    counted by either host, with the WAVs in one folder or in one bucket."""
    shared: dict[str, object] = {}
    if where == "bucket":
        s3: S3Server = request.getfixturevalue("s3_server")
        shared = {"audio_storage_url": f"s3://{s3.new_bucket()}/calls", **s3.settings()}
    settings = make_settings(tmp_path, database_url=database_url, max_concurrent_jobs=32, **shared)
    jobs = [(f"shared{n:02d}", source.file_url(FORMATS[n % len(FORMATS)])) for n in range(64)]
    with ServerProcess(settings) as first, ServerProcess(settings) as second:
        hosts = [first.base_url, second.base_url]
        answers = asyncio.run(_post_split(hosts, jobs))
        counted = [
            httpx.get(host + "/statistics", trust_env=False, timeout=60).json()["summary"]
            for host in hosts
        ]
    assert [a.status_code for _, a in answers] == [200] * 64, [a.text for _, a in answers][:3]
    assert Counter(host for host, _ in answers) == {hosts[0]: 32, hosts[1]: 32}
    assert all(a.json()["status"] == "success" for _, a in answers)

    recorded = recorded_conversations(settings)
    assert sorted(recorded) == [cid for cid, _ in jobs]
    assert all(list(entry["speakers"]) == ["agent"] for entry in recorded.values())
    assert [c["total_conversations"] for c in counted] == [64, 64]
    assert counted[0] == counted[1]

    place = audio_place(settings)
    stored = wav_files(place)
    assert sorted(stored) == [f"{cid}_agent.wav" for cid, _ in jobs]
    for cid, entry in recorded.items():
        assert entry["speakers"]["agent"]["file_size_bytes"] == stored[f"{cid}_agent.wav"]
        assert entry["speakers"]["agent"]["filepath"] == place.location(f"{cid}_agent.wav")
    # No work in progress is left in the local storage folder (temporary names start with a dot).
    work = Path(settings.audio_storage_dir)
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []
    if where == "bucket":
        assert list(work.iterdir()) == []  # the WAVs went to the bucket only
    # Written once: one download per job at the source, one success line per file in the log.
    assert audio_hits(source) == 64
    log = (Path(settings.log_dir) / "audio_downloader.log").read_text()
    written = Counter(
        re.findall(r"conversation=(shared\d\d) speaker=agent .* outcome=success", log)
    )
    assert written == dict.fromkeys((cid for cid, _ in jobs), 1)
    # Both hosts did part of the work (their process ids in the log lines).
    line = r"\[(\d+)\] diarization_audio\.ingest\.downloader: conversation=shared"
    workers = set(re.findall(line, log))
    assert len(workers) == 2
