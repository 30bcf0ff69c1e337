"""Whether a process is still running, told apart from a later process that reused its pid."""

from __future__ import annotations

import os
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
