"""The processes a test started, read from /proc: who descends from whom, which still run."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    start: int  # clock ticks after boot: a later process reusing the pid starts later
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} (parent {self.ppid}, state {self.state}): {self.command[:150]}"


def listed(procs: Iterable[Proc]) -> str:
    return "".join(f"\n  {p}" for p in procs)


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name in brackets may hold spaces
    text = command.decode(errors="replace") or stat.split("(", 1)[1].rsplit(")", 1)[0]
    return Proc(pid, int(fields[1]), fields[0], int(fields[19]), text)


def all_processes() -> list[Proc]:
    found = (read_proc(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [p for p in found if p is not None]


def descendants(root: int) -> list[Proc]:
    """Every process below `root` (children, their children ...) that has not ended; zombies
    (ended, waiting for their parent to read the exit status) count as ended."""
    children: dict[int, list[Proc]] = {}
    for proc in all_processes():
        children.setdefault(proc.ppid, []).append(proc)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child.pid)
            if child.state not in ("Z", "X"):
                found.append(child)
    return found


def still_running(procs: Iterable[Proc]) -> list[Proc]:
    """Those of `procs` still running: the same pid with the same start time, not a zombie."""
    running = []
    for proc in procs:
        now = read_proc(proc.pid)
        if now is not None and now.start == proc.start and now.state not in ("Z", "X"):
            running.append(proc)
    return running


def kill_all(procs: Iterable[Proc]) -> None:
    for proc in still_running(procs):
        with contextlib.suppress(OSError):  # ended meanwhile
            os.kill(proc.pid, signal.SIGKILL)


def become_subreaper() -> bool:
    """Make this process the one its orphaned descendants are handed to (instead of init), so
    a process left running by a server that died is still found below it."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def own_helpers() -> set[int]:
    """This process's multiprocessing helpers, which live as long as it does by design: the
    fork server its labelling pools fork from and the resource tracker."""
    forkserver = getattr(multiprocessing.forkserver, "_forkserver", None)
    tracker = getattr(multiprocessing.resource_tracker, "_resource_tracker", None)
    pids = {getattr(forkserver, "_forkserver_pid", None), getattr(tracker, "_pid", None)}
    return {pid for pid in pids if pid is not None}
