"""Bad input and misbehaving sources: the documented status, a JSON error, nothing left behind."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.source_server import SourceServer
from support.stores import make_settings

from diarization_audio.logs import LOG_FILENAME
from diarization_audio.service.app import create_app
from diarization_audio.service.process import free_port
from diarization_audio.settings import Settings
from diarization_audio.store.tracker import MetadataTracker
from diarization_audio.url_secrets import shown


def assert_nothing_stored(settings: Settings) -> None:
    """No file of any kind in storage, no conversation in the store or its JSON export."""
    storage = Path(settings.audio_storage_dir)
    assert sorted(p.name for p in storage.iterdir()) == []
    assert MetadataTracker.from_settings(settings).check() == 0
    metadata = Path(settings.metadata_file)
    if metadata.exists():
        assert json.loads(metadata.read_text())["conversations"] == {}


def post_single(client: TestClient, url: str, cid: str = "c1") -> tuple[int, dict[str, str]]:
    response = client.post("/download/single", data={"conversation_id": cid, "audio_url": url})
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("path", "status", "code", "hits"),
    [
        ("/status/404", 502, "source_error", 1),
        ("/status/403", 502, "source_error", 1),
        ("/status/500", 502, "source_error", 3),  # 1 try + DOWNLOAD_RETRIES=2
        ("/status/503", 502, "source_error", 3),
        ("/status/429?retry_after=0", 502, "source_error", 3),
        ("/truncated/mp3.mp3", 502, "source_error", 3),
        ("/html", 422, "not_audio", 1),
        ("/random/20000", 422, "not_audio", 1),
        ("/empty", 422, "not_audio", 1),
    ],
)
def test_bad_sources_get_their_documented_error(
    client: TestClient,
    source: SourceServer,
    settings: Settings,
    path: str,
    status: int,
    code: str,
    hits: int,
) -> None:
    """Each kind of bad source maps to its status and code, is retried only if transient."""
    got, body = post_single(client, source.url(path))
    assert got == status, body
    assert body["error"] == code
    assert shown(source.url(path)) in body["detail"]  # named, but without its query string
    assert source.hits[path.split("?")[0]] == hits
    assert_nothing_stored(settings)


def test_unreachable_source_is_502(client: TestClient, settings: Settings) -> None:
    """A port nobody listens on gives 502 naming the URL."""
    url = f"http://127.0.0.1:{free_port()}/nothing.mp3"
    got, body = post_single(client, url)
    assert got == 502 and body["error"] == "source_error"
    assert url in body["detail"] and "ConnectError" in body["detail"]
    assert_nothing_stored(settings)


def test_transient_failures_are_retried_until_success(
    client: TestClient, source: SourceServer
) -> None:
    """Two 503 answers then the file: the download succeeds on the third try."""
    got, body = post_single(client, source.url("/flaky/2/mp3.mp3"))
    assert got == 200, body
    assert body["status"] == "success"
    assert source.hits["/flaky/2/mp3.mp3"] == 3


def test_retry_after_is_honoured(tmp_path: Path, source: SourceServer) -> None:
    """A 503 with Retry-After: 1 makes the next try wait at least one second."""
    settings = make_settings(tmp_path, download_retry_max_wait_seconds=5)
    started = time.monotonic()
    with TestClient(create_app(settings)) as client:
        got, _ = post_single(client, source.url("/flaky/1/wav.wav?retry_after=1"))
    assert got == 200
    assert time.monotonic() - started >= 1.0
    assert source.hits["/flaky/1/wav.wav"] == 2


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(tmp_path, download_timeout_seconds=0.5, download_retries=1)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def test_a_source_that_does_not_answer_in_time_is_504(
    impatient: tuple[TestClient, Settings], source: SourceServer
) -> None:
    """A source slower than DOWNLOAD_TIMEOUT_SECONDS gets 504 after its retries."""
    client, settings = impatient
    got, body = post_single(client, source.url("/slow/3/mp3.mp3"))
    assert got == 504 and body["error"] == "source_timeout"
    assert source.hits["/slow/3/mp3.mp3"] == 2
    assert_nothing_stored(settings)


def test_a_trickling_source_hits_the_overall_deadline(tmp_path: Path, source: SourceServer) -> None:
    """A byte every 0.2 s never trips the read timeout but stops at DOWNLOAD_DEADLINE_SECONDS."""
    settings = make_settings(tmp_path, download_deadline_seconds=1.5, download_retries=0)
    with TestClient(create_app(settings)) as client:
        started = time.monotonic()
        got, body = post_single(client, source.url("/trickle/0.2/mp3.mp3"))
    assert got == 504 and body["error"] == "source_timeout"
    assert time.monotonic() - started < 10
    assert_nothing_stored(settings)


@pytest.fixture
def tiny_limit(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(tmp_path, max_download_mb=0.01)  # 10 KiB
    with TestClient(create_app(settings)) as client:
        yield client, settings


def test_declared_size_over_the_limit_is_413(
    tiny_limit: tuple[TestClient, Settings], source: SourceServer
) -> None:
    """Content-Length over MAX_DOWNLOAD_MB is refused before reading the body."""
    client, settings = tiny_limit
    got, body = post_single(client, source.url("/big/5000000"))
    assert got == 413 and body["error"] == "too_large"
    assert "MAX_DOWNLOAD_MB" in body["detail"]
    assert_nothing_stored(settings)


def test_streamed_size_over_the_limit_is_413(
    tiny_limit: tuple[TestClient, Settings], source: SourceServer
) -> None:
    """A body with no length that never ends is cut off at MAX_DOWNLOAD_MB."""
    client, settings = tiny_limit
    got, body = post_single(client, source.url("/endless"))
    assert got == 413 and body["error"] == "too_large"
    assert_nothing_stored(settings)


@pytest.mark.parametrize("field", ["conversation_id", "audio_url"])
def test_missing_required_field_is_400_naming_it(client: TestClient, field: str) -> None:
    """A missing required form field gets 400 and the answer names the field."""
    data = {"conversation_id": "c1", "audio_url": "http://127.0.0.1:9/a.mp3"}
    del data[field]
    response = client.post("/download/single", data=data)
    assert response.status_code == 400
    assert response.json() == {"detail": f"{field} is required", "error": "invalid_input"}


def test_dual_missing_agent_url_is_400(client: TestClient) -> None:
    """/download/dual without audio_url_agent gets 400 naming it."""
    response = client.post("/download/dual", data={"conversation_id": "c1"})
    assert response.status_code == 400
    assert "audio_url_agent is required" in response.json()["detail"]


BAD_NAMES = [
    "", ".hidden", "../etc", "a/b", "a\\b", "/abs", "a b", "a\x00b", "caf\u00e9", "\u0430gent",
    "x" * 129, "a;rm", "a*b", "~root",
]  # fmt: skip


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_conversation_ids_and_labels_are_400(
    client: TestClient, settings: Settings, tmp_path: Path, name: str
) -> None:
    """Ids and labels outside [A-Za-z0-9._-]{1,128}, or with a leading dot, get 400; no writes."""
    url = "http://127.0.0.1:9/a.mp3"
    attempts = [{"conversation_id": name, "audio_url": url}]
    if name:  # an empty optional form field means "not sent": the default label applies
        attempts.append({"conversation_id": "ok", "audio_url": url, "speaker_label": name})
    for data in attempts:
        response = client.post("/download/single", data=data)
        assert response.status_code == 400, (data, response.text)
        assert response.json()["error"] == "invalid_input"
    dual = client.post("/download/dual", data={"conversation_id": name, "audio_url_agent": url})
    assert dual.status_code == 400
    assert_nothing_stored(settings)
    assert MetadataTracker.from_settings(settings).failure_summary()["total"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "conversations_metadata.sqlite3", "conversations_metadata.sqlite3-shm",
        "conversations_metadata.sqlite3-wal", "logs", "slots", "store",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["a", "A-b_c.d", "9" * 128, "conv.001", "-x"])
def test_good_names_are_accepted(client: TestClient, source: SourceServer, name: str) -> None:
    """Names inside the rule are accepted as they are."""
    got, body = post_single(client, source.file_url("mp3.mp3"), cid=name)
    assert got == 200, body
    assert body["filename"] == f"{name}_speaker.wav"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd", "ftp://127.0.0.1/a.mp3", "127.0.0.1/a.mp3", "http://", "https:///x",
        "not a url", "javascript:alert(1)", "http://127.0.0.1:99999/a", "http://[::1/a",
        "http://127.0.0.1/a b.mp3", "",
    ],
)  # fmt: skip
def test_bad_urls_are_400(client: TestClient, settings: Settings, url: str) -> None:
    """Anything but an http(s) URL with a host is refused with 400 before any download."""
    got, body = post_single(client, url)
    assert got == 400, body
    assert body["error"] == "invalid_input"
    assert_nothing_stored(settings)


def test_unknown_route_and_wrong_method_are_json(client: TestClient) -> None:
    """Routing errors also answer {detail, error}."""
    assert client.get("/nope").json()["error"] == "not_found"
    wrong = client.get("/download/single")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


# Failures on the server's side: the client hears what and why, only the log hears where -------


def read_log(settings: Settings) -> str:
    return (Path(settings.log_dir) / LOG_FILENAME).read_text()


def _storage_replaced_by_a_file(storage: Path) -> None:
    storage.rmdir()
    storage.write_bytes(b"not a directory")


def _storage_parent_replaced_by_a_file(storage: Path) -> None:
    shutil.rmtree(storage.parent)
    storage.parent.write_bytes(b"not a directory")


@pytest.mark.parametrize(
    ("breakage", "overrides", "status", "code", "detail"),
    [
        (
            _storage_replaced_by_a_file, {}, 500, "storage_error",
            "cannot write in the storage directory: File exists",
        ),
        (
            _storage_parent_replaced_by_a_file, {}, 500, "storage_error",
            "cannot inspect the storage directory: Not a directory",
        ),
        (None, {"min_free_disk_mb": 10**9}, 507, "insufficient_storage", "MB free on the storage"),
    ],
    ids=["storage-is-a-file", "storage-parent-is-a-file", "disk-below-min-free"],
)  # fmt: skip
def test_storage_failures_answer_the_cause_and_log_the_path(
    tmp_path: Path,
    source: SourceServer,
    breakage: Callable[[Path], None] | None,
    overrides: dict[str, object],
    status: int,
    code: str,
    detail: str,
) -> None:
    """Storage broken after start-up answers the cause without path or class; the log has both."""
    settings = make_settings(tmp_path, audio_storage_dir=tmp_path / "disk" / "store", **overrides)
    storage = Path(settings.audio_storage_dir)
    with TestClient(create_app(settings)) as client:
        if breakage:
            breakage(storage)
        response = client.post(
            "/download/single",
            data={"conversation_id": "c1", "audio_url": source.file_url("mp3.mp3")},
        )
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and detail in body["detail"]
    assert str(tmp_path) not in response.text and "Error" not in body["detail"]
    assert source.hits["/files/mp3.mp3"] == 0
    assert f"-> {status} {code}: {body['detail']} (storage directory {storage}" in read_log(
        settings
    )


def test_an_unexpected_exception_answers_no_class_name_and_logs_the_traceback(
    tmp_path: Path,
) -> None:
    """An exception nobody translated is a plain 500 internal_error; the log keeps all of it."""
    settings = make_settings(tmp_path)
    app = create_app(settings)
    secret = tmp_path / "private" / "state.db"

    async def explode() -> None:  # a test-only route standing for any bug in a real one
        raise RuntimeError(f"cannot open {secret}")

    app.add_api_route("/test-only/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/test-only/explode")
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal error; the server log has the details",
        "error": "internal_error",
    }
    assert "RuntimeError" not in response.text and str(tmp_path) not in response.text
    log = read_log(settings)
    assert f"-> 500 internal_error: unexpected RuntimeError: cannot open {secret}" in log
    assert "Traceback (most recent call last)" in log
