"""Shared fixtures: real audio, a misbehaving source server, the app, real server processes,
a real PostgreSQL server and stores on either database. The helpers they use are in support/."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import process_tree
from support.audio_factory import make_corpus
from support.cli_helpers import use_settings
from support.pg_server import PostgresServer, PostgresUnavailable
from support.s3_server import S3Server
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.stores import make_settings

from diarization_audio.service.app import create_app
from diarization_audio.settings import Settings
from diarization_audio.store.tracker import MetadataTracker

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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def script_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """`settings`, which the scripts run in this process read from the environment."""
    use_settings(monkeypatch, settings)
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app, started with its lifespan, on this test's own storage."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3-compatible server of the tests' own (moto) on 127.0.0.1, started the first time a
    test asks for it."""
    with S3Server(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        yield server


@pytest.fixture(params=["folder", "bucket"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """This test's settings with the WAVs in a folder, and again in a fresh bucket of the tests'
    own S3 server (AUDIO_STORAGE_URL=s3://<bucket>/audio)."""
    if request.param == "folder":
        return make_settings(tmp_path)
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    return make_settings(tmp_path, audio_storage_url=f"s3://{bucket}/audio", **server.settings())


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


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for the default SQLite store, else the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("database_url")
    return url


@pytest.fixture
def tracker(tmp_path: Path, backend: str | None) -> Iterator[MetadataTracker]:
    """An empty store of this test's own, on SQLite and again on PostgreSQL."""
    made = MetadataTracker.from_settings(
        make_settings(tmp_path, log_timezone="Asia/Kolkata", database_url=backend)
    )
    yield made
    made.close()
