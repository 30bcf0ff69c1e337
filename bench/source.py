"""The benchmark's recording storage: the package's file server on 127.0.0.1 plus
/link/<bytes per second>/<name>, a link whose bandwidth every request naming that rate shares,
so transfers in parallel split it as they would on a real uplink."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from diarization_audio.cli.file_server import BadRequest, FileHandler, FileServer, content_type_of

PIECE_BYTES = 64 * 1024


class Link:
    """A link of `rate` bytes per second shared by every request that names it."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._free_at = 0.0
        self._lock = threading.Lock()

    def reserve(self, count: int) -> float:
        """When `count` more bytes will have crossed the link, behind those already queued."""
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + count / self.rate
            return self._free_at


class _Handler(FileHandler):
    def route(self, parts: list[str], hit: int) -> None:
        match parts:
            case ["link", rate, *name] if name:
                if not rate.isdigit() or int(rate) == 0:
                    raise BadRequest(f"bad rate: {rate!r}")
                owner = self.owner
                assert isinstance(owner, SourceServer)
                self._linked(self.file(name), owner.link(int(rate)))
            case _:
                super().route(parts, hit)

    def _linked(self, path: Path, link: Link) -> None:
        """The file over `link`, in 64 kB pieces, each sent when the link has carried it."""
        size = path.stat().st_size
        self.start(200, self.content_type(content_type_of(path)), size)
        if self.head_only:
            return
        with path.open("rb") as f:
            while data := f.read(PIECE_BYTES):
                if not self.pause(link.reserve(len(data)) - time.monotonic()):
                    return
                self.wfile.write(data)


class SourceServer(FileServer):
    """Serves the benchmark's media at /files/<name> and at /link/<bytes per second>/<name>."""

    handler = _Handler

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._links: dict[int, Link] = {}

    def link(self, rate: int) -> Link:
        """The link of `rate` bytes per second, shared by every /link/<rate>/ request."""
        with self._lock:
            return self._links.setdefault(rate, Link(rate))
