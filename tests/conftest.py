"""Shared fixtures: real audio, a misbehaving source server, the app, real server processes,
and a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import process_tree
import pytest
from audio_factory import make_corpus
from fastapi.testclient import TestClient
from pg_server import PostgresServer, PostgresUnavailable
from source_server import SourceServer
from sqlalchemy.engine import make_url

from diarization_audio.service.app import create_app
from diarization_audio.settings import Settings
from diarization_audio.store.tracker import MetadataTracker
from diarization_audio.store.tracker import database_url as store_url

ROOT = Path(__file__).resolve().parent.parent
LEFTOVER_GRACE_SECONDS = 10  # for processes still on their way out when the last test ends


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_tests() -> Iterator[None]:
    """Fails the run (at the teardown of its last test) if a process any test started, however
    deep below this one, is still running once every other fixture has stopped what it owns.

    This process is made a subreaper, so a process orphaned by a server that died (its parent
    gone) is handed to it instead of init and is still found below it. This process's own
    multiprocessing helpers (fork server, resource tracker) live as long as it does; whatever
    runs below them is counted. Leftovers are listed, then killed.
    """
    process_tree.become_subreaper()
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while True:
        helpers = process_tree.own_helpers()
        left = [p for p in process_tree.descendants(os.getpid()) if p.pid not in helpers]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if left:
        process_tree.kill_all(left)
        pytest.fail(
            f"{len(left)} process(es) the tests started outlived them (now killed):"
            + process_tree.listed(left),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two-second files in every supported format, made with ffmpeg at test time."""
    directory = tmp_path_factory.mktemp("corpus")
    make_corpus(directory, seconds=2.0)
    return directory


@pytest.fixture(scope="session")
def source_server(corpus_dir: Path) -> Iterator[SourceServer]:
    """A real HTTP server on 127.0.0.1 serving the corpus plus misbehaving routes."""
    with SourceServer(corpus_dir) as server:
        yield server
        assert server.errors == [], f"source server handler errors: {server.errors}"


@pytest.fixture
def source(source_server: SourceServer) -> SourceServer:
    """The source server with its hit counters (and flaky routes) reset for this test."""
    source_server.reset()
    return source_server


def make_settings(base: Path, **overrides: object) -> Settings:
    """Settings that keep every file under `base` and retry quickly; ignores any .env file."""
    values: dict[str, object] = {
        "audio_storage_dir": base / "store",
        "metadata_file": base / "conversations_metadata.json",
        "log_dir": base / "logs",
        "download_timeout_seconds": 3,
        "download_deadline_seconds": 20,
        "download_retries": 2,
        "download_retry_backoff_seconds": 0.01,
        "download_retry_max_wait_seconds": 0.5,
        "convert_timeout_seconds": 60,
        "min_free_disk_mb": 1,
        "metadata_export_seconds": 0.2,
        "conversion_slots_dir": base / "slots",
        "database_url": None,  # a DATABASE_URL in the developer's environment is not the tests'
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type,call-arg]


def exported_document(
    settings: Settings, until: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    """The JSON export once `until(document)` holds: it trails the store by design."""
    path = Path(settings.metadata_file)
    deadline = time.monotonic() + timeout
    while True:
        document: dict[str, Any] | None = None
        with contextlib.suppress(FileNotFoundError):
            document = json.loads(path.read_text())
        if document is not None and until(document):
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not reach the expected state: {document}")
        time.sleep(0.05)


def recorded_conversations(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every conversation the store holds (the record, not its JSON export), by id."""
    tracker = MetadataTracker.from_settings(settings)
    try:
        _, entries = tracker.list_conversations(1_000_000, 0)
    finally:
        tracker.close()
    return {entry["conversation_id"]: entry for entry in entries}


def copy_store(original: Settings, copy: Settings) -> None:
    """Copy a live SQLite store with SQLite's own backup, as a consistent snapshot."""
    source = sqlite3.connect(make_url(store_url(original)).database or "")
    target = sqlite3.connect(make_url(store_url(copy)).database or "")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app, started with its lifespan, on this test's own storage."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def labelled_statistics(http: Any, timeout: float = 30, **params: object) -> dict[str, Any]:
    """GET /statistics (through a TestClient or an httpx.Client) once every stored file has its
    speech labels, which follow each answer by a moment."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = http.get("/statistics", params=params).json()
        if stats["speech"]["unlabelled_files"] == 0:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"files still unlabelled after {timeout:g} s: {stats['speech']}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce `settings` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HTTP_PROXY", "HTTPS_PROXY"))}
    for name, value in settings.model_dump().items():
        if value is None:
            env.pop(name.upper(), None)
        elif isinstance(value, list):
            env[name.upper()] = ",".join(str(item) for item in value)
        elif value is not None:
            env[name.upper()] = str(value)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


class ServerProcess:
    """A real `uvicorn main:app` process on 127.0.0.1 with its own storage."""

    def __init__(self, settings: Settings, workers: int = 1, log_path: Path | None = None) -> None:
        self.settings = settings
        self.workers = workers
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or Path(settings.log_dir) / "uvicorn.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> ServerProcess:
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(ROOT),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
             "--log-level", "warning"],
            # Not the repository: a developer's .env there must not reach the tests' servers.
            cwd=Path(self.settings.log_dir).parent, env=settings_env(self.settings),
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1, trust_env=False).is_success:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or the OOM killer would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._out.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture
def server_process(settings: Settings) -> Iterator[ServerProcess]:
    """One real single-worker uvicorn process on this test's storage."""
    with ServerProcess(settings) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the tests' own on 127.0.0.1, started the first time a test asks
    for it (tests that do not pay nothing) and deleted with its data at the end of the session."""
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def new_database_url(postgres_server: PostgresServer) -> Iterator[Callable[[], str]]:
    """Makes fresh empty databases (test_<n>) and returns their SQLAlchemy URLs; each is
    dropped after the test."""
    names: list[str] = []

    def make() -> str:
        names.append(postgres_server.create_database())
        return postgres_server.url(names[-1])

    yield make
    for name in names:
        postgres_server.drop_database(name)


@pytest.fixture
def database_url(new_database_url: Callable[[], str]) -> str:
    """A fresh empty database for this test:
    postgresql+psycopg://postgres@127.0.0.1:<port>/test_<n>."""
    return new_database_url()
