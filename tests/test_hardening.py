"""Who may fetch what, resource limits and hostile sources: each refused as documented."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.stores import make_settings
from test_errors import assert_nothing_stored, post_single

from bench.media import make_long_mp3
from diarization_audio.errors import UrlRefused
from diarization_audio.ingest.url_policy import UrlPolicy
from diarization_audio.service.app import create_app
from diarization_audio.settings import Settings


def app_client(tmp_path: Path, **overrides: object) -> tuple[TestClient, Settings]:
    settings = make_settings(tmp_path, **overrides)
    return TestClient(create_app(settings)), settings


# API key ---------------------------------------------------------------------------------------


def test_api_key_guards_everything_but_root_and_health(
    tmp_path: Path, source: SourceServer
) -> None:
    """With API_KEY set, data endpoints need X-API-Key; / and /health stay open."""
    test_client, _ = app_client(tmp_path, api_key="s3cret")
    with test_client as client:
        assert client.get("/").status_code == 200
        assert client.get("/health").status_code == 200
        for method, path in [
            ("GET", "/statistics"), ("GET", "/storage/info"), ("GET", "/conversations"),
            ("GET", "/conversations/x"), ("POST", "/download/single"), ("POST", "/download/dual"),
        ]:  # fmt: skip
            for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret "}):
                response = client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.json()["error"] == "unauthorized"
        assert client.get("/statistics", headers={"X-API-Key": "s3cret"}).status_code == 200
        ok = client.post(
            "/download/single",
            headers={"X-API-Key": "s3cret"},
            data={"conversation_id": "k", "audio_url": source.file_url("mp3.mp3")},
        )
        assert ok.status_code == 200


# URL policy ------------------------------------------------------------------------------------


def test_policy_blocks_link_local_and_mapped_addresses_by_default() -> None:
    """The default networks refuse cloud metadata addresses, also as IPv4-mapped IPv6."""
    policy = UrlPolicy(blocked_networks=make_settings(Path("/tmp")).blocked_networks)
    url = httpx.URL("http://metadata.example/")
    for address in ("169.254.169.254", "fe80::1", "::ffff:169.254.169.254"):
        with pytest.raises(UrlRefused):
            policy.check_address(url, ipaddress.ip_address(address))
    policy.check_address(url, ipaddress.ip_address("10.0.0.5"))  # private is allowed by default


def test_policy_allowed_hosts_match_exactly_or_by_wildcard() -> None:
    """ALLOWED_URL_HOSTS takes exact names and *.domain suffixes, nothing else."""
    policy = UrlPolicy(allowed_hosts=["calls.example.com", "*.rec.example.org"])
    policy.check_host(httpx.URL("https://calls.example.com/a.mp3"))
    policy.check_host(httpx.URL("https://eu.rec.example.org/a.mp3"))
    for bad in (
        "https://example.com/",
        "https://calls.example.com.evil.net/",
        "https://rec.example.org/",
    ):
        with pytest.raises(UrlRefused):
            policy.check_host(httpx.URL(bad))


def test_host_outside_the_allow_list_is_403_without_any_connection(
    tmp_path: Path, source: SourceServer
) -> None:
    """A host not in ALLOWED_URL_HOSTS is refused with 403 before any request is sent."""
    test_client, settings = app_client(tmp_path, allowed_url_hosts=["calls.example.com"])
    with test_client as client:
        got, body = post_single(client, source.file_url("mp3.mp3"))
    assert got == 403 and body["error"] == "url_refused"
    assert "ALLOWED_URL_HOSTS" in body["detail"]
    assert source.hits["/files/mp3.mp3"] == 0
    assert_nothing_stored(settings)


def test_a_name_resolving_to_a_blocked_network_is_refused(
    tmp_path: Path, source: SourceServer
) -> None:
    """'localhost' resolves to 127.0.0.1; with 127.0.0.0/8 blocked the name is refused too."""
    test_client, settings = app_client(tmp_path, blocked_networks=["127.0.0.0/8", "::1/128"])
    with test_client as client:
        got, body = post_single(
            client, source.file_url("mp3.mp3").replace("127.0.0.1", "localhost")
        )
    assert got == 403 and body["error"] == "url_refused"
    assert source.hits["/files/mp3.mp3"] == 0
    assert_nothing_stored(settings)


def test_block_private_networks_refuses_loopback(tmp_path: Path, source: SourceServer) -> None:
    """BLOCK_PRIVATE_NETWORKS=true refuses every non-public address, loopback included."""
    test_client, _ = app_client(tmp_path, block_private_networks=True)
    with test_client as client:
        got, body = post_single(client, source.file_url("mp3.mp3"))
    assert got == 403 and "BLOCK_PRIVATE_NETWORKS" in body["detail"]
    assert source.hits["/files/mp3.mp3"] == 0


@pytest.mark.parametrize(
    ("target", "overrides"),
    [
        ("http://169.254.169.254/latest/meta-data/", {}),  # default policy
        ("http://127.0.0.2:{port}/files/mp3.mp3", {"blocked_networks": ["127.0.0.2/32"]}),
        ("ftp://127.0.0.1/a.mp3", {}),
        ("file:///etc/passwd", {}),
    ],
)
def test_redirects_to_blocked_places_are_403(
    tmp_path: Path, source: SourceServer, target: str, overrides: dict[str, object]
) -> None:
    """A redirect hop to a blocked network or a non-http scheme is refused before it is followed."""
    test_client, settings = app_client(tmp_path, **overrides)
    location = target.format(port=source.port)
    with test_client as client:
        got, body = post_single(
            client, source.url(f"/redirect-to?location={quote(location, safe='')}")
        )
    assert got == 403, body
    assert body["error"] == "url_refused"
    assert_nothing_stored(settings)


def test_redirects_are_followed_up_to_five(client: TestClient, source: SourceServer) -> None:
    """Five redirects are followed; a sixth, or a loop, is a 502 naming the cause."""
    got, _ = post_single(client, source.url("/redirect/5/mp3.mp3"), cid="r5")
    assert got == 200
    got, body = post_single(client, source.url("/redirect/6/mp3.mp3"), cid="r6")
    assert got == 502 and "redirected too many times" in body["detail"]
    got, body = post_single(client, source.url("/redirect-loop"), cid="loop")
    assert got == 502 and "redirected too many times" in body["detail"]


# Resource limits -------------------------------------------------------------------------------


def test_low_disk_is_refused_before_downloading(tmp_path: Path, source: SourceServer) -> None:
    """A job that would leave less than MIN_FREE_DISK_MB free gets 507 and fetches nothing."""
    test_client, settings = app_client(tmp_path, min_free_disk_mb=10**9)
    with test_client as client:
        got, body = post_single(client, source.file_url("mp3.mp3"))
    assert got == 507 and body["error"] == "insufficient_storage"
    assert source.hits["/files/mp3.mp3"] == 0
    assert_nothing_stored(settings)


def test_low_disk_is_checked_again_against_content_length(
    tmp_path: Path, source: SourceServer
) -> None:
    """A Content-Length that would eat into MIN_FREE_DISK_MB is refused before its body is read."""
    free_mb = shutil.disk_usage(tmp_path).free / 1024 / 1024
    test_client, settings = app_client(tmp_path, min_free_disk_mb=max(free_mb - 1000, 1))
    with test_client as client:
        started = time.monotonic()
        got, body = post_single(client, source.url("/big/1500000000"))
    assert got == 507, body
    assert time.monotonic() - started < 5  # 1.5 GB was not downloaded
    assert_nothing_stored(settings)


def test_audio_longer_than_the_limit_is_422(tmp_path: Path, source: SourceServer) -> None:
    """A file decoding to more than MAX_AUDIO_HOURS is refused and leaves nothing behind."""
    test_client, settings = app_client(tmp_path, max_audio_hours=0.0002)  # 0.72 s
    with test_client as client:
        got, body = post_single(client, source.file_url("flac.flac"))
    assert got == 422 and body["error"] == "audio_too_long"
    assert_nothing_stored(settings)


@pytest.fixture(scope="module")
def long_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceServer]:
    directory = tmp_path_factory.mktemp("long")
    make_long_mp3(directory / "long.mp3", minutes=30)
    with SourceServer(directory) as server:
        yield server


def _ffmpeg_processes_for(path: Path) -> list[str]:
    """Command lines of running ffmpeg processes that touch files under `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode(errors="replace") for a in args)
        if (
            args
            and b"ffmpeg" in Path(args[0].decode(errors="replace")).name.encode()
            and str(path) in line
        ):
            found.append(line)
    return found


def test_conversion_past_its_timeout_is_killed(tmp_path: Path, long_source: SourceServer) -> None:
    """ffmpeg running past CONVERT_TIMEOUT_SECONDS is killed; the job fails with 503."""
    test_client, settings = app_client(tmp_path, convert_timeout_seconds=0.3)
    with test_client as client:
        got, body = post_single(client, long_source.file_url("long.mp3"))
    assert got == 503 and body["error"] == "conversion_timeout"
    assert "CONVERT_TIMEOUT_SECONDS" in body["detail"]
    assert _ffmpeg_processes_for(Path(settings.audio_storage_dir)) == []
    assert_nothing_stored(settings)


def test_jobs_beyond_the_limit_get_503_with_retry_after(
    tmp_path: Path, source: SourceServer
) -> None:
    """With one job slot busy, a second job waits JOB_QUEUE_TIMEOUT_SECONDS, then gets 503."""
    settings = make_settings(tmp_path, max_concurrent_jobs=1, job_queue_timeout_seconds=0.5)
    with (
        ServerProcess(settings) as server,
        httpx.Client(base_url=server.base_url, trust_env=False) as client,
    ):
        import threading

        first: list[httpx.Response] = []
        holder = threading.Thread(
            target=lambda: first.append(
                client.post(
                    "/download/single",
                    data={"conversation_id": "hold", "audio_url": source.url("/slow/2/mp3.mp3")},
                    timeout=30,
                )
            )
        )
        holder.start()
        # The job slot is taken before the download starts, so once the source sees the
        # request the only slot is held for the next two seconds.
        assert source.wait_for_hits("/slow/2/mp3.mp3")
        second = client.post(
            "/download/single",
            data={"conversation_id": "wait", "audio_url": source.file_url("mp3.mp3")},
            timeout=30,
        )
        holder.join()
    assert second.status_code == 503 and second.json()["error"] == "busy"
    assert int(second.headers["Retry-After"]) > 0
    assert first[0].status_code == 200


# Hostile sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/trickle/0.3/mp3.mp3", 504),  # stalls: a byte every 0.3 s, past the 2 s deadline
        ("/endless", 504),  # never ends (no size limit hit within the deadline)
        ("/lying-length/huge/90000000/mp3.mp3", 502),  # claims 90 MB, closes early
        ("/truncated/wav.wav", 502),  # closes mid-body
        ("/redirect-loop", 502),
    ],
)
def test_hostile_sources_fail_in_time_while_health_answers(
    tmp_path: Path, source: SourceServer, path: str, status: int
) -> None:
    """Each hostile source gets its documented error within its deadline; /health never stalls."""
    settings = make_settings(
        tmp_path, download_deadline_seconds=2, download_retries=1, max_download_mb=100000
    )
    with (
        ServerProcess(settings) as server,
        httpx.Client(base_url=server.base_url, trust_env=False) as client,
    ):
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            job = pool.submit(
                client.post,
                "/download/single",
                data={"conversation_id": "h", "audio_url": source.url(path)},
                timeout=60,
            )
            # Probe from the moment the hostile source is being fetched until the job ends.
            assert source.wait_for_hits(path)
            worst = 0.0
            while not job.done():
                probe = time.monotonic()
                assert client.get("/health", timeout=5).status_code == 200
                worst = max(worst, time.monotonic() - probe)
                concurrent.futures.wait([job], timeout=0.1)
            response = job.result()
            elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    assert elapsed < 2 * 2 + 5  # two attempts of at most the deadline, plus backoff
    assert worst < 1.0
    assert_nothing_stored(settings)


def test_a_body_longer_than_its_content_length_is_cut_at_the_declared_length(
    client: TestClient, source: SourceServer
) -> None:
    """Bytes past Content-Length are ignored: what is stored is what the header promised."""
    got, body = post_single(client, source.url("/lying-length/short/wav.wav?length=64000"))
    assert got == 200, body
    # 64,000 bytes of 44.1 kHz stereo 16-bit PCM (minus the header) is about 0.36 s.
    assert 0.3 < float(body["duration_seconds"]) < 0.4


# Odd input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "../../etc/passwd",
        "/tmp/x",
        "..",
        "a\x00b",
        "\u2024\u2024/x",
        "\uff41\uff47\uff45\uff4e\uff54",
        "x" * 10_000,
        "a\nb",
    ],
)
def test_odd_values_in_every_field_are_400_and_write_nothing(
    tmp_path: Path, client: TestClient, settings: Settings, value: str
) -> None:
    """Traversal, absolute paths, NUL, look-alikes and 10 kB strings are refused in every field."""
    url = "http://127.0.0.1:9/a.mp3"
    attempts = [
        ("/download/single", {"conversation_id": value, "audio_url": url}),
        ("/download/single", {"conversation_id": "ok", "audio_url": url, "speaker_label": value}),
        ("/download/single", {"conversation_id": "ok", "audio_url": value}),
        ("/download/dual", {"conversation_id": value, "audio_url_agent": url}),
        ("/download/dual", {"conversation_id": "ok", "audio_url_agent": value}),
        (
            "/download/dual",
            {"conversation_id": "ok", "audio_url_agent": url, "audio_url_customer": value},
        ),
    ]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for path, data in attempts:
        response = client.post(path, data=data)
        assert response.status_code == 400, (path, data, response.text[:200])
        assert response.json()["error"] == "invalid_input"
    if value != "..":  # the client itself resolves /conversations/.. to /conversations
        assert client.get(f"/conversations/{quote(value, safe='')}").status_code in (400, 404)
    assert_nothing_stored(settings)
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith("audio_downloader.log")] == []


@pytest.mark.parametrize("servers", [1, 3])
def test_conversions_never_exceed_their_limit(
    tmp_path: Path, long_source: SourceServer, servers: int
) -> None:
    """With MAX_CONCURRENT_CONVERSIONS=1, three long jobs run one ffmpeg at a time on the host,
    whether one server process takes all three or three processes take one each."""
    settings = make_settings(tmp_path, max_concurrent_conversions=1)
    storage = Path(settings.audio_storage_dir)
    with contextlib.ExitStack() as stack:
        hosts = [stack.enter_context(ServerProcess(settings)).base_url for _ in range(servers)]
        client = stack.enter_context(httpx.Client(trust_env=False, timeout=120))
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(3))
        jobs = [
            pool.submit(
                client.post,
                hosts[n % servers] + "/download/single",
                data={"conversation_id": f"l{n}", "audio_url": long_source.file_url("long.mp3")},
            )
            for n in range(3)
        ]
        most = 0
        while not all(job.done() for job in jobs):
            most = max(most, len(_ffmpeg_processes_for(storage)))
            concurrent.futures.wait(jobs, timeout=0.05)
        answers = [job.result() for job in jobs]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert most == 1
