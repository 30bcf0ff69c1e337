"""A small threaded HTTP/1.1 server on 127.0.0.1 serving one folder's files at /files/<name>:
the demo's stand-in for the recording storage. Subclasses add routes (`FileHandler.route`)."""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import socket
import socketserver
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, ClassVar, Self, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

CONTENT_TYPES: dict[str, str] = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",  # RFC 7845: Ogg Opus files are audio/ogg
    ".flac": "audio/flac",
    ".aac": "audio/aac",
    ".m4a": "audio/mp4",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_DISCONNECT_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.ESHUTDOWN}


def is_disconnect(exc: BaseException | None) -> bool:
    """Whether `exc` is a client going away, which is its right, not a server error."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _DISCONNECT_ERRNOS


def content_type_of(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), DEFAULT_CONTENT_TYPE)


class NotFound(Exception):
    """Answered with 404."""


class BadRequest(Exception):
    """Answered with 400 and this message."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck handler must never keep the process alive
    request_queue_size = 128  # many clients may connect at once

    def __init__(self, owner: FileServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), owner.handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse-DNS lookup that can stall for
        # seconds in a sandbox; the name is never needed here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        # The default prints a traceback to stderr. Disconnects are the clients' right; anything
        # else is a bug in the server, kept in `errors` for its owner to report.
        exc = sys.exc_info()[1]
        if exc is None or is_disconnect(exc) or self.owner.stopping:
            return
        self.owner.errors.append(exc)


class FileHandler(BaseHTTPRequestHandler):
    """GET and HEAD of /files/<name>; anything else is 404."""

    protocol_version = "HTTP/1.1"
    server_version = "FileServer/1.0"
    sys_version = ""
    disable_nagle_algorithm = True  # small writes go out at once, not after a delayed ACK

    head_only = False
    query: dict[str, str]

    @property
    def owner(self) -> FileServer:
        return cast(_HTTPServer, self.server).owner

    def log_message(self, format: str, *args: object) -> None:
        return  # no access log: stderr stays for what matters

    def setup(self) -> None:
        super().setup()
        self.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.owner._untrack(self.connection)

    def do_GET(self) -> None:
        self._dispatch(head_only=False)

    def do_HEAD(self) -> None:
        self._dispatch(head_only=True)

    def _dispatch(self, head_only: bool) -> None:
        self.head_only = head_only
        split = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        hit = self.owner._count_hit(split.path)
        # Split before unquoting so an encoded "/" inside a name stays part of the name.
        parts = [unquote(part) for part in split.path.split("/")[1:]]
        try:
            self.route(parts, hit)
        except BadRequest as exc:
            self.send_json(400, {"error": str(exc)})
        except NotFound:
            self.send_json(404, {"error": "not found", "path": split.path})
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def route(self, parts: list[str], hit: int) -> None:
        """Answer the request for path `parts` (its `hit`-th); raise NotFound if none fits."""
        match parts:
            case ["files", *name] if name:
                self.serve_file(self.file(name))
            case _:
                raise NotFound

    # --- answers --------------------------------------------------------------------------

    def start(
        self,
        status: int,
        content_type: str | None,
        length: int | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send the status line and headers."""
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)  # "Connection: close" also sets close_connection
        self.end_headers()

    def send_bytes(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.start(status, content_type, len(body), headers)
        if not self.head_only:
            self.wfile.write(body)

    def send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def content_type(self, default: str) -> str:
        """`default`, unless the request names another with ?content_type=."""
        return self.query.get("content_type", default)

    def file(self, name: list[str]) -> Path:
        """The served file at path `name` under the root; NotFound if none or outside it."""
        root = self.owner.root
        path = root.joinpath(*name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise NotFound
        return path

    def pause(self, seconds: float) -> bool:
        """Wait, but give up as soon as the server stops; True if the wait ran its course."""
        if self.owner._stop_event.wait(seconds):
            self.close_connection = True
            return False
        return True

    def serve_file(
        self,
        path: Path,
        declared: int | None = None,
        send: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The file, declaring `declared` bytes (default its size) and sending `send`."""
        size = path.stat().st_size
        self.start(200, self.content_type(content_type_of(path)),
                   size if declared is None else declared, headers)  # fmt: skip
        if self.head_only:
            return
        with path.open("rb") as f:
            self.send_file(f, size if send is None else send)

    def send_file(self, f: BinaryIO, count: int, offset: int = 0) -> None:
        if count <= 0:
            return
        # Headers are already on the wire (wfile is unbuffered), so the kernel can take the
        # body straight from the page cache: multi-GB files cost no Python memory or copies.
        self.connection.sendfile(f, offset, count)


class FileServer:
    """Serves the files under `root` at /files/<name> from a daemon thread, on a free port of
    127.0.0.1. `hits` counts requests per path; `errors` keeps unexpected handler errors."""

    handler: ClassVar[type[FileHandler]] = FileHandler

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        #: Requests per request path (query string excluded), HEAD included.
        self.hits: collections.Counter[str] = collections.Counter()
        #: Unexpected exceptions raised in handlers (client disconnects are not errors).
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._hit = threading.Condition(self._lock)  # notified on every request
        self._stop_event = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stop_event.clear()
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections (so sleeping or streaming handlers end), unbind."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._stop_event.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by its own handler
                conn.shutdown(socket.SHUT_RDWR)  # wakes handlers blocked in recv or send
        httpd.server_close()
        thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """base_url + path (a leading "/" is added if missing)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def file_url(self, name: str) -> str:
        """URL of /files/<name>, percent-encoding the name."""
        return self.url("/files/" + quote(name))

    def _count_hit(self, path: str) -> int:
        with self._hit:
            self.hits[path] += 1
            self._hit.notify_all()
            return self.hits[path]

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
