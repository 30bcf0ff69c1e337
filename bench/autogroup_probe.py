"""Why case 4 misses: a loopback round trip under busy ffmpeg, in the same session or its own.

`python -m bench.autogroup_probe` starts an echo server process, either in this session or in
a new one (`setsid`, hence its own autogroup when /proc/sys/kernel/sched_autogroup_enabled is
1), runs eight bare ffmpeg conversions in this session and times a one-byte round trip every
20 ms until they end. No HTTP, no service: only the kernel's scheduling of a mostly idle
process beside busy ones.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import WORK, ffmpeg_exe, ms, percentile
from bench.media import long_file

JOBS = 8


def _echo_server(port_file: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port_file.write_text(str(server.getsockname()[1]))
        connection, _ = server.accept()
        with connection:
            while data := connection.recv(64):
                connection.sendall(data)


def _round_trips(new_session: bool, source: Path) -> list[float]:
    port_file = WORK / "echo.port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.autogroup_probe", "--serve", str(port_file)],
        start_new_session=new_session,
    )
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.05)
    ffmpeg = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
              "-ac", "1", "-ar", "16000", "-f", "null", "-"]  # fmt: skip
    latencies: list[float] = []
    with socket.create_connection(("127.0.0.1", int(port_file.read_text()))) as peer:
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        jobs = [subprocess.Popen(ffmpeg) for _ in range(JOBS)]
        while any(job.poll() is None for job in jobs):
            started = time.perf_counter()
            peer.sendall(b"x")
            peer.recv(64)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    server.wait(10)
    return latencies


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        _echo_server(Path(args[1]))
        return 0
    media = WORK / "media"
    media.mkdir(parents=True, exist_ok=True)
    source = media / long_file(media, 60)
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    print(f"sched_autogroup_enabled: {enabled.read_text().strip() if enabled.exists() else '?'}")
    for new_session in (False, True):
        latencies = _round_trips(new_session, source)
        where = "own session" if new_session else "same session as ffmpeg"
        print(f"echo server in {where}: {len(latencies)} round trips, p50 "
              f"{ms(percentile(latencies, 0.5))}, p99 {ms(percentile(latencies, 0.99))}, "
              f"max {ms(max(latencies))}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
