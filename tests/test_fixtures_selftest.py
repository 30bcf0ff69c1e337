"""Self-test of the test helpers: audio_factory makes real audio, source_server misbehaves."""

from __future__ import annotations

import contextlib
import struct
import threading
import time
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.audio_factory import (
    CONTENT_TYPES,
    FORMATS,
    decoded_duration,
    ffmpeg_exe,
    make_audio,
    make_corpus,
)
from support.source_server import HTML_BODY, SourceServer, random_body

from bench.media import make_long_mp3

SECONDS = 2.0

# What each container must look like on disk, so a format cannot silently be another one.
SIGNATURES: dict[str, Callable[[bytes], bool]] = {
    "mp3": lambda b: b.startswith(b"ID3"),
    "wav": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE",
    "wav24": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE",
    "wav_mulaw": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE",
    "wav_alaw": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE",
    "ogg": lambda b: b.startswith(b"OggS") and b"\x01vorbis" in b[:64],
    "opus": lambda b: b.startswith(b"OggS") and b"OpusHead" in b[:64],
    "flac": lambda b: b.startswith(b"fLaC"),
    "aac": lambda b: b[0] == 0xFF and b[1] & 0xF6 == 0xF0,  # ADTS sync word, layer 0
    "m4a": lambda b: b[4:8] == b"ftyp" and b[8:12] == b"M4A ",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), seconds=SECONDS)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, corpus: dict[str, Path]) -> Path:
    base = tmp_path_factory.mktemp("served")
    (base / "secret.txt").write_text("outside the served root\n")
    root = base / "root"
    root.mkdir()
    for path in corpus.values():
        (root / path.name).write_bytes(path.read_bytes())
    make_audio(root / "a.mp3", "mp3", seconds=1.0)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[SourceServer]:
    with SourceServer(root) as srv:
        yield srv
    assert srv.errors == []


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # trust_env=False: a proxy from the environment must never see test traffic.
    with httpx.Client(timeout=5.0, trust_env=False) as c:
        yield c


def _wav_fmt(path: Path) -> tuple[int, int, int, int]:
    """(format tag, channels, sample rate, bits) from the fmt chunk, which ffmpeg writes first."""
    data = path.read_bytes()[:64]
    assert data[12:16] == b"fmt "
    tag, channels, rate = struct.unpack_from("<HHI", data, 20)
    (bits,) = struct.unpack_from("<H", data, 34)
    return tag, channels, rate, bits


# --- audio_factory ---------------------------------------------------------------------------


def test_formats_and_content_types_cover_each_other() -> None:
    """Every format's suffix has a MIME type, and no MIME type is for a suffix nobody makes."""
    assert set(FORMATS.values()) == set(CONTENT_TYPES)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_is_real_decodable_audio(fmt: str, corpus: dict[str, Path]) -> None:
    """Each format is written with the right suffix and container and decodes cleanly to 2 s."""
    path = corpus[fmt]
    assert path.suffix == FORMATS[fmt]
    assert SIGNATURES[fmt](path.read_bytes()[:64])
    assert decoded_duration(path) == pytest.approx(SECONDS, abs=0.2)


def test_wav_variants_have_requested_encoding(corpus: dict[str, Path]) -> None:
    """The WAV variants carry 16-bit PCM, 24-bit PCM, and 8 kHz mono mu-law and A-law."""
    assert _wav_fmt(corpus["wav"]) == (1, 2, 44100, 16)
    tag, channels, rate, bits = _wav_fmt(corpus["wav24"])
    assert (tag in (1, 0xFFFE), channels, rate, bits) == (True, 2, 44100, 24)
    assert _wav_fmt(corpus["wav_mulaw"]) == (7, 1, 8000, 8)
    assert _wav_fmt(corpus["wav_alaw"]) == (6, 1, 8000, 8)


def test_stereo_channels_differ(corpus: dict[str, Path]) -> None:
    """Left and right carry different signals, so a broken downmix would be detectable."""
    with wave.open(str(corpus["wav"])) as w:
        frames = w.readframes(w.getnframes())
    samples = struct.unpack(f"<{len(frames) // 2}h", frames)
    left, right = samples[0::2], samples[1::2]
    assert max(map(abs, left)) > 10000
    assert sum(a != b for a, b in zip(left, right, strict=True)) > len(left) // 2


def test_make_audio_is_quick(tmp_path: Path) -> None:
    """A 2-second stereo MP3 is generated in well under a second."""
    started = time.perf_counter()
    make_audio(tmp_path / "quick.mp3", "mp3", seconds=2.0)
    assert time.perf_counter() - started < 1.0


def test_make_audio_honours_layout_arguments(tmp_path: Path) -> None:
    """sample_rate, channels and seconds are applied to formats that do not force them."""
    path = make_audio(tmp_path / "odd.bin", "wav", seconds=0.5, sample_rate=22050, channels=1)
    assert _wav_fmt(path) == (1, 1, 22050, 16)
    assert decoded_duration(path) == pytest.approx(0.5, abs=0.01)


def test_make_audio_rejects_unknown_format(tmp_path: Path) -> None:
    """An unknown format name is a ValueError, not a confusing ffmpeg failure."""
    with pytest.raises(ValueError, match="unknown format"):
        make_audio(tmp_path / "x.wma", "wma")


def test_make_long_mp3_loops_to_exact_length(tmp_path: Path) -> None:
    """A looped long MP3 decodes cleanly to the requested length (30 s from 7 s segments)."""
    path = make_long_mp3(tmp_path / "long.mp3", minutes=0.5, segment_seconds=7.0)
    assert decoded_duration(path) == pytest.approx(30.0, abs=0.2)
    assert not list(tmp_path.glob(".segment-*"))


def test_ffmpeg_exe_prefers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """FFMPEG_BINARY overrides every other way of finding ffmpeg."""
    monkeypatch.setenv("FFMPEG_BINARY", "/opt/custom/ffmpeg")
    assert ffmpeg_exe() == "/opt/custom/ffmpeg"
    monkeypatch.delenv("FFMPEG_BINARY")
    assert Path(ffmpeg_exe()).exists()


# --- source_server ---------------------------------------------------------------------------


def test_base_url_is_loopback(server: SourceServer) -> None:
    """The server listens on 127.0.0.1 only, on a real port."""
    assert server.base_url == f"http://127.0.0.1:{server.port}"
    assert server.url("html") == server.base_url + "/html"


def test_files_served_with_type_length_and_bytes(
    server: SourceServer, root: Path, client: httpx.Client
) -> None:
    """/files/<name> returns the exact bytes with Content-Type and Content-Length."""
    r = client.get(server.file_url("a.mp3"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/mpeg"
    assert int(r.headers["content-length"]) == (root / "a.mp3").stat().st_size
    assert r.content == (root / "a.mp3").read_bytes()


def test_head_content_types_match_audio_factory(
    server: SourceServer, corpus: dict[str, Path], client: httpx.Client
) -> None:
    """HEAD on every corpus file gives audio_factory's MIME type and the size, with no body."""
    for path in corpus.values():
        r = client.head(server.file_url(path.name))
        assert r.status_code == 200
        assert r.headers["content-type"] == CONTENT_TYPES[path.suffix]
        assert int(r.headers["content-length"]) == path.stat().st_size
        assert r.content == b""


def test_missing_files_and_traversal_are_404(server: SourceServer, client: httpx.Client) -> None:
    """Missing names, encoded ../ escapes and unknown routes all answer 404."""
    for path in ("/files/nope.mp3", "/files/..%2Fsecret.txt", "/files/", "/nope", "/html/x"):
        assert client.get(server.url(path)).status_code == 404, path
    assert client.get(server.url("/status/abc")).status_code == 400


def test_multi_gigabyte_file_streams_without_loading(tmp_path: Path, client: httpx.Client) -> None:
    """A sparse 5 GiB file gets the right Content-Length and its body starts streaming at once."""
    size = 5 << 30
    with (tmp_path / "huge.wav").open("wb") as f:
        f.truncate(size)
    with SourceServer(tmp_path) as srv:
        assert int(client.head(srv.file_url("huge.wav")).headers["content-length"]) == size
        started = time.perf_counter()
        with client.stream("GET", srv.file_url("huge.wav")) as r:
            received = 0
            for chunk in r.iter_raw():
                received += len(chunk)
                if received >= 8 << 20:
                    break
        assert time.perf_counter() - started < 2.0
        assert client.get(srv.url("/html")).status_code == 200
    assert srv.errors == []


@pytest.mark.parametrize("code", [403, 404, 429, 500, 503])
def test_status_route_answers_that_code(
    code: int, server: SourceServer, client: httpx.Client
) -> None:
    """/status/<code> answers that code with a JSON body, and Retry-After only when asked."""
    r = client.get(server.url(f"/status/{code}"))
    assert r.status_code == code
    assert r.json()["status"] == code
    assert "retry-after" not in r.headers
    r = client.get(server.url(f"/status/{code}?retry_after=7"))
    assert r.headers["retry-after"] == "7"


def test_status_204_has_no_body(server: SourceServer, client: httpx.Client) -> None:
    """Bodiless statuses stay bodiless, keeping the connection usable."""
    r = client.get(server.url("/status/204"))
    assert (r.status_code, r.content) == (204, b"")
    assert client.get(server.url("/html")).status_code == 200


def test_flaky_fails_n_times_then_serves(
    server: SourceServer, root: Path, client: httpx.Client
) -> None:
    """/flaky/2/<name> gives 503 + Retry-After: 0 twice, then the file; reset() re-arms it."""
    path = "/flaky/2/a.mp3"
    first, second, third = (client.get(server.url(path)) for _ in range(3))
    assert [first.status_code, second.status_code, third.status_code] == [503, 503, 200]
    assert first.headers["retry-after"] == "0"
    assert third.content == (root / "a.mp3").read_bytes()
    assert server.hits[path] == 3
    server.reset()
    r = client.get(server.url(path + "?retry_after=5&status=429"))
    assert (r.status_code, r.headers["retry-after"]) == (429, "5")


def test_slow_delays_headers_while_server_stays_responsive(
    server: SourceServer, client: httpx.Client
) -> None:
    """/slow/0.5/<name> takes at least 0.5 s while other requests are answered meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.perf_counter()
        already = server.hits["/slow/0.5/a.mp3"]
        slow = pool.submit(client.get, server.url("/slow/0.5/a.mp3"))
        assert server.wait_for_hits("/slow/0.5/a.mp3", already + 1, timeout=5)
        with httpx.Client(timeout=5.0, trust_env=False) as other:
            assert other.get(server.url("/html")).status_code == 200
        assert time.perf_counter() - started < 0.4
        assert slow.result().status_code == 200
    assert time.perf_counter() - started >= 0.5


def test_trickle_sends_one_byte_per_interval(
    server: SourceServer, root: Path, client: httpx.Client
) -> None:
    """/trickle/ announces the full length, then drips single bytes; leaving early is quiet."""
    with client.stream("GET", server.url("/trickle/0.05/a.mp3")) as r:
        assert int(r.headers["content-length"]) == (root / "a.mp3").stat().st_size
        started = time.perf_counter()
        received = b""
        for chunk in r.iter_raw():
            received += chunk
            if len(received) >= 4:
                break
    assert received == (root / "a.mp3").read_bytes()[: len(received)]
    assert time.perf_counter() - started >= 0.15


def test_truncated_body_is_a_protocol_error(server: SourceServer, client: httpx.Client) -> None:
    """/truncated/ sends half the promised bytes and closes, which httpx reports as an error."""
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(server.url("/truncated/a.mp3"))


def test_lying_length_short_cuts_the_body(
    server: SourceServer, root: Path, client: httpx.Client
) -> None:
    """/lying-length/short/ declares half the size, so the client keeps only that prefix."""
    data = (root / "a.mp3").read_bytes()
    r = client.get(server.url("/lying-length/short/a.mp3"))
    assert int(r.headers["content-length"]) == len(data) // 2
    assert r.content == data[: len(data) // 2]


def test_lying_length_huge_declares_more_than_it_sends(
    server: SourceServer, client: httpx.Client
) -> None:
    """/lying-length/huge/<n>/ announces n bytes, sends the file, then closes early."""
    with client.stream("GET", server.url("/lying-length/huge/1000000000/a.mp3")) as r:
        assert r.headers["content-length"] == "1000000000"
        with pytest.raises(httpx.RemoteProtocolError):
            r.read()


def test_endless_streams_until_client_leaves(server: SourceServer, client: httpx.Client) -> None:
    """/endless has no Content-Length and keeps sending chunked data for as long as we read."""
    with client.stream("GET", server.url("/endless")) as r:
        assert "content-length" not in r.headers
        assert r.headers["transfer-encoding"] == "chunked"
        received = 0
        for chunk in r.iter_bytes():
            received += len(chunk)
            if received >= 16 << 20:
                break
    assert received >= 16 << 20
    assert client.get(server.url("/html")).status_code == 200


def test_big_sends_exactly_the_declared_zeros(server: SourceServer, client: httpx.Client) -> None:
    """/big/<n> declares and sends exactly n zero bytes."""
    r = client.get(server.url("/big/3000001"))
    assert r.headers["content-length"] == "3000001"
    assert len(r.content) == 3000001
    assert r.content.count(0) == 3000001


def test_random_is_deterministic(server: SourceServer, client: httpx.Client) -> None:
    """/random/<n> is n octet-stream bytes, identical on every request and to random_body()."""
    r = client.get(server.url("/random/200000"))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == random_body(200000)
    assert r.content == client.get(server.url("/random/200000")).content
    assert client.get(server.url("/random/200000?seed=1")).content != r.content


def test_html_and_empty(server: SourceServer, client: httpx.Client) -> None:
    """/html is a small text/html page and /empty is an audio/mpeg 200 with no bytes."""
    r = client.get(server.url("/html"))
    assert r.headers["content-type"].startswith("text/html")
    assert r.content == HTML_BODY
    assert b"<html>" in r.content
    assert 200 < len(r.content) < 1000
    r = client.get(server.url("/empty"))
    assert (r.status_code, r.headers["content-type"], r.headers["content-length"]) == (
        200, "audio/mpeg", "0",
    )  # fmt: skip


def test_content_type_override(server: SourceServer, client: httpx.Client) -> None:
    """?content_type= changes the declared type of a real file."""
    r = client.head(server.url("/files/a.mp3?content_type=text/plain"))
    assert r.headers["content-type"] == "text/plain"


def test_redirect_chain_lands_on_file(
    server: SourceServer, root: Path, client: httpx.Client
) -> None:
    """/redirect/3/<name> takes three 302 hops and then serves the file."""
    r = client.get(server.url("/redirect/3/a.mp3"), follow_redirects=True)
    assert [h.status_code for h in r.history] == [302, 302, 302]
    assert r.url.path == "/redirect/0/a.mp3"
    assert r.content == (root / "a.mp3").read_bytes()


def test_redirect_loop_never_ends(server: SourceServer) -> None:
    """/redirect-loop redirects to itself until the client gives up."""
    with (
        httpx.Client(timeout=5.0, trust_env=False, max_redirects=5) as c,
        pytest.raises(httpx.TooManyRedirects),
    ):
        c.get(server.url("/redirect-loop"), follow_redirects=True)


def test_redirect_to_points_anywhere(server: SourceServer, client: httpx.Client) -> None:
    """/redirect-to sends the given Location, with 302 or the requested redirect status."""
    target = "http://10.255.255.1/x.mp3"
    r = client.get(server.url("/redirect-to"), params={"location": target})
    assert (r.status_code, r.headers["location"]) == (302, target)
    r = client.get(server.url("/redirect-to"), params={"location": target, "status": "307"})
    assert r.status_code == 307


def test_hits_are_counted_under_concurrency(server: SourceServer) -> None:
    """Concurrent requests from many clients are each counted exactly once."""
    path = "/status/418"
    before = server.hits[path]

    def fetch(_: int) -> int:
        with httpx.Client(timeout=5.0, trust_env=False) as c:
            return c.get(server.url(path)).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert set(pool.map(fetch, range(40))) == {418}
    assert server.hits[path] - before == 40


def test_wait_for_hits_wakes_on_the_request_and_times_out_without_one(server: SourceServer) -> None:
    """wait_for_hits returns True as soon as the request arrives, False when none does."""
    path = "/status/204"
    already = server.hits[path]
    assert not server.wait_for_hits(path, already + 1, timeout=0.05)
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.perf_counter()
        later = pool.submit(
            lambda: httpx.get(server.url(path), timeout=5.0, trust_env=False).status_code
        )
        assert server.wait_for_hits(path, already + 1, timeout=10)
        assert time.perf_counter() - started < 5
        assert later.result() == 204
    assert server.hits[path] == already + 1


def test_stop_is_prompt_and_quiet_with_streams_open(
    root: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """stop() ends sleeping and streaming handlers at once, and nothing reaches stderr."""
    srv = SourceServer(root).start()
    port = srv.port
    client = httpx.Client(timeout=10.0, trust_env=False)
    trickle = client.send(client.build_request("GET", srv.url("/trickle/5/a.mp3")), stream=True)
    slow_done = threading.Event()

    def slow() -> None:
        # The stop cuts this request off; only its prompt end matters.
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(srv.url("/slow/30/a.mp3"), timeout=10.0, trust_env=False)
        slow_done.set()

    threading.Thread(target=slow, daemon=True).start()
    client.get(srv.url("/nope"))
    assert srv.wait_for_hits("/slow/30/a.mp3", timeout=5)  # the slow handler is now sleeping
    started = time.perf_counter()
    srv.stop()
    assert time.perf_counter() - started < 1.0
    assert slow_done.wait(2.0)
    with pytest.raises(httpx.HTTPError):
        trickle.read()
    client.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/html", timeout=1.0, trust_env=False)
    assert srv.errors == []
    assert capfd.readouterr().err == ""
