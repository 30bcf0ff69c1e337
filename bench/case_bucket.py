"""Case 10: one long recording stored to a bucket of a local S3 server against the local disk.

The S3 server is moto's, in a process of its own on 127.0.0.1 (the one the tests start). The
same service settings store the file once to its folder and once to the bucket, alternately.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

from bench.harness import (
    Context,
    Row,
    RssSampler,
    client,
    median,
    paired_ratio,
    post_single,
    service,
    timed,
)
from bench.media import long_file
from diarization_audio.service.process import free_port

CASE = "10 object storage"
WARMUP_MINUTES = 0.05
MEMORY_LIMIT_MB = 100.0
MEMORY_SLACK_MB = 16.0
BUCKET = "bench-audio"
KEYS = {"aws_access_key_id": "bench-key", "aws_secret_access_key": "bench-secret"}


@contextmanager
def s3_server(log: Path) -> Iterator[dict[str, object]]:
    """moto's S3 server on a free port of 127.0.0.1 with one bucket; the settings reaching it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **KEYS)
        for _ in range(300):
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError(f"the S3 server ended; see {log}") from None
                time.sleep(0.1)
        yield {"aws_endpoint_url": endpoint, "aws_region": "us-east-1", **KEYS,
               "audio_storage_url": f"s3://{BUCKET}/calls", "pid": proc.pid}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)


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


def _library_rows(endpoint: str, file: Path, rounds: int) -> list[Row]:
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
        Row(CASE, f"client library: {name}, one {size:.0f} MB WAV to the bucket (median of "
            f"{rounds}; peak RSS of its process)",
            f"{median(walls[name]):.2f} s; {max(peaks[name]):.0f} MB")
        for name in _UPLOADERS
    ]  # fmt: skip


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    name = long_file(ctx.media, scale.long_minutes)
    longer_name = long_file(ctx.media, scale.longer_minutes)
    warmup = long_file(ctx.media, WARMUP_MINUTES)
    base = ctx.work / "case10"
    shutil.rmtree(base, ignore_errors=True)
    disk_times: list[float] = []
    bucket_times: list[float] = []
    growth: list[float] = []
    with s3_server(base / "moto.log") as bucket_settings:
        s3 = boto3.client(
            "s3", endpoint_url=str(bucket_settings["aws_endpoint_url"]), region_name="us-east-1",
            **KEYS,
        )  # fmt: skip
        overrides = {k: v for k, v in bucket_settings.items() if k != "pid"}
        with (
            service(base / "disk") as disk,
            service(base / "bucket", 1, **overrides) as bucketed,
            client(disk.base_url) as to_disk,
            client(bucketed.base_url) as to_bucket,
        ):
            assert bucketed.proc is not None
            pid = bucketed.proc.pid
            post_single(to_disk, "warmup", ctx.source_url(warmup))
            post_single(to_bucket, "warmup", ctx.source_url(warmup))

            def on_disk(cid: str) -> float:
                seconds = timed(lambda: post_single(to_disk, cid, ctx.source_url(name)))
                (base / "disk" / "store" / f"{cid}_agent.wav").unlink()
                return seconds

            def in_bucket(cid: str, file: str) -> tuple[float, float]:
                with RssSampler([pid]) as rss:
                    seconds = timed(lambda: post_single(to_bucket, cid, ctx.source_url(file)))
                s3.delete_object(Bucket=BUCKET, Key=f"calls/{cid}_agent.wav")
                return seconds, rss.growth_mb()

            for n in range(scale.rounds):
                if n % 2:
                    disk_times.append(on_disk(f"disk{n}"))
                seconds, grown = in_bucket(f"bucket{n}", name)
                bucket_times.append(seconds)
                growth.append(grown)
                if not n % 2:
                    disk_times.append(on_disk(f"disk{n}"))
            _, longer_growth = in_bucket("longer", longer_name)
            left = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
            post_single(to_disk, "sample", ctx.source_url(name))
            libraries = _library_rows(
                str(bucket_settings["aws_endpoint_url"]),
                base / "disk" / "store" / "sample_agent.wav",
                scale.rounds,
            )
    shutil.rmtree(base, ignore_errors=True)
    ratio = paired_ratio(bucket_times, disk_times)
    length, longer = f"{scale.long_minutes:g} min", f"{scale.longer_minutes:g} min"
    runs = f"median of {scale.rounds}"
    peak = max(growth)
    return [
        Row(CASE, f"{length} MP3 stored to the local disk ({runs})",
            f"{median(disk_times):.2f} s"),
        Row(CASE, f"{length} MP3 stored to a bucket of a local S3 server (moto; {runs})",
            f"{median(bucket_times):.2f} s"),
        Row(CASE, "bucket / disk (median of the pairs' ratios)", f"{ratio:.3f}x", "<= 1.15x",
            ratio <= 1.15),
        Row(CASE, f"server peak RSS growth storing to the bucket, {length} (max of "
            f"{scale.rounds})", f"{peak:.1f} MB", f"< {MEMORY_LIMIT_MB:g} MB",
            peak < MEMORY_LIMIT_MB),
        Row(CASE, f"server peak RSS growth storing to the bucket, {longer}",
            f"{longer_growth:.1f} MB", f"< {MEMORY_LIMIT_MB:g} MB, not growing with length",
            longer_growth < MEMORY_LIMIT_MB and longer_growth - peak < MEMORY_SLACK_MB),
        Row(CASE, "multipart uploads left open", str(len(left)), "0", not left),
        *libraries,
    ]  # fmt: skip
