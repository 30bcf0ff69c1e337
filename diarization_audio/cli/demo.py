"""The whole workflow offline, on temporary storage, in well under a minute (`make demo`).

1. Make short two-speaker sample audio for the 13 conversations of examples/conversations.csv
   with ffmpeg, and serve it from a local HTTP server standing in for the recording storage.
2. Start the service (`python main.py`, as `make run` does) on a free port, storing in a
   temporary folder. The settings go through environment variables, so the service and every
   script below read the same ones.
3. Run the scripts as a user would: a single-download check, the batch, the batch again (it
   skips everything), a stereo call, the statistics with speech hours, the progress report,
   one hourly monitor run, a dataset export as loose files and as WebDataset shards, and an
   erase that the next batch refuses and the next export takes out.
4. Stop everything and delete the temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import numpy.typing as npt

from diarization_audio.cli import batch as batch_download_from_csv
from diarization_audio.cli import check as test_single_download
from diarization_audio.cli import export as export_dataset
from diarization_audio.cli import report as analyze_storage
from diarization_audio.cli import store as metadata_tracker
from diarization_audio.cli.client import ServiceClient, default_server
from diarization_audio.cli.file_server import FileServer
from diarization_audio.ingest.ffmpeg import encode, resolve_ffmpeg
from diarization_audio.service.process import ServiceProcess, free_port
from diarization_audio.settings import get_settings

# The checkout the demo runs in: its example CSV, main.py and hourly_monitor.sh.
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CSV = ROOT / "examples" / "conversations.csv"
# Suffix -> the muxer and codec options a recording of that kind is made with, and the rate
# the format requires (else 22.05 kHz).
ENCODINGS: dict[str, tuple[str, tuple[str, ...], int | None]] = {
    ".mp3": ("mp3", ("-c:a", "libmp3lame", "-b:a", "128k"), None),
    ".wav": ("wav", ("-c:a", "pcm_s16le"), None),
    ".m4a": ("ipod", ("-c:a", "aac", "-b:a", "128k"), None),
    ".ogg": ("ogg", ("-c:a", "libvorbis", "-q:a", "4"), None),
    ".flac": ("flac", ("-c:a", "flac"), None),
    ".aac": ("adts", ("-c:a", "aac", "-b:a", "128k"), None),
    ".opus": ("opus", ("-c:a", "libopus", "-b:a", "64k"), 48000),
}
TARGET_HOURS = 0.25  # small enough for the samples to make visible progress
STEREO_CALL = "stereo_call.mp3"  # agent on the left channel, customer on the right


def make_samples(rows: list[dict[str, str]], directory: Path) -> None:
    """One recording per URL of the example CSV, named like the URL's file: the agent speaks
    Allison Smith's recorded prompts and the customer June Wallack's (Asterisk's sound
    packages), taking turns of 2.5 s over a faint line hiss, so each leg's speech labels show
    who spoke when; lengths differ, so durations and per-speaker hours do too. Plus one stereo
    call, agent left and customer right, with 12 s of music on hold: flagged `music`."""
    jobs = []
    for number, row in enumerate(rows):
        speakers = [("agent_audio_url", 20 + number * 7 % 23, 0),
                    ("customer_audio_url", 15 + number * 5 % 17, 1)]  # fmt: skip
        for column, seconds, turn in speakers:
            if row[column]:
                name = Path(urlsplit(row[column]).path).name
                jobs.append((directory / name, _speaking(seconds, 2.5, turn, number)))
    stereo = np.stack(_on_hold(_speaking(30, 3.0, 0, 99), _speaking(30, 3.0, 1, 99)), axis=1)
    jobs.append((directory / STEREO_CALL, stereo))
    directory.mkdir(parents=True, exist_ok=True)
    asyncio.run(_encode_all(jobs))


VOICES = ("/usr/share/asterisk/sounds/en_US_f_Allison", "/usr/share/asterisk/sounds/fr_CA_f_June")
PROMPT_RATE = 8000  # the prompts' own rate: telephone audio


def _prompts(voice: str) -> list[npt.NDArray[np.int16]]:
    """The voice's prompts of 1-2.4 s, in name order: each fits in a turn."""
    found = []
    for path in sorted(Path(voice).glob("*.wav")):
        with wave.open(str(path), "rb") as reader:
            seconds = reader.getnframes() / reader.getframerate()
            if reader.getframerate() == PROMPT_RATE and 1.0 <= seconds <= 2.4:
                found.append(np.frombuffer(reader.readframes(reader.getnframes()), "<i2"))
    if not found:
        raise SystemExit(f"error: no recorded prompts in {voice} (`make demo` installs them)")
    return found


def _speaking(seconds: float, turn: float, first: int, offset: int) -> npt.NDArray[np.int16]:
    """One leg at 8 kHz: a prompt at the start of every other `turn` seconds (from turn
    `first`) in that speaker's voice, over hiss at -65 dBFS."""
    prompts = _prompts(VOICES[first])
    rng = np.random.default_rng(offset * 2 + first)
    samples = rng.normal(0.0, 32768 * 10 ** (-65 / 20), round(seconds * PROMPT_RATE))
    for index, start in enumerate(range(first, int(seconds / turn), 2)):
        prompt = prompts[(offset * 7 + index) % len(prompts)]
        at = round(start * turn * PROMPT_RATE)
        piece = prompt[: samples.size - at]
        samples[at : at + piece.size] += piece
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


MUSIC_ON_HOLD = "/usr/share/asterisk/moh/macroform-cold_day.wav"
HOLD = (9.0, 21.0)  # seconds of the stereo call


def _on_hold(
    agent: npt.NDArray[np.int16], customer: npt.NDArray[np.int16]
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """The call with a hold: music on the agent's side, the customer quietly waiting."""
    with wave.open(MUSIC_ON_HOLD, "rb") as reader:
        music = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    first, last = (round(t * PROMPT_RATE) for t in HOLD)
    agent, customer = agent.copy(), customer.copy()
    agent[first:last] = music[: last - first] // 4  # about -20 dBFS
    hiss = np.random.default_rng(5).normal(0.0, 32768 * 10 ** (-65 / 20), last - first)
    customer[first:last] = hiss.astype(np.int16)  # no one speaks while the music plays
    return agent, customer


async def _encode_all(jobs: list[tuple[Path, npt.NDArray[np.int16]]]) -> None:
    """Each recording encoded by ffmpeg, as many at once as there are cores."""
    binary = resolve_ffmpeg(get_settings().ffmpeg_binary)
    limit = asyncio.Semaphore(os.cpu_count() or 2)

    async def one(path: Path, samples: npt.NDArray[np.int16]) -> None:
        muxer, codec, rate = ENCODINGS[path.suffix]
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        raw = path.with_name(f".{path.name}.raw")
        raw.write_bytes(samples.astype("<i2").tobytes())
        try:
            async with limit:
                await encode(
                    binary, raw, path,
                    ["-f", "s16le", "-ar", str(PROMPT_RATE), "-ac", str(channels)],
                    ["-ar", str(rate or 22050), "-ac", str(channels), *codec, "-f", muxer],
                    timeout=120,
                )  # fmt: skip
        finally:
            raw.unlink(missing_ok=True)

    await asyncio.gather(*(one(path, samples) for path, samples in jobs))


def local_csv(rows: list[dict[str, str]], source: FileServer, path: Path) -> None:
    """The example CSV with every URL pointing at the local audio server instead."""

    def local(url: str) -> str:
        return source.file_url(Path(urlsplit(url).path).name) if url else ""

    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            urls = {key: local(value) for key, value in row.items() if key.endswith("_url")}
            writer.writerow({**row, **urls})


def start_service(work: Path) -> ServiceProcess:
    """`python main.py` with the demo's settings, once /health answers."""
    settings = get_settings()
    service = ServiceProcess(
        settings, log_path=work / "service.out", script=ROOT / "main.py", port=settings.port
    )
    try:
        return service.start()
    except RuntimeError:
        sys.exit(f"error: the service did not start; its output is in {work / 'service.out'}")


# The script at the repository root a user runs for each command.
SCRIPTS: dict[Callable[[list[str] | None], int], str] = {
    batch_download_from_csv.main: "batch_download_from_csv.py",
    test_single_download.main: "test_single_download.py",
    export_dataset.main: "export_dataset.py",
    analyze_storage.main: "analyze_storage.py",
    metadata_tracker.main: "metadata_tracker.py",
}


def step(title: str, script: Callable[[list[str] | None], int], args: list[str]) -> int:
    """Print the command a user would type, then run it in this process."""
    print(f"\n=== {title}\n$ python3 {SCRIPTS[script]} {shlex.join(args)}", flush=True)
    code = script(args)
    print(f"(exit code {code})", flush=True)
    return code


def post_stereo(url: str) -> int:
    """A stereo call posted as a client would: its two channels become two speakers."""
    server = default_server(get_settings())
    print(f"\n=== A stereo call: left channel agent, right channel customer\n"
          f"$ curl -X POST {server}/download/stereo -F conversation_id=stereo-call-1 "
          f"-F audio_url={url}", flush=True)  # fmt: skip
    response = httpx.post(f"{server}/download/stereo", timeout=120,
                          data={"conversation_id": "stereo-call-1", "audio_url": url})  # fmt: skip
    for item in response.json().get("downloads", []):
        print(f"  {item['filename']}: {item['status']}, {item['duration_seconds']} s")
    print(f"(HTTP {response.status_code})", flush=True)
    return 0 if response.status_code == 200 else 1


def wait_for_labels() -> int:
    """Speech labels follow each answer by a moment; the statistics below should count them."""
    with ServiceClient.from_settings(get_settings(), timeout=10) as client:
        deadline = time.monotonic() + 60
        while (left := client.statistics(TARGET_HOURS)["speech"]["unlabelled_files"]) > 0:
            if time.monotonic() > deadline:
                print(f"error: {left} files still have no speech labels after 60 s")
                return 1
            time.sleep(0.05)
    return 0


ERASED_ID = "conv_20251016_002"  # a two-leg conversation of the example CSV


def walk_through(demo_csv: Path, work: Path, stereo_url: str) -> list[int]:
    """The user's workflow, one command after the other; returns their exit codes."""
    target, batch = ["--target", str(TARGET_HOURS)], [str(demo_csv), "--failed-rows-dir", str(work)]
    return [
        step("Check one conversation end to end", test_single_download.main, [str(demo_csv)]),
        step("Download all conversations", batch_download_from_csv.main, batch),
        step("Run it again: everything is already stored", batch_download_from_csv.main, batch),
        post_stereo(stereo_url),
        wait_for_labels(),
        step("Statistics (the numbers of GET /statistics)", metadata_tracker.main, target),
        step("The store exported as JSON now (the service also does it by itself)",
             metadata_tracker.main, ["--export-json"]),
        step("Progress report, counted in speech hours, and CSV export", analyze_storage.main,
             [*target, "--speech", "--export-csv", str(work / "conversations_metadata.csv")]),
        hourly_monitor(work),
        step("A training set for NeMo, pyannote, Hugging Face and lhotse", export_dataset.main,
             [str(work / "training_set"), "--no-progress"]),
        step("The same set as WebDataset tar shards too (NeMo tarred datasets, Hugging Face), "
             "at most 4 conversations a shard", export_dataset.main,
             [str(work / "training_set"), "--shards", "--shard-size", "4", "--no-progress"]),
        show_shards(work / "training_set"),
        step("A customer withdraws consent: erase the conversation everywhere",
             metadata_tracker.main, ["--erase", ERASED_ID, "--reason", "consent withdrawn"]),
        step("The same CSV again: the erased conversation is refused, not stored again",
             batch_download_from_csv.main, batch),
        step("The training set again: the erased conversation leaves its files and its shard",
             export_dataset.main, [str(work / "training_set"), "--no-progress"]),
        show_shards(work / "training_set"),
    ]  # fmt: skip


def show_shards(folder: Path) -> int:
    """What the sharded export wrote, from its index: each shard, its conversations, its size."""
    index = json.loads((folder / "shards" / "index.json").read_text())
    print(f"$ cat {folder.name}/shards/index.json  # summed up")
    for shard in index["shards"]:
        print(f"  shards/{shard['tar']}: {len(shard['conversations'])} conversations, "
              f"{shard['bytes'] / 1e6:.1f} MB; manifest shards/{shard['manifest']}")  # fmt: skip
    return 0


def run_demo(work: Path) -> bool:
    """Sample audio, its local server and the service, all under `work`; then the workflow."""
    with open(EXAMPLE_CSV, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    print(f"Demo in {work}\nMaking {len(rows)} sample conversations with ffmpeg ...", flush=True)
    make_samples(rows, work / "source")
    # The service and every script read their settings from here, as in real use.
    os.environ.update({
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "AUDIO_STORAGE_DIR": str(work / "downloaded_audios"),
        "METADATA_FILE": str(work / "conversations_metadata.json"),
        "LOG_DIR": str(work / "logs"),
        "CONVERSION_SLOTS_DIR": str(work / "conversion-slots"),
        "METRICS_DIR": str(work / "metrics"),
        # Named outright, so a DATABASE_URL in the environment or a .env file is never touched.
        "DATABASE_URL": f"sqlite:///{work / 'conversations_metadata.sqlite3'}",
        "NO_PROXY": "127.0.0.1,localhost",
    })  # fmt: skip
    get_settings.cache_clear()
    service = None
    try:
        with FileServer(work / "source") as source:
            demo_csv = work / "conversations.csv"
            local_csv(rows, source, demo_csv)
            print(f"Audio served at {source.base_url}; CSV with local URLs: {demo_csv}")
            service = start_service(work)
            print(f"Service running at {default_server(get_settings())}")
            codes = walk_through(demo_csv, work, source.file_url(STEREO_CALL))
            return all(code == 0 for code in codes)
    finally:
        if service is not None:
            service.stop(signal.SIGINT, group=False)  # as Ctrl-C would: a graceful stop
        get_settings.cache_clear()


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="audio-demo-"))
    if not run_demo(work):
        elapsed = time.monotonic() - started
        print(
            f"error: the demo failed after {elapsed:.1f} s; files kept in {work}", file=sys.stderr
        )
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nDemo finished in {time.monotonic() - started:.1f} s; temporary files removed.")
    print("For real use: `make run`, then the same commands (see docs/workflow.md).")
    return 0


def hourly_monitor(work: Path) -> int:
    """One cron-style run of the monitor, logging beside the demo's other files."""
    log = work / "hourly_log.txt"
    # Without a .venv beside the script (a git worktree), its python3 is then the demo's own.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "TARGET_HOURS": str(TARGET_HOURS), "HOURLY_LOG_FILE": str(log),
           "HOURLY_LOCK_FILE": str(work / "hourly.lock"), "PATH": path}  # fmt: skip
    print(f"\n=== One hourly monitor run (cron)\n$ TARGET_HOURS={TARGET_HOURS} ./hourly_monitor.sh")
    code = subprocess.run(["bash", str(ROOT / "hourly_monitor.sh")], env=env, check=False)
    print(f"$ cat hourly_log.txt\n{log.read_text()}(exit code {code.returncode})", flush=True)
    return code.returncode


if __name__ == "__main__":
    raise SystemExit(main())
