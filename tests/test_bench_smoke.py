"""The benchmark still runs: `make bench-smoke` prints a table with every case, numbers aside."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from support import ROOT

pytestmark = pytest.mark.slow

CASES = ("1 one long file", "2 CSV batch", "3 metadata at scale", "4 /health under load",
         "5 many at once", "6 fixed cost per file", "7 speech labels", "8 dashboard",
         "9 limited-rate link", "10 object storage")  # fmt: skip


def test_bench_smoke_prints_every_case() -> None:
    """`make bench-smoke` exits 0 and its table has a row for every case and every target."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    done = subprocess.run(
        ["make", "--no-print-directory", "bench-smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    cases = {row.split("|")[1].strip() for row in rows[1:]}
    assert cases == set(CASES), done.stdout
    targets = [row for row in rows if "(smoke)" in row]
    assert {row.split("|")[1].strip() for row in targets} == set(CASES), done.stdout
    # 1: time ratio, memory at two lengths; 2: three ratios to bare ffmpeg, two to yt-dlp;
    # 3: record, /statistics, first /statistics, memory, a new entry in the JSON export;
    # 4: /health p99; 5: recorded; 6: fixed cost; 7: the default detector's DER in two
    # conditions of the recorded-speech corpus, its labelling cost and its memory at two
    # lengths; 8: /dashboard/data; 9: one long file and a batch at two link rates; 10: bucket /
    # disk, memory at two lengths, uploads left open.
    assert len(targets) == 29, done.stdout
    assert re.search(r"^Machine: \d+ cores", done.stdout, re.M), done.stdout
    assert "yt-dlp" in done.stdout and "bare ffmpeg" in done.stdout
