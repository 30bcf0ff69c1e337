"""Self-test of the PostgreSQL fixtures: a real server, on loopback only, a database per test."""

from __future__ import annotations

import os
import pwd
import re
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from support.pg_server import HOST, PostgresServer, PostgresUnavailable, find_bindir, libpq_url


def _listening_addresses(port: int) -> list[str]:
    """Addresses with a TCP socket in LISTEN state on `port`, read from /proc/net/tcp{,6}."""
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(
                bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
            )
            found.append(socket.inet_ntop(family, raw))
    return found


def test_rows_written_on_one_connection_are_read_on_another(database_url: str) -> None:
    """Two connections to a real server: committed rows cross over, uncommitted ones do not."""
    with (
        psycopg.connect(libpq_url(database_url)) as first,
        psycopg.connect(libpq_url(database_url)) as second,
    ):
        first.execute("CREATE TABLE calls (id int PRIMARY KEY, speaker text NOT NULL)")
        first.execute("INSERT INTO calls VALUES (1, 'agent'), (2, 'customer')")
        # Not yet committed: another session must not see the table, let alone its rows.
        assert second.execute("SELECT to_regclass('calls')").fetchone() == (None,)
        second.rollback()
        first.commit()
        rows = second.execute("SELECT id, speaker FROM calls ORDER BY id").fetchall()
        assert rows == [(1, "agent"), (2, "customer")]
        second.execute("INSERT INTO calls VALUES (3, 'agent')")
        second.commit()
        counted = first.execute("SELECT speaker, count(*) FROM calls GROUP BY 1 ORDER BY 1")
        assert counted.fetchall() == [("agent", 2), ("customer", 1)]
        assert first.info.backend_pid != second.info.backend_pid


def test_the_url_is_the_sqlalchemy_psycopg_one(database_url: str) -> None:
    """database_url reads postgresql+psycopg://postgres@127.0.0.1:PORT/test_<n>; SQLAlchemy
    connects with it."""
    assert re.fullmatch(r"postgresql\+psycopg://postgres@127\.0\.0\.1:\d+/test_\d+", database_url)
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE t (n int)"))
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (:n)"), [{"n": 1}, {"n": 2}])
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT sum(n) FROM t")).scalar_one() == 3
            name = conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    assert database_url.endswith("/" + name)


def test_server_is_the_installed_postgresql_with_the_test_settings(
    postgres_server: PostgresServer,
) -> None:
    """The server reports the installed binaries' version and runs UTF8, locale C, fsync off."""
    with postgres_server.connect() as conn:
        version = conn.execute("SELECT version()").fetchone()
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('server_version', 'server_encoding', 'lc_collate', 'fsync')"
            ).fetchall()
        )
    assert version is not None and version[0].startswith("PostgreSQL ")
    installed = re.search(r"\(PostgreSQL\) (\S+)", postgres_server.binary_version())
    assert installed is not None
    assert settings["server_version"].split()[0] == installed.group(1)
    assert f"PostgreSQL {installed.group(1)} " in version[0]
    assert settings["server_encoding"] == "UTF8"
    assert settings["lc_collate"] == "C"
    assert settings["fsync"] == "off"


def test_server_listens_on_loopback_only(postgres_server: PostgresServer) -> None:
    """TCP only on 127.0.0.1 (not 127.0.0.2, not IPv6); the unix socket lives in its temp dir."""
    port = postgres_server.port
    assert _listening_addresses(port) == [HOST]
    with postgres_server.connect() as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == (HOST,)
        assert conn.execute("SELECT host(inet_server_addr())").fetchone() == (HOST,)
        socket_dirs = conn.execute("SHOW unix_socket_directories").fetchone()
    assert socket_dirs == (str(postgres_server.socket_dir),)
    assert stat.S_ISSOCK((postgres_server.socket_dir / f".s.PGSQL.{port}").stat().st_mode)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.2", port=port, user="postgres", connect_timeout=2)


def test_server_does_not_run_as_root(postgres_server: PostgresServer) -> None:
    """As root the server runs as the postgres user (it refuses root), else as the caller."""
    assert postgres_server.proc is not None
    status = Path(f"/proc/{postgres_server.proc.pid}/status").read_text()
    real_uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
    assert real_uid is not None
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert int(real_uid.group(1)) == expected != 0


def test_each_database_url_is_a_fresh_isolated_database(
    database_url: str, new_database_url: Callable[[], str], postgres_server: PostgresServer
) -> None:
    """Two database_urls name two empty databases; what one holds the other does not see.
    Databases of earlier tests are already gone."""
    other = new_database_url()
    assert other != database_url
    with (
        psycopg.connect(libpq_url(database_url), autocommit=True) as one,
        psycopg.connect(libpq_url(other), autocommit=True) as two,
    ):
        for conn in (one, two):
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
                "('pg_catalog', 'information_schema')"
            ).fetchone()
            assert tables == (0,)
        one.execute("CREATE TABLE only_here (n int)")
        assert two.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
        assert one.execute("SELECT to_regclass('only_here')::text").fetchone() == ("only_here",)
    with postgres_server.connect() as admin:
        names = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%' ORDER BY datname"
        ).fetchall()
    assert sorted(name for (name,) in names) == sorted(
        url.rsplit("/", 1)[1] for url in (database_url, other)
    )


def test_drop_database_removes_it_even_with_a_session_open(
    postgres_server: PostgresServer,
) -> None:
    """drop_database (the fixture's teardown) ends leftover sessions and removes the database."""
    name = postgres_server.create_database()
    leftover = psycopg.connect(libpq_url(postgres_server.url(name)))
    try:
        postgres_server.drop_database(name)
    finally:
        leftover.close()
    with postgres_server.connect() as admin:
        gone = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name])
        assert gone.fetchone() == (0,)


def test_missing_binaries_fail_with_the_way_to_install_them(tmp_path: Path) -> None:
    """With no initdb anywhere the fixture fails, naming `make test`, instead of skipping."""
    with pytest.raises(PostgresUnavailable, match="make test"):
        find_bindir(str(tmp_path / "*" / "bin"), path=str(tmp_path))


def test_a_server_that_will_not_start_reports_its_log() -> None:
    """A postgres that exits at startup is an error carrying the server's own output."""
    with tempfile.TemporaryDirectory() as fake:
        bindir = Path(fake)
        # Readable by the postgres user when the tests run as root.
        bindir.chmod(0o755)
        scripts = {
            # Makes the data directory it is given, as the real one would.
            "initdb": '#!/bin/sh\nwhile [ "$1" != --pgdata ]; do shift; done\nmkdir "$2"\n',
            "postgres": "#!/bin/sh\necho 'FATAL:  this postgres never starts' >&2\nexit 1\n",
        }
        for name, text in scripts.items():
            (bindir / name).write_text(text)
            (bindir / name).chmod(0o755)
        server = PostgresServer(bindir)
        with pytest.raises(PostgresUnavailable, match="this postgres never starts"):
            server.start(timeout=10)
        assert server.base is None and server.proc is None
