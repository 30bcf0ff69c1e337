"""A throw-away PostgreSQL server for tests: its own cluster in a temporary directory."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psycopg
from psycopg import sql

from diarization_audio.service.process import free_port

HOST = "127.0.0.1"
SUPERUSER = "postgres"
SYSTEM_BINDIRS = "/usr/lib/postgresql/*/bin"  # where Debian's postgresql-<version> puts them
INSTALL_HINT = "run `make test`, which installs the Debian postgresql package when it is missing"
# Crash safety buys nothing in a cluster that is deleted at the end of the session.
SPEED_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresUnavailable(RuntimeError):
    """The server cannot be made or started here: no binaries, no user to run them, no start."""


def find_bindir(system_bindirs: str = SYSTEM_BINDIRS, path: str | None = None) -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, else the initdb on `path`."""
    installed = [Path(d) for d in glob.glob(system_bindirs) if (Path(d) / "initdb").is_file()]
    if installed:
        return max(installed, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)])
    on_path = shutil.which("initdb", path=path)
    if on_path is not None:
        # Resolved: a symlink on PATH must lead to the directory holding postgres and pg_ctl too.
        return Path(on_path).resolve().parent
    raise PostgresUnavailable(
        f"PostgreSQL is not installed: no initdb under {system_bindirs} or on PATH; {INSTALL_HINT}"
    )


def server_user() -> pwd.struct_passwd | None:
    """The system user to run the server as: `postgres` when running as root, else None (us).

    PostgreSQL refuses to run as root, and CI runs the tests as root.
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(
            "the tests run as root, PostgreSQL refuses to, and there is no `postgres` system user "
            "to run it as; the Debian postgresql package creates one (`make test` installs it "
            "when initdb is missing), or create it with `useradd --system postgres`"
        ) from None


def libpq_url(sqlalchemy_url: str) -> str:
    """The URL psycopg itself takes for a `postgresql+psycopg://` SQLAlchemy URL."""
    return re.sub(r"^postgresql\+psycopg://", "postgresql://", sqlalchemy_url)


class PostgresServer:
    """initdb (locale C, UTF8, trust auth) in a temporary directory, then `postgres` listening
    on 127.0.0.1 only, on a free port, with its unix socket in that directory. As root it runs
    as the `postgres` user. `stop()` shuts it down and deletes the directory."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir
        self.base: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._numbers = itertools.count(1)

    # --- where things are -----------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.base is None:
            raise RuntimeError("PostgresServer is not running; call start() first")
        return self.base / name

    @property
    def data_dir(self) -> Path:
        return self._path("data")

    @property
    def socket_dir(self) -> Path:
        return self._path("socket")

    @property
    def log_path(self) -> Path:
        return self._path("server.log")

    def log(self) -> str:
        """Everything initdb and the server have written so far."""
        parts = [self._path(name) for name in ("initdb.log", "server.log")]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of database `dbname` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> PostgresServer:
        """Create the cluster and start the server; returns once it accepts connections."""
        bindir = self.bindir = self.bindir or find_bindir()
        user = server_user()
        self.base = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))
        try:
            if user is not None:
                os.chown(self.base, user.pw_uid, user.pw_gid)
            self.socket_dir.mkdir()
            if user is not None:
                os.chown(self.socket_dir, user.pw_uid, user.pw_gid)
            self._initdb(bindir, user)
            for _ in range(3):  # another process may take the free port before postgres binds it
                self.port = free_port()
                if self._launch(bindir, user, timeout):
                    return self
            raise PostgresUnavailable(f"no free port could be bound; server log:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def _child_options(self, user: pwd.struct_passwd | None) -> dict[str, Any]:
        # PG* variables (PGDATA, PGPORT, ...) of the caller must not steer the test server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        options: dict[str, Any] = {"cwd": self.base, "env": env, "stdin": subprocess.DEVNULL}
        if user is not None:
            # The child drops to that user before exec: what `runuser -u postgres --` does, but
            # with no PAM session and no process between us and the server's signals.
            options.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        return options

    def _initdb(self, bindir: Path, user: pwd.struct_passwd | None) -> None:
        argv = [str(bindir / "initdb"), "--pgdata", str(self.data_dir), "--username", SUPERUSER,
                "--auth", "trust", "--encoding", "UTF8", "--locale", "C", "--no-sync"]  # fmt: skip
        with self._path("initdb.log").open("wb") as out:
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=120,
                **self._child_options(user),
            )  # fmt: skip
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb exited with {done.returncode}:\n{self.log()}")

    def _launch(self, bindir: Path, user: pwd.struct_passwd | None, timeout: float) -> bool:
        """Start postgres on self.port and wait until it answers; False if the port was taken."""
        argv = [str(bindir / "postgres"), "-D", str(self.data_dir), "-h", HOST,
                "-p", str(self.port), "-k", str(self.socket_dir)]  # fmt: skip
        for setting in SPEED_SETTINGS:
            argv += ["-c", setting]
        self._log = self.log_path.open("ab")
        # Its own session: a Ctrl-C in the terminal reaches pytest, whose teardown stops it.
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            **self._child_options(user),
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                self.stop_server()
                log = self.log()
                if "could not create any TCP/IP sockets" in log.rsplit("starting PostgreSQL")[-1]:
                    return False
                raise PostgresUnavailable(f"postgres exited with {code} at startup; log:\n{log}")
            try:
                with self.connect(connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                self.stop_server()
                raise PostgresUnavailable(
                    f"postgres did not accept connections on {HOST}:{self.port} within "
                    f"{timeout:g} s; log:\n{self.log()}"
                )
            time.sleep(0.05)

    def stop_server(self) -> None:
        """Fast shutdown (active sessions are rolled back); kill it if that hangs."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the postmaster and all its backends
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the server and delete its directory; safe to call more than once."""
        self.stop_server()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- databases ------------------------------------------------------------------------

    def connect(
        self, dbname: str = "postgres", connect_timeout: int = 10
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit connection as the superuser, over TCP."""
        return psycopg.connect(
            host=HOST, port=self.port, user=SUPERUSER, dbname=dbname,
            connect_timeout=connect_timeout, autocommit=True,
        )  # fmt: skip

    def create_database(self) -> str:
        """A new empty database, test_<n>; returns its name."""
        name = f"test_{next(self._numbers)}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending any sessions a test left open on it."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def binary_version(self) -> str:
        """What `postgres --version` says, e.g. "postgres (PostgreSQL) 15.14 (Debian ...)"."""
        bindir = self.bindir or find_bindir()
        done = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()
