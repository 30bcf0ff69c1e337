"""Process lifetimes: whether a process is still running (told apart from a later process that
reused its pid), and child processes that end with their parent."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import sys
import threading
from multiprocessing.process import BaseProcess
from pathlib import Path

_HAVE_PROC = Path("/proc/self/stat").exists()


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot; 0 where /proc is missing), or None
    when it is not running (or is a zombie). A later process with the same pid has a later
    start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if _HAVE_PROC:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # the name in brackets may hold spaces
    return None if fields[0] in ("Z", "X") else int(fields[19])


def running(pid: int) -> bool:
    return start_time(pid) is not None


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def signal_on_parent_death(sig: int) -> bool:
    """Have the kernel send `sig` to this process when its parent ends (Linux's parent-death
    signal, prctl PR_SET_PDEATHSIG); False where the kernel cannot.

    The kernel ties it to the parent *thread* that started this process: a process started
    from a short-lived thread gets it when that thread ends, though its parent lives on.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return bool(prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0)


def end_with_parent(sig: int, *, watch: bool = False) -> None:
    """Have `sig` sent to this multiprocessing child when its parent ends, however it ends.

    The kernel sends it (`signal_on_parent_death`); a parent that ended before the kernel was
    asked gets it sent now. With `watch`, or where the kernel cannot, a thread also waits for
    multiprocessing's parent process to end: the one that asked for this process, which holds
    the only write end of a pipe it is watched by (a fork server's children are forked by the
    fork server, so the kernel would only watch that).
    """
    kernel = signal_on_parent_death(sig)
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if not parent.is_alive():
        os.kill(os.getpid(), sig)
    if watch or not kernel:
        threading.Thread(
            target=_signal_when_ended, args=(parent, sig), name="parent-watch", daemon=True
        ).start()


def _signal_when_ended(parent: BaseProcess, sig: int) -> None:
    parent.join()
    os.kill(os.getpid(), sig)
