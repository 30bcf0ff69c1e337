"""A real threaded HTTP/1.1 server on 127.0.0.1 that misbehaves on demand, for download tests:
the package's file server plus routes that fail, stall, lie and redirect."""

from __future__ import annotations

import collections
import random
import re
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from diarization_audio.cli.file_server import (
    DEFAULT_CONTENT_TYPE,
    BadRequest,
    FileHandler,
    FileServer,
    content_type_of,
)

CHUNK_SIZE = 1 << 16
DEFAULT_SEED = 0

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


class _Handler(FileHandler):
    server_version = "SourceServer/1.0"
    disable_nagle_algorithm = True  # else /trickle's 1-byte writes wait on delayed ACKs

    @property
    def source(self) -> SourceServer:
        owner = self.owner
        assert isinstance(owner, SourceServer)
        return owner

    def route(self, parts: list[str], hit: int) -> None:
        match parts:
            case ["status", code]:
                self._status(_int(code, "status code"))
            case ["flaky", n, *name] if name:
                if hit <= _int(n, "failure count"):
                    status = _int(self.query.get("status", "503"), "status")
                    headers = {"Retry-After": self.query.get("retry_after", "0")}
                    self.send_json(status, {"status": status, "attempt": hit}, headers)
                else:
                    self.serve_file(self.file(name))
            case ["slow", seconds, *name] if name:
                path = self.file(name)
                if self.pause(_float(seconds, "delay")):
                    self.serve_file(path)
            case ["trickle", interval, *name] if name:
                self._trickle(self.file(name), _float(interval, "interval"))
            case ["truncated", *name] if name:
                path = self.file(name)
                size = path.stat().st_size
                # No "Connection: close": it should look like a server that died mid-body.
                self.serve_file(path, declared=size, send=size // 2)
                self.close_connection = True
            case ["lying-length", "short", *name] if name:
                path = self.file(name)
                size = path.stat().st_size
                declared = _int(self.query.get("length", str(size // 2)), "length")
                # The surplus bytes would poison a kept-alive connection, so say we close it.
                self.serve_file(path, declared=declared, headers={"Connection": "close"})
            case ["lying-length", "huge", declared, *name] if name:
                self.serve_file(self.file(name), declared=_int(declared, "length"))
                self.close_connection = True
            case ["resumable", mode, *name] if name and mode in _RESUME_MODES:
                self._resumable(self.file(name), mode, hit)
            case ["throttled", rate, *name] if name:
                self._throttled(self.file(name), _int(rate, "rate"))
            case ["endless"]:
                self._endless()
            case ["big", size]:
                self._big(_int(size, "size"))
            case ["random", size]:
                self._random(_int(size, "size"))
            case ["html"]:
                self.send_bytes(200, HTML_BODY, "text/html; charset=utf-8")
            case ["empty"]:
                self.start(200, self.content_type("audio/mpeg"), 0)
            case ["redirect", n, *name] if name:
                remaining = _int(n, "redirect count")
                if remaining > 0:
                    target = "/".join(quote(part, safe="") for part in name)
                    self._redirect(f"/redirect/{remaining - 1}/{target}")
                else:
                    self.serve_file(self.file(name))
            case ["redirect-loop"]:
                self._redirect("/redirect-loop")
            case ["redirect-to"]:
                location = self.query.get("location")
                if not location:
                    raise BadRequest("redirect-to needs ?location=")
                status = _int(self.query.get("status", "302"), "status")
                if status not in _REDIRECT_CODES:
                    raise BadRequest(f"{status} is not a redirect status")
                self._redirect(location, status)
            case _:
                super().route(parts, hit)

    def _status(self, code: int) -> None:
        if not 200 <= code <= 599:
            raise BadRequest("status must be 200-599")
        headers = {}
        if "retry_after" in self.query:
            headers["Retry-After"] = self.query["retry_after"]
        if code in (204, 304):  # these must not carry a body
            self.start(code, None, None, headers)
            return
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "Unknown"
        self.send_json(code, {"status": code, "reason": reason}, headers)

    def _redirect(self, location: str, status: int = 302) -> None:
        self.start(status, None, 0, {"Location": location})

    def _trickle(self, path: Path, interval: float) -> None:
        size = path.stat().st_size
        content_type = content_type_of(path)
        self.start(200, self.content_type(content_type), size)
        if self.head_only:
            return
        with path.open("rb") as f:
            while byte := f.read(1):
                if not self.pause(interval):
                    return
                self.wfile.write(byte)

    def _resumable(self, path: Path, mode: str, hit: int) -> None:
        """A source that advertises ranges. Its first answer stops after ?drop= of the body
        (default half) as a dropped connection would; later ones honour `Range` + `If-Range`
        ("honours"), ignore the range and send everything ("ignores"), or carry a new ETag
        so the range no longer applies ("changes")."""
        size = path.stat().st_size
        etag = f'"v{hit}"' if mode == "changes" else '"v1"'
        self.source._note_request(self.path, dict(self.headers.items()))
        start, status = 0, 200
        wanted = _RANGE.fullmatch(self.headers.get("Range", ""))
        if wanted and mode == "honours" and self.headers.get("If-Range") == etag:
            start, status = int(wanted.group(1)), 206
        headers = {"Accept-Ranges": "bytes", "ETag": etag}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        content_type = content_type_of(path)
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
        content_type = content_type_of(path)
        self.start(200, self.content_type(content_type), size)
        if self.head_only:
            return
        piece = max(1, int(rate * 0.05))
        with path.open("rb") as f:
            while data := f.read(piece):
                if not self.pause(0.05):
                    return
                self.wfile.write(data)
                self.source._count_bytes(self.path.split("?")[0], len(data))

    def _send_file_counted(self, f: BinaryIO, offset: int, count: int) -> None:
        if count > 0:
            self.send_file(f, count, offset)
            self.source._count_bytes(self.path.split("?")[0], count)

    def _endless(self) -> None:
        # Audio type by default so a downloader that checks Content-Type still starts reading
        # and the test reaches its size or time limit.
        self.start(200, self.content_type("audio/mpeg"), None, {"Transfer-Encoding": "chunked"})
        if self.head_only:
            return
        block = random.Random(DEFAULT_SEED).randbytes(CHUNK_SIZE)
        frame = b"%x\r\n%s\r\n" % (len(block), block)
        stop = self.source._stop_event
        while not stop.is_set():
            self.wfile.write(frame)
        self.close_connection = True  # the chunked body never got its terminating chunk

    def _big(self, size: int) -> None:
        self.start(200, self.content_type("audio/mpeg"), size)
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
        self.start(200, self.content_type(DEFAULT_CONTENT_TYPE), size)
        if not self.head_only:
            for chunk in iter_random_body(size, seed):
                self.wfile.write(chunk)


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"bad {what}: {text!r}") from None
    if value < 0:
        raise BadRequest(f"{what} must not be negative")
    return value


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"bad {what}: {text!r}") from None
    if not 0 <= value < 3600:  # also rejects nan and inf
        raise BadRequest(f"{what} must be in [0, 3600)")
    return value


class SourceServer(FileServer):
    """Serves files under `root` at /files/<name>, plus routes that misbehave on purpose.

    Routes (GET and HEAD): /files/<name>, /status/<code>, /flaky/<n>/<name>,
    /slow/<seconds>/<name>, /trickle/<interval>/<name>, /truncated/<name>,
    /lying-length/short/<name>, /lying-length/huge/<bytes>/<name>, /endless, /big/<bytes>,
    /html, /random/<bytes>, /empty, /redirect/<n>/<name>, /redirect-loop,
    /redirect-to?location=<url>, /resumable/<honours|ignores|changes>/<name>,
    /throttled/<bytes per second>/<name> (each request at that rate); anything else is 404.
    Query options: ?content_type= on every body-carrying route, ?retry_after= on /status and
    /flaky, ?status= on /flaky and /redirect-to, ?seed= on /random, ?length= on
    /lying-length/short, ?drop= (share of the body sent before the first answer breaks off) on
    /resumable.
    """

    handler = _Handler

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        #: Body bytes sent per request path by /resumable/ and /throttled/.
        self.bytes_sent: collections.Counter[str] = collections.Counter()
        #: (path with query, request headers) of every /resumable/ request, in order.
        self.requests: list[tuple[str, dict[str, str]]] = []

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

    def _count_bytes(self, path: str, count: int) -> None:
        with self._lock:
            self.bytes_sent[path] += count

    def _note_request(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((path, headers))
