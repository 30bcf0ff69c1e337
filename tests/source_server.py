"""A real threaded HTTP/1.1 server on 127.0.0.1 that misbehaves on demand, for download tests."""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import random
import re
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

CHUNK_SIZE = 1 << 16
DEFAULT_SEED = 0

# Same values as audio_factory.CONTENT_TYPES (the selftest checks they agree). Not imported
# from there so this module works both as `source_server` and as `tests.source_server`.
_CONTENT_TYPES: dict[str, str] = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".flac": "audio/flac",
    ".aac": "audio/aac",
    ".m4a": "audio/mp4",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
}
_DEFAULT_CONTENT_TYPE = "application/octet-stream"

HTML_BODY = (
    b"<!DOCTYPE html>\n<html>\n<head><title>Not audio</title></head>\n<body>\n"
    b"<h1>This is a web page, not an audio file</h1>\n"
    b"<p>Sources sometimes answer 200 with a login page or an error page instead of the\n"
    b"audio that was asked for. A downloader should notice before handing it to ffmpeg.</p>\n"
    b"</body>\n</html>\n"
)

_REDIRECT_CODES = {301, 302, 303, 307, 308}
_RESUME_MODES = {"honours", "ignores", "changes"}
_RANGE = re.compile(r"bytes=(\d+)-")
_DISCONNECT_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.ESHUTDOWN}


def iter_random_body(size: int, seed: int = DEFAULT_SEED) -> Iterator[bytes]:
    """The chunks /random/<size> sends: deterministic for a given size and seed."""
    rng = random.Random(seed)
    remaining = size
    while remaining > 0:
        n = min(CHUNK_SIZE, remaining)
        yield rng.randbytes(n)
        remaining -= n


def random_body(size: int, seed: int = DEFAULT_SEED) -> bytes:
    """The whole body of /random/<size>?seed=<seed>, for comparing against a download."""
    return b"".join(iter_random_body(size, seed))


def _is_disconnect(exc: BaseException | None) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _DISCONNECT_ERRNOS


class _BadRequestError(Exception):
    pass


class _NotFoundError(Exception):
    pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck handler must never keep the test process alive
    request_queue_size = 128  # concurrency tests open many connections at once

    def __init__(self, owner: SourceServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse-DNS lookup that can stall for
        # seconds in a sandbox; the name is never needed here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        # The default prints a traceback to stderr. Disconnects are the clients' right; anything
        # else is a bug in this server, kept for the test to assert on.
        exc = sys.exc_info()[1]
        if exc is None or _is_disconnect(exc) or self.owner.stopping:
            return
        self.owner.errors.append(exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SourceServer/1.0"
    sys_version = ""
    disable_nagle_algorithm = True  # else /trickle's 1-byte writes wait on delayed ACKs

    head_only = False
    query: dict[str, str]

    # --- plumbing -------------------------------------------------------------------------

    @property
    def owner(self) -> SourceServer:
        return cast(_HTTPServer, self.server).owner

    def log_message(self, format: str, *args: object) -> None:
        return  # tests read results, not access logs; stderr must stay clean

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
            self._route(parts, hit)
        except _BadRequestError as exc:
            self._send_json(400, {"error": str(exc)})
        except _NotFoundError:
            self._send_json(404, {"error": "not found", "path": split.path})
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _route(self, parts: list[str], hit: int) -> None:
        match parts:
            case ["files", *name] if name:
                self._serve_file(self._file(name))
            case ["status", code]:
                self._status(_int(code, "status code"))
            case ["flaky", n, *name] if name:
                if hit <= _int(n, "failure count"):
                    status = _int(self.query.get("status", "503"), "status")
                    headers = {"Retry-After": self.query.get("retry_after", "0")}
                    self._send_json(status, {"status": status, "attempt": hit}, headers)
                else:
                    self._serve_file(self._file(name))
            case ["slow", seconds, *name] if name:
                path = self._file(name)
                if self._pause(_float(seconds, "delay")):
                    self._serve_file(path)
            case ["trickle", interval, *name] if name:
                self._trickle(self._file(name), _float(interval, "interval"))
            case ["truncated", *name] if name:
                path = self._file(name)
                size = path.stat().st_size
                # No "Connection: close": it should look like a server that died mid-body.
                self._serve_file(path, declared=size, send=size // 2)
                self.close_connection = True
            case ["lying-length", "short", *name] if name:
                path = self._file(name)
                size = path.stat().st_size
                declared = _int(self.query.get("length", str(size // 2)), "length")
                # The surplus bytes would poison a kept-alive connection, so say we close it.
                self._serve_file(path, declared=declared, headers={"Connection": "close"})
            case ["lying-length", "huge", declared, *name] if name:
                self._serve_file(self._file(name), declared=_int(declared, "length"))
                self.close_connection = True
            case ["resumable", mode, *name] if name and mode in _RESUME_MODES:
                self._resumable(self._file(name), mode, hit)
            case ["throttled", rate, *name] if name:
                self._throttled(self._file(name), _int(rate, "rate"))
            case ["link", rate, *name] if name:
                self._linked(self._file(name), self.owner.link(_int(rate, "rate")))
            case ["endless"]:
                self._endless()
            case ["big", size]:
                self._big(_int(size, "size"))
            case ["random", size]:
                self._random(_int(size, "size"))
            case ["html"]:
                self._send_bytes(200, HTML_BODY, "text/html; charset=utf-8")
            case ["empty"]:
                self._start(200, self._content_type("audio/mpeg"), 0)
            case ["redirect", n, *name] if name:
                remaining = _int(n, "redirect count")
                if remaining > 0:
                    target = "/".join(quote(part, safe="") for part in name)
                    self._redirect(f"/redirect/{remaining - 1}/{target}")
                else:
                    self._serve_file(self._file(name))
            case ["redirect-loop"]:
                self._redirect("/redirect-loop")
            case ["redirect-to"]:
                location = self.query.get("location")
                if not location:
                    raise _BadRequestError("redirect-to needs ?location=")
                status = _int(self.query.get("status", "302"), "status")
                if status not in _REDIRECT_CODES:
                    raise _BadRequestError(f"{status} is not a redirect status")
                self._redirect(location, status)
            case _:
                raise _NotFoundError

    # --- response helpers -----------------------------------------------------------------

    def _start(
        self,
        status: int,
        content_type: str | None,
        length: int | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)  # "Connection: close" also sets close_connection
        self.end_headers()

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._start(status, content_type, len(body), headers)
        if not self.head_only:
            self.wfile.write(body)

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def _content_type(self, default: str) -> str:
        # ?content_type= lets a test serve real audio under a misleading type, or vice versa.
        return self.query.get("content_type", default)

    def _file(self, name: list[str]) -> Path:
        root = self.owner.root
        path = root.joinpath(*name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise _NotFoundError
        return path

    def _pause(self, seconds: float) -> bool:
        """Wait, but give up as soon as the server stops; True if the wait ran its course."""
        if self.owner._stop_event.wait(seconds):
            self.close_connection = True
            return False
        return True

    def _serve_file(
        self,
        path: Path,
        declared: int | None = None,
        send: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        size = path.stat().st_size
        content_type = _CONTENT_TYPES.get(path.suffix.lower(), _DEFAULT_CONTENT_TYPE)
        self._start(200, self._content_type(content_type), size if declared is None else declared,
                    headers)  # fmt: skip
        if self.head_only:
            return
        with path.open("rb") as f:
            self._send_file(f, size if send is None else send)

    def _send_file(self, f: BinaryIO, count: int) -> None:
        if count <= 0:
            return
        # Headers are already on the wire (wfile is unbuffered), so the kernel can take the
        # body straight from the page cache: multi-GB files cost no Python memory or copies.
        self.connection.sendfile(f, 0, count)

    def _status(self, code: int) -> None:
        if not 200 <= code <= 599:
            raise _BadRequestError("status must be 200-599")
        headers = {}
        if "retry_after" in self.query:
            headers["Retry-After"] = self.query["retry_after"]
        if code in (204, 304):  # these must not carry a body
            self._start(code, None, None, headers)
            return
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "Unknown"
        self._send_json(code, {"status": code, "reason": reason}, headers)

    def _redirect(self, location: str, status: int = 302) -> None:
        self._start(status, None, 0, {"Location": location})

    def _trickle(self, path: Path, interval: float) -> None:
        size = path.stat().st_size
        content_type = _CONTENT_TYPES.get(path.suffix.lower(), _DEFAULT_CONTENT_TYPE)
        self._start(200, self._content_type(content_type), size)
        if self.head_only:
            return
        with path.open("rb") as f:
            while byte := f.read(1):
                if not self._pause(interval):
                    return
                self.wfile.write(byte)

    def _resumable(self, path: Path, mode: str, hit: int) -> None:
        """A source that advertises ranges. Its first answer stops after ?drop= of the body
        (default half) as a dropped connection would; later ones honour `Range` + `If-Range`
        ("honours"), ignore the range and send everything ("ignores"), or carry a new ETag
        so the range no longer applies ("changes")."""
        size = path.stat().st_size
        etag = f'"v{hit}"' if mode == "changes" else '"v1"'
        self.owner._note_request(self.path, dict(self.headers.items()))
        start, status = 0, 200
        wanted = _RANGE.fullmatch(self.headers.get("Range", ""))
        if wanted and mode == "honours" and self.headers.get("If-Range") == etag:
            start, status = int(wanted.group(1)), 206
        headers = {"Accept-Ranges": "bytes", "ETag": etag}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        content_type = _CONTENT_TYPES.get(path.suffix.lower(), _DEFAULT_CONTENT_TYPE)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size - start))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.head_only:
            return
        count = size - start
        if hit == 1:
            count = int(size * _float(self.query.get("drop", "0.5"), "drop"))
            self.close_connection = True  # cut mid-body, with no word of it beforehand
        with path.open("rb") as f:
            f.seek(start)
            self._send_file_counted(f, start, count)

    def _throttled(self, path: Path, rate: int) -> None:
        """The file at about `rate` bytes per second, in 50 ms slices."""
        size = path.stat().st_size
        content_type = _CONTENT_TYPES.get(path.suffix.lower(), _DEFAULT_CONTENT_TYPE)
        self._start(200, self._content_type(content_type), size)
        if self.head_only:
            return
        piece = max(1, int(rate * 0.05))
        with path.open("rb") as f:
            while data := f.read(piece):
                if not self._pause(0.05):
                    return
                self.wfile.write(data)
                self.owner._count_bytes(self.path.split("?")[0], len(data))

    def _linked(self, path: Path, link: _Link) -> None:
        """The file over `link`, in 64 kB pieces, each sent when the link has carried it."""
        size = path.stat().st_size
        content_type = _CONTENT_TYPES.get(path.suffix.lower(), _DEFAULT_CONTENT_TYPE)
        self._start(200, self._content_type(content_type), size)
        if self.head_only:
            return
        with path.open("rb") as f:
            while data := f.read(64 * 1024):
                if not self._pause(link.reserve(len(data)) - time.monotonic()):
                    return
                self.wfile.write(data)

    def _send_file_counted(self, f: BinaryIO, offset: int, count: int) -> None:
        if count > 0:
            self.connection.sendfile(f, offset, count)
            self.owner._count_bytes(self.path.split("?")[0], count)

    def _endless(self) -> None:
        # Audio type by default so a downloader that checks Content-Type still starts reading
        # and the test reaches its size or time limit.
        self._start(200, self._content_type("audio/mpeg"), None, {"Transfer-Encoding": "chunked"})
        if self.head_only:
            return
        block = random.Random(DEFAULT_SEED).randbytes(CHUNK_SIZE)
        frame = b"%x\r\n%s\r\n" % (len(block), block)
        stop = self.owner._stop_event
        while not stop.is_set():
            self.wfile.write(frame)
        self.close_connection = True  # the chunked body never got its terminating chunk

    def _big(self, size: int) -> None:
        self._start(200, self._content_type("audio/mpeg"), size)
        if self.head_only:
            return
        zeros = memoryview(bytes(1 << 20))
        remaining = size
        while remaining > 0:
            n = min(len(zeros), remaining)
            self.wfile.write(zeros[:n])
            remaining -= n

    def _random(self, size: int) -> None:
        seed = _int(self.query.get("seed", str(DEFAULT_SEED)), "seed")
        self._start(200, self._content_type(_DEFAULT_CONTENT_TYPE), size)
        if not self.head_only:
            for chunk in iter_random_body(size, seed):
                self.wfile.write(chunk)


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _BadRequestError(f"bad {what}: {text!r}") from None
    if value < 0:
        raise _BadRequestError(f"{what} must not be negative")
    return value


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _BadRequestError(f"bad {what}: {text!r}") from None
    if not 0 <= value < 3600:  # also rejects nan and inf
        raise _BadRequestError(f"{what} must be in [0, 3600)")
    return value


class _Link:
    """A link of `rate` bytes per second shared by every request that names it, so transfers
    in parallel split its bandwidth as they would on a real uplink."""

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


class SourceServer:
    """Serves files under `root` at /files/<name>, plus routes that misbehave on purpose.

    Routes (GET and HEAD): /files/<name>, /status/<code>, /flaky/<n>/<name>,
    /slow/<seconds>/<name>, /trickle/<interval>/<name>, /truncated/<name>,
    /lying-length/short/<name>, /lying-length/huge/<bytes>/<name>, /endless, /big/<bytes>,
    /html, /random/<bytes>, /empty, /redirect/<n>/<name>, /redirect-loop,
    /redirect-to?location=<url>, /resumable/<honours|ignores|changes>/<name>,
    /throttled/<bytes per second>/<name> (each request at that rate),
    /link/<bytes per second>/<name> (all requests naming that rate share it); anything else is
    404. Query options: ?content_type=
    on every body-carrying route, ?retry_after= on /status and /flaky, ?status= on /flaky and
    /redirect-to, ?seed= on /random, ?length= on /lying-length/short, ?drop= (share of the
    body sent before the first answer breaks off) on /resumable.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        #: Requests per request path (query string excluded), HEAD included.
        self.hits: collections.Counter[str] = collections.Counter()
        #: Body bytes sent per request path by /resumable/ and /throttled/.
        self.bytes_sent: collections.Counter[str] = collections.Counter()
        #: (path with query, request headers) of every /resumable/ request, in order.
        self.requests: list[tuple[str, dict[str, str]]] = []
        #: Unexpected exceptions raised in handlers (client disconnects are not errors).
        self.errors: list[BaseException] = []
        self._links: dict[int, _Link] = {}
        self._lock = threading.Lock()
        self._hit = threading.Condition(self._lock)  # notified on every request
        self._stop_event = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> SourceServer:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stop_event.clear()
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"SourceServer:{self.port}",
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

    def __enter__(self) -> SourceServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- addresses and bookkeeping --------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("SourceServer is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def link(self, rate: int) -> _Link:
        """The link of `rate` bytes per second, shared by every /link/<rate>/ request."""
        with self._lock:
            return self._links.setdefault(rate, _Link(rate))

    def url(self, path: str) -> str:
        """base_url + path (a leading "/" is added if missing)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def file_url(self, name: str) -> str:
        """URL of /files/<name>, percent-encoding the name."""
        return self.url("/files/" + quote(name))

    def reset(self) -> None:
        """Forget all hits, which also re-arms every /flaky/ path."""
        with self._lock:
            self.hits.clear()
            self.bytes_sent.clear()
            self.requests.clear()

    def wait_for_hits(self, path: str, count: int = 1, timeout: float = 30) -> bool:
        """Block until `path` has had at least `count` requests; False if `timeout` ran out.

        Tests order events with this instead of sleeping: a request that has reached the
        server is one the client is now waiting on.
        """
        with self._hit:
            return self._hit.wait_for(lambda: self.hits[path] >= count, timeout)

    def _count_hit(self, path: str) -> int:
        with self._hit:
            self.hits[path] += 1
            self._hit.notify_all()
            return self.hits[path]

    def _count_bytes(self, path: str, count: int) -> None:
        with self._lock:
            self.bytes_sent[path] += count

    def _note_request(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((path, headers))

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
