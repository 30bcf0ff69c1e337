"""Signed URLs stay secret: no signature in any answer, log line, failure record or export,
while repeats and conflicts still recognise the object behind a freshly signed URL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.source_server import SourceServer
from support.stores import make_settings

from diarization_audio.logs import LOG_FILENAME
from diarization_audio.service.app import create_app
from diarization_audio.settings import Settings
from diarization_audio.store.tracker import database_url
from diarization_audio.url_secrets import scrub, shown, source_sha256

SECRETS = ("SIGNATURE0123456789abcdef", "CREDENTIAL0123", "TOKENSECRET42", "hunter2")


def _signed(url: str, n: int = 0, query: str = "") -> str:
    """`url` as a presigned S3 link (signed at time `n`), after its own `query` if any."""
    return (
        f"{url}?{query}X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={SECRETS[1]}%2F{n}"
        f"&X-Amz-Date=2026112{n}T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
        f"&X-Amz-Security-Token={SECRETS[2]}&X-Amz-Signature={SECRETS[0]}{n}"
    )


def _everything_written(settings: Settings) -> str:
    """The log file, the JSON export and every row of the store, as one text."""
    texts = [(Path(settings.log_dir) / LOG_FILENAME).read_text()]
    export = Path(settings.metadata_file)
    if export.exists():
        texts.append(export.read_text())
    store = database_url(settings).removeprefix("sqlite:///")
    with sqlite3.connect(store) as db:
        for (table,) in db.execute("select name from sqlite_master where type = 'table'"):
            texts.extend(repr(row) for row in db.execute(f"select * from {table}"))
    return "\n".join(texts)


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def _app(tmp_path: Path, **overrides: object) -> tuple[TestClient, Settings]:
    settings = make_settings(tmp_path, label_speech=False, **overrides)
    return TestClient(create_app(settings)), settings


def test_a_signed_url_leaves_no_signature_anywhere(tmp_path: Path, source: SourceServer) -> None:
    """Success, failure, a partial dual and a user:password URL: the answers, the log file,
    the failures table and the export name the objects without any secret."""
    test_client, settings = _app(tmp_path)
    with test_client as client:
        ok = client.post(
            "/download/single",
            data={"conversation_id": "c1", "audio_url": _signed(source.file_url("mp3.mp3"))},
        )
        failed = client.post(
            "/download/single",
            data={"conversation_id": "c2", "audio_url": _signed(source.url("/status/404"))},
        )
        partial = client.post(
            "/download/dual",
            data={
                "conversation_id": "c3",
                "audio_url_agent": _signed(source.file_url("wav.wav")),
                "audio_url_customer": _signed(source.url("/html")),
            },
        )
        user = source.base_url.replace("://", f"://reader:{SECRETS[3]}@")
        with_password = client.post(
            "/download/single",
            data={"conversation_id": "c4", "audio_url": user + "/status/500"},
        )
        stats = client.get("/statistics", params={"target_hours": 1})
    assert ok.status_code == 200 and ok.json()["url"] == source.file_url("mp3.mp3")
    assert ok.json()["source_sha256"] == source_sha256(source.file_url("mp3.mp3"))
    assert (failed.status_code, failed.json()["error"]) == (502, "source_error")
    assert source.url("/status/404") in failed.json()["detail"]
    assert partial.json()["status"] == "partial"
    assert partial.json()["downloads"][1]["url"] == source.url("/html")
    assert with_password.status_code == 502
    for answer in (ok, failed, partial, with_password, stats):
        _assert_no_secret(answer.text)
    written = _everything_written(settings)
    assert "status/404" in written and "X-Amz-Signature" not in written
    _assert_no_secret(written)


def test_a_freshly_signed_url_of_the_same_object_is_a_repeat(
    tmp_path: Path, source: SourceServer
) -> None:
    """The same object under a new signature is already stored (nothing fetched again); a
    different object behind the same address (another `id`) is a 409 conflict."""
    test_client, _ = _app(tmp_path)
    with test_client as client:

        def post(url: str) -> tuple[int, dict[str, str]]:
            got = client.post("/download/single", data={"conversation_id": "c", "audio_url": url})
            return got.status_code, got.json()

        first = post(_signed(source.file_url("mp3.mp3"), 1, "id=1&"))
        hits = source.hits["/files/mp3.mp3"]
        again = post(_signed(source.file_url("mp3.mp3"), 2, "id=1&"))
        other = post(source.file_url("mp3.mp3") + "?id=2")
    assert first[0] == 200 and first[1]["status"] == "success"
    assert again[0] == 200 and again[1]["status"] == "exists"
    assert source.hits["/files/mp3.mp3"] == hits
    assert (other[0], other[1]["error"]) == (409, "url_conflict")
    assert "a different query string" in other[1]["detail"]


def test_store_url_query_keeps_whole_urls_in_the_store_only(
    tmp_path: Path, source: SourceServer
) -> None:
    """STORE_URL_QUERY=true records the URL whole; the log still never shows its query."""
    test_client, settings = _app(tmp_path, store_url_query=True)
    url = _signed(source.file_url("mp3.mp3"))
    with test_client as client:
        stored = client.post("/download/single", data={"conversation_id": "c", "audio_url": url})
    assert stored.json()["url"] == url
    _assert_no_secret((Path(settings.log_dir) / LOG_FILENAME).read_text())


@pytest.mark.parametrize(
    ("signed", "same_as"),
    [
        ("https://b.s3.amazonaws.com/a.wav?X-Amz-Signature=1&X-Amz-Date=2", "https://b.s3.amazonaws.com/a.wav"),
        ("https://storage.googleapis.com/b/a.wav?X-Goog-Signature=1&X-Goog-Expires=9", "https://storage.googleapis.com/b/a.wav"),
        ("https://a.blob.core.windows.net/c/a.wav?sv=2024&se=x&sp=r&sig=abc", "https://a.blob.core.windows.net/c/a.wav"),
        ("https://cdn.example.com/a.wav?Expires=1&Signature=2&Key-Pair-Id=3", "https://cdn.example.com/a.wav"),
        ("https://user:pw@host.example.com/a.wav?id=7&token=z", "https://host.example.com/a.wav?id=7"),
    ],
)  # fmt: skip
def test_signing_parameters_do_not_change_the_source(signed: str, same_as: str) -> None:
    assert source_sha256(signed) == source_sha256(same_as)
    assert source_sha256(signed) != source_sha256(same_as.replace("a.wav", "b.wav"))
    assert "?" not in shown(signed) and "@" not in shown(signed)


def test_scrub_removes_queries_and_passwords_from_free_text() -> None:
    text = "GET https://u:pw@h.example/x.mp3?sig=S#frag failed; retry http://h2/y?a=b."
    assert scrub(text) == "GET https://h.example/x.mp3 failed; retry http://h2/y"
