"""ffmpeg: finding it and running it (the only place it runs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from pathlib import Path

from diarization_audio import metrics
from diarization_audio.errors import NotAudio, StorageError
from diarization_audio.wav import CHANNELS, SAMPLE_RATE

_FFMPEG_ERROR_CHARS = 400
_STDERR_KEEP_BYTES = 16384


@lru_cache(maxsize=8)
def resolve_ffmpeg(configured: str | None) -> str:
    """FFMPEG_BINARY if set, else `ffmpeg` on PATH, else the binary bundled by imageio-ffmpeg."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise StorageError(f"FFMPEG_BINARY {configured!r} is not an executable")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    return bundled_ffmpeg()


def bundled_ffmpeg() -> str:
    """The ffmpeg binary the imageio-ffmpeg wheel ships (9.0: every encoder, threaded CLI)."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


@lru_cache(maxsize=8)
def ffmpeg_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "-hide_banner", "-version"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"
    first = out.splitlines()[0] if out else ""
    return first.split(" Copyright")[0].removeprefix("ffmpeg version ").strip() or "unknown"


# Decoded audio is regrouped into frames of this many samples before anything else: an MP3
# decodes to frames of 1,152 samples, and each frame passes between ffmpeg's threads and
# through every filter on its own. Bigger frames take about a tenth off ffmpeg's time and give
# the same bytes (bench/RESULTS.md, "ffmpeg's frames").
FRAME_SAMPLES = 4096
_REGROUP = f"asetnsamples=n={FRAME_SAMPLES}:p=0"
# One output: every channel mixed down. Two outputs: a stereo call's left and right channels.
_SPLIT_GRAPH = "asplit=2[a][b];[a]pan=mono|c0=c0[left];[b]pan=mono|c0=c1[right]"


async def run_ffmpeg(
    binary: str,
    source: Path,
    target: Path | Sequence[Path],
    max_seconds: float,
    timeout: float,
    feed: AsyncIterator[bytes] | None = None,
    niceness: int = 0,
    samples: int | None = None,
) -> None:
    """Convert `source` to 16 kHz mono s16le WAV: `Ffmpeg.start` and `Ffmpeg.finish` in one.

    With `feed`, ffmpeg reads its input from a pipe as `feed` yields it (a download in
    progress) instead of from `source`.
    """
    ffmpeg = await Ffmpeg.start(
        binary, source, target, max_seconds, piped=feed is not None, niceness=niceness,
        samples=samples,
    )  # fmt: skip
    await ffmpeg.finish(timeout, feed)


class Ffmpeg:
    """One ffmpeg process converting into its targets: started, then finished or stopped.

    Starting ffmpeg takes several milliseconds before it reads a byte, so a caller that already
    knows the arguments may start it before its input arrives.
    """

    def __init__(self, proc: asyncio.subprocess.Process, source: Path) -> None:
        self._proc = proc
        self._source = source
        assert proc.stderr is not None
        self._complaints = asyncio.ensure_future(_tail(proc.stderr))

    @classmethod
    async def start(
        cls,
        binary: str,
        source: Path,
        target: Path | Sequence[Path],
        max_seconds: float,
        piped: bool,
        niceness: int = 0,
        samples: int | None = None,
    ) -> Ffmpeg:
        """Start converting `source` into `target`, or what `finish` feeds it when `piped`.

        Given one target, every channel is mixed into it; given two, the first and second
        channel of the first audio stream go to one each (one decode for both). `samples` cuts
        the decoded audio to that many samples per channel (an MP3's exact length, which ffmpeg
        applies to a file but not to a pipe).
        """
        targets = [target] if isinstance(target, Path) else list(target)
        encode = [
            "-vn", "-sn", "-dn", "-map_metadata", "-1",
            "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le",
            # One second past the limit tells "too long" from "exactly at the limit".
            "-t", f"{max_seconds + 1:.3f}",
            "-fflags", "+bitexact", "-flags:a", "+bitexact", "-f", "wav",
        ]  # fmt: skip
        given = "pipe:0" if piped else f"file:{source}"
        args = [binary, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", given]
        if piped:
            args.remove("-nostdin")  # stdin is the input
        cut = [f"atrim=end_sample={samples}"] if samples is not None else []
        lead = ",".join([*cut, _REGROUP])
        if len(targets) == 1:
            args += ["-map", "0:a:0", "-af", lead, "-ac", str(CHANNELS)]
            args += [*encode, f"file:{targets[0]}"]
        elif len(targets) == 2:
            args += ["-filter_complex", f"[0:a:0]{lead},{_SPLIT_GRAPH}"]
            for pad, path in zip(("[left]", "[right]"), targets, strict=True):
                args += ["-map", pad, *encode, f"file:{path}"]
        else:
            raise ValueError("one target, or two for the channels of a stereo file")
        # Reading a pipe, ffmpeg meets the end of its input when the server dies and stops by
        # itself; reading a file, it would convert all of it, so it is told to die with us.
        prefix = () if piped else _dying_with_parent()
        proc = await _spawn([*prefix, *args], piped)
        _lower_priority(proc.pid, niceness)
        return cls(proc, source)

    @metrics.timed_conversion
    async def finish(self, timeout: float, feed: AsyncIterator[bytes] | None = None) -> None:
        """Let it convert (feeding a piped one `feed`) and end; NotAudio if it could not.

        Time spent waiting for `feed` does not count against `timeout`. An error raised by
        `feed` stops ffmpeg and propagates; so does a timeout or a cancellation.
        """
        proc = self._proc
        try:
            async with asyncio.timeout(timeout) as limit:
                if feed is not None:
                    await _feed(proc, feed, limit)
                await proc.wait()
            stderr = await self._complaints
        except BaseException:
            # Timeout, a failed download, cancellation (client gone, shutdown): never leave
            # ffmpeg running.
            await self.stop()
            raise
        if proc.returncode != 0:
            raise NotAudio(f"ffmpeg could not decode it: {_ffmpeg_reason(stderr, self._source)}")

    async def stop(self) -> None:
        """Kill it (and anything it started) and wait for it to be gone."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(self._proc.wait())
        self._complaints.cancel()


async def _spawn(args: Sequence[str], piped: bool) -> asyncio.subprocess.Process:
    """Start ffmpeg (`args` from its binary on): the one place it is run."""
    return await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if piped else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        # A session of its own: a timeout kills everything it spawned as one group, and
        # where the kernel groups CPU time by session (autogroup) the session is a
        # scheduling group whose weight _lower_priority lowers. In the server's own
        # session ffmpeg's threads would count as the server's group, and other processes
        # on the host (a client, the batch script) would wait seconds for a CPU behind them.
        start_new_session=True,
    )


async def encode(
    binary: str,
    source: Path,
    target: Path,
    input_options: Sequence[str],
    output_options: Sequence[str],
    timeout: float,
) -> None:
    """Encode `source`, read as `input_options` say (raw PCM's format, say), into `target`
    with `output_options` (codec, rate, muxer): how the demo makes its sample recordings.
    NotAudio with ffmpeg's last complaint if it fails; killed after `timeout` seconds."""
    args = [binary, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            *input_options, "-i", f"file:{source}", *output_options, f"file:{target}"]  # fmt: skip
    proc = await _spawn(args, piped=False)
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            stderr = await _tail(proc.stderr)
            await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise NotAudio(f"ffmpeg could not encode it: {_ffmpeg_reason(stderr, source)}")


async def _feed(
    proc: asyncio.subprocess.Process, chunks: AsyncIterator[bytes], limit: asyncio.Timeout
) -> None:
    """Pipe `chunks` into ffmpeg; time spent waiting for the download does not count against
    its conversion timeout."""
    stdin = proc.stdin
    assert stdin is not None
    loop = asyncio.get_running_loop()
    try:
        while True:
            asked = loop.time()
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            when = limit.when()
            if when is not None:
                limit.reschedule(when + loop.time() - asked)
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # ffmpeg stopped reading (it failed, or reached -t); its exit status says which
    finally:
        stdin.close()


async def _tail(stream: asyncio.StreamReader) -> bytes:
    """What ffmpeg said, keeping only the end of it (a damaged file can fill megabytes)."""
    kept = b""
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-_STDERR_KEEP_BYTES:]
    return kept


def _lower_priority(pid: int, niceness: int) -> None:
    """Lower ffmpeg's priority from the server after it started (nothing runs in the child
    between fork and exec), in both ways Linux may weigh it.

    Its niceness ranks its threads against the server's where the scheduler groups tasks by
    cgroup (systemd, containers); the niceness of its session's autogroup ranks the session
    against the server's where the kernel groups by session (kernel.sched_autogroup_enabled),
    and there a niced process in a session at full weight would still take as much CPU as the
    whole server.
    """
    if niceness <= 0:
        return
    with contextlib.suppress(OSError):  # it may have exited already
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    with contextlib.suppress(OSError):  # a kernel without autogroups, or it exited already
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))


def _ffmpeg_reason(stderr: bytes, source: Path) -> str:
    """ffmpeg's last complaint, without the internal temporary file name."""
    lines = [
        line.replace(f"file:{source}", "<download>")
        .replace(str(source), "<download>")
        .replace("pipe:0", "<download>")
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip()
    ]
    reason = lines[-1] if lines else "no details"
    return re.sub(r"^\[[^]]*\] ", "", reason)[-_FFMPEG_ERROR_CHARS:]


@lru_cache(maxsize=1)
def _dying_with_parent() -> tuple[str, ...]:
    """The command prefix that makes ffmpeg die if the server is killed outright.

    util-linux's setpriv sets the parent-death signal and then execs ffmpeg. Doing that in the
    child from Python (preexec_fn) would call into libc between fork and exec, which is unsafe
    in a threaded server, and forces a full fork of the server's memory for every file.
    Only ffmpeg reading a file needs it; without setpriv it still ends with its timeout.
    """
    setpriv = shutil.which("setpriv")
    return (setpriv, "--pdeathsig", "KILL", "--") if setpriv else ()


def needs_whole_file(head: bytes) -> bool:
    """Whether a file starting with `head` cannot be decoded from a pipe: an MP4/M4A/MOV whose
    index (`moov`) comes after the audio (`mdat`), where ffmpeg must seek back. Undecided
    (the boxes run past `head`) counts as needing it."""
    if head[4:8] != b"ftyp":
        return False
    offset = 0
    while offset + 8 <= len(head):
        size = int.from_bytes(head[offset : offset + 4], "big")
        kind = head[offset + 4 : offset + 8]
        if kind == b"moov":
            return False
        if kind == b"mdat":
            return True
        if size == 1 and offset + 16 <= len(head):
            size = int.from_bytes(head[offset + 8 : offset + 16], "big")
        if size < 8:
            return True
        offset += size
    return True
