"""Shared parts of the benchmark: scales, the result table, timing, memory sampling, servers."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from diarization_audio.ingest.ffmpeg import ffmpeg_version, resolve_ffmpeg
from diarization_audio.service.process import ServiceProcess
from diarization_audio.settings import settings_under

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
MB = 1024 * 1024
# The benchmark's service: the defaults, except that no timeout cuts a 3-hour file, a failing
# source is retried quickly and a small disk will do.
SERVICE_SETTINGS: dict[str, object] = {
    "download_timeout_seconds": 60,
    "download_deadline_seconds": 3600,
    "convert_timeout_seconds": 3600,
    "log_level": "WARNING",
    "metadata_export_seconds": 2.0,
    "download_retries": 2,
    "download_retry_backoff_seconds": 0.01,
    "download_retry_max_wait_seconds": 0.5,
    "min_free_disk_mb": 1,
}


def ffmpeg_exe() -> str:
    """The ffmpeg the service runs: FFMPEG_BINARY, else ffmpeg on PATH, else imageio-ffmpeg's."""
    return resolve_ffmpeg(settings_under(WORK).ffmpeg_binary)


@dataclass(frozen=True)
class Scale:
    """How big each case is: `FULL` for `make bench`, `SMOKE` for the seconds-long check."""

    name: str
    rounds: int  # interleaved service/baseline pairs per timed comparison
    long_minutes: float  # case 1 and 4
    longer_minutes: float  # case 1's second length, for "memory does not grow with length"
    conversations: int  # case 2: conversations of two speakers each
    batch_minutes: float  # case 2: length of each file
    batch_rounds: int
    metadata_sizes: tuple[int, ...]  # case 3
    metadata_samples: int
    parallel_jobs: int  # case 4
    workers: int  # case 5
    simultaneous: int  # case 5


FULL = Scale(
    name="full", rounds=5, long_minutes=60, longer_minutes=180, conversations=40,
    batch_minutes=3, batch_rounds=3, metadata_sizes=(0, 1_000, 20_000, 100_000),
    metadata_samples=15, parallel_jobs=16, workers=4, simultaneous=64,
)  # fmt: skip
SMOKE = Scale(
    name="smoke", rounds=1, long_minutes=0.1, longer_minutes=0.3, conversations=2,
    batch_minutes=0.05, batch_rounds=1, metadata_sizes=(0, 100), metadata_samples=3,
    parallel_jobs=2, workers=2, simultaneous=4,
)  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One line of the result table; `holds` is None where the case sets no target."""

    case: str
    measure: str
    value: str
    target: str = ""
    holds: bool | None = None


@dataclass
class Context:
    """What every case gets: the scale, its work directory and the local source server."""

    scale: Scale
    work: Path
    media: Path
    source_url: Callable[[str], str]  # a file of `media`, served whole at memory speed
    url: Callable[[str], str]  # any path of the source server (its /link/ routes)
    cores: int
    notes: list[str] = field(default_factory=list)

    @property
    def smoke(self) -> bool:
        return self.scale.name == "smoke"


def verdict(row: Row, smoke: bool) -> str:
    if row.holds is None:
        return ""
    if smoke:
        return "(smoke)"
    return "yes" if row.holds else "NO"


def render_table(rows: Sequence[Row], smoke: bool) -> str:
    """The result table as GitHub markdown."""
    header = ("Case", "Measure", "Value", "Target", "Holds")
    lines = [header, *((r.case, r.measure, r.value, r.target, verdict(r, smoke)) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(lines[0]), rule, *(fmt(line) for line in lines[1:])])


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the ratios of runs taken side by side: load that drifts over a long run
    moves both runs of a pair alike, so it cancels in each ratio."""
    return median([n / d for n, d in zip(numerators, denominators, strict=True)])


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of the values at or below."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# Baselines ------------------------------------------------------------------------------------


def bare_ffmpeg(source: Path, target: Path, *options: str, binary: str | None = None) -> None:
    """The floor: `ffmpeg -i FILE -ac 1 -ar 16000 OUT.wav` with the service's own binary, or
    `binary` (`options` go before the output options)."""
    subprocess.run(
        [binary or ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-i", str(source), *options, "-ac", "1", "-ar", "16000", str(target)],
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def machine_summary() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{os.cpu_count()} cores ({model}), {memory_kb / MB:.0f} GB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"ffmpeg {ffmpeg_version(ffmpeg_exe())}"
    )


# The service ----------------------------------------------------------------------------------


@contextmanager
def service(base: Path, workers: int = 1, **overrides: object) -> Iterator[ServiceProcess]:
    """A real `uvicorn main:app` process whose storage and metadata live under `base`."""
    base.mkdir(parents=True, exist_ok=True)
    settings = settings_under(base, **{**SERVICE_SETTINGS, **overrides})
    with ServiceProcess(settings, workers, app="main:app", app_dir=ROOT) as server:
        yield server


def client(base_url: str, timeout: float = 3600) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=False)


def post_single(http: httpx.Client, conversation_id: str, url: str, label: str = "agent") -> Any:
    response = http.post(
        "/download/single",
        data={"conversation_id": conversation_id, "audio_url": url, "speaker_label": label},
    )
    if response.status_code != 200:
        raise RuntimeError(f"{conversation_id}: HTTP {response.status_code} {response.text}")
    return response.json()


# Memory ---------------------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    """The resident memory of one process now, in MB."""
    return _status_kb(pid, "VmRSS") / 1024


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (uvicorn's supervisor and its workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


class RssSampler:
    """Samples VmRSS of given processes every `interval` seconds in a thread; peaks in kB.

    VmHWM (the kernel's own peak) is read at the end as well, so a spike shorter than the
    sampling interval still counts.
    """

    def __init__(self, pids: Sequence[int], interval: float = 0.02) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.baseline_kb = {pid: _status_kb(pid, "VmRSS") for pid in self.pids}
        self._hwm_before = {pid: _status_kb(pid, "VmHWM") for pid in self.pids}
        self.peak_kb = dict(self.baseline_kb)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self.pids:
                self.peak_kb[pid] = max(self.peak_kb[pid], _status_kb(pid, "VmRSS"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid in self.pids:
            hwm = _status_kb(pid, "VmHWM")
            if hwm > self._hwm_before[pid]:
                self.peak_kb[pid] = max(self.peak_kb[pid], hwm)

    def growth_mb(self) -> float:
        """The largest peak-over-baseline growth of any one sampled process."""
        return max(self.peak_kb[p] - self.baseline_kb[p] for p in self.pids) / 1024
