"""A real S3-compatible server for the tests: moto's server mode on 127.0.0.1, one per session,
with a fresh bucket for each test that asks."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import boto3

from diarization_audio.service.process import free_port

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any keys; real-looking ones keep boto3 from looking anywhere else for them.
KEY_ID, SECRET = "testing-key-id", "testing-secret-key"
STARTUP_SECONDS = 30


class S3Server:
    """`python -m moto.server` listening on 127.0.0.1 only, on a free port, logging to a file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._buckets = itertools.count(1)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def settings(self) -> dict[str, Any]:
        """The settings fields that point the service at this server (not yet at a bucket)."""
        return {
            "aws_endpoint_url": self.endpoint,
            "aws_region": REGION,
            "aws_access_key_id": KEY_ID,
            "aws_secret_access_key": SECRET,
        }

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
        )  # fmt: skip

    def new_bucket(self) -> str:
        name = f"test-audio-{next(self._buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Key -> size of every object in the bucket under `prefix`."""
        found: dict[str, int] = {}
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        for page in pages:
            found.update({item["Key"]: int(item["Size"]) for item in page.get("Contents", [])})
        return found

    def open_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        answer = self.client().list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    def start(self) -> None:
        self.port = free_port()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                self.client().list_buckets()
                return
            except Exception:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"moto's S3 server did not start; see {self.log_path}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
