"""The service as a child process on 127.0.0.1: started, waited for until /health answers, and
stopped; how the demo, the benchmark and the tests run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

import httpx
from pydantic import SecretStr

from diarization_audio.settings import Settings

# The directory holding the package (the repository root in a checkout): the child imports the
# app from there whatever its working directory.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def service_environment(settings: Settings) -> dict[str, str]:
    """This process's environment with every field of `settings` set, so a child process reads
    the same settings; proxies never stand between it and 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HTTP_PROXY", "HTTPS_PROXY"))}
    for name, value in settings.model_dump().items():
        if value is None:
            env.pop(name.upper(), None)
        elif isinstance(value, list):
            env[name.upper()] = ",".join(str(item) for item in value)
        elif isinstance(value, SecretStr):
            env[name.upper()] = value.get_secret_value()
        else:
            env[name.upper()] = str(value)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


class ServiceProcess:
    """The service in a process (group) of its own on 127.0.0.1, with `settings`.

    By default `python -m uvicorn APP --workers N`; with `script`, `python SCRIPT` (main.py,
    which reads HOST and PORT from the settings). Its output goes to `log_path`; it runs in the
    parent of the log directory, so no .env file of the caller's working directory reaches it.
    """

    def __init__(
        self,
        settings: Settings,
        workers: int = 1,
        log_path: Path | None = None,
        *,
        app: str = "diarization_audio.service.app:app",
        app_dir: Path = PACKAGE_PARENT,
        script: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.port = port or free_port()
        self.base_url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = log_path or Path(settings.log_dir) / "uvicorn.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._app = app
        self._app_dir = app_dir
        self._script = script
        self._out: IO[bytes] | None = None

    def command(self) -> Sequence[str]:
        if self._script is not None:
            return [sys.executable, str(self._script)]
        return [sys.executable, "-m", "uvicorn", self._app, "--app-dir", str(self._app_dir),
                "--host", LOOPBACK, "--port", str(self.port), "--workers", str(self.workers),
                "--log-level", "warning"]  # fmt: skip

    def start(self, timeout: float = 90) -> Self:
        """Start it and return once GET /health answers; RuntimeError (with its output) if it
        exits first or does not answer within `timeout` seconds."""
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**service_environment(self.settings), "HOST": LOOPBACK, "PORT": str(self.port)}
        self.proc = subprocess.Popen(
            self.command(), cwd=Path(self.settings.log_dir).parent, env=env,
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_output()
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
        """Everything it has printed so far."""
        return Path(self.log_path).read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or the OOM killer would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_output()

    def stop(self, sig: signal.Signals = signal.SIGTERM, group: bool = True) -> None:
        """A graceful stop: `sig` to the whole process group, or (not `group`) to the service
        alone, which then ends what it started, as after Ctrl-C in its terminal; SIGKILL to
        the group if it is not gone in 20 s."""
        if self.proc and self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._close_output()

    def _close_output(self) -> None:
        if self._out is not None:
            self._out.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
