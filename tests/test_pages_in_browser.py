"""/docs, /redoc and /dashboard in headless Chromium with no route off 127.0.0.1, against a
real server process that has downloaded real audio: what rendered, and where the browser went."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.audio_factory import encode_pcm
from support.server_process import ServerProcess
from support.source_server import SourceServer
from support.speech_calls import RATE, spoken_turns, to_int16
from support.stores import make_settings

from bench.browser import OfflineBrowser, offline_chromium

pytestmark = pytest.mark.slow

KEY = "browser-test-key"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def chromium() -> Iterator[OfflineBrowser]:
    with offline_chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A service with API_KEY set that has stored two conversations (three files of speech
    taking turns, labelled), failed one download and erased a third conversation it had
    stored. LOW_SNR_DB is set above any leg's SNR, so both conversations are flagged low_snr."""
    audio = tmp_path_factory.mktemp("turns")
    for name, fmt, first, voice in (("agent.mp3", "mp3", 0, "en-us"),
                                    ("customer.wav", "wav", 1, "en+f3"),
                                    ("solo.flac", "flac", 0, "en-us")):  # fmt: skip
        pcm = to_int16(spoken_turns(8.0, 2.0, first, voice)).astype("<i2").tobytes()
        encode_pcm(audio / name, fmt, pcm, RATE, 1)
    settings = make_settings(tmp_path_factory.mktemp("browser"), api_key=KEY, low_snr_db=200)
    with (
        SourceServer(audio) as source,
        ServerProcess(settings) as process,
        httpx.Client(
            base_url=process.base_url, headers=HEADERS, timeout=120, trust_env=False
        ) as http,
    ):
        dual = {"conversation_id": "call-1", "audio_url_agent": source.file_url("agent.mp3"),
                "audio_url_customer": source.file_url("customer.wav")}  # fmt: skip
        assert http.post("/download/dual", data=dual).status_code == 200
        single = {"conversation_id": "call-2", "audio_url": source.file_url("solo.flac"),
                  "speaker_label": "agent"}  # fmt: skip
        assert http.post("/download/single", data=single).status_code == 200
        bad = {"conversation_id": "call-3", "audio_url": source.url("/html")}
        assert http.post("/download/single", data=bad).json()["error"] == "not_audio"
        withdrawn = {**single, "conversation_id": "call-4"}
        assert http.post("/download/single", data=withdrawn).status_code == 200
        deadline = time.monotonic() + 60
        while statistics(http)["speech"]["labelled_files"] < 4:
            assert time.monotonic() < deadline, "the stored files were not labelled"
            time.sleep(0.2)
        assert http.delete("/conversations/call-4").json()["files"] == 1
        yield process


def statistics(http: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = http.get("/statistics", params={"target_hours": 100}).json()
    return answer


def openapi_operations(base_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    schema = httpx.get(base_url + "/openapi.json", trust_env=False).json()
    return [
        (path, method, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]


def test_swagger_ui_renders_every_operation_and_tries_one_out(
    server: ServerProcess, chromium: OfflineBrowser
) -> None:
    """Swagger UI lists every operation of the schema, and "Try it out" on GET /health shows
    the live answer, with every request on 127.0.0.1."""
    chromium.requests.clear()
    page = chromium.page()
    page.goto(server.base_url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    shown = page.locator(".opblock-summary-path").evaluate_all(
        "nodes => nodes.map(n => n.dataset.path)"
    )
    expected = [path for path, _, _ in openapi_operations(server.base_url)]
    assert sorted(shown) == sorted(expected) and "/download/single" in shown
    health = page.locator("#operations-default-health_health_get")
    health.locator(".opblock-summary-control").click()
    health.locator("button.try-out__btn").click()
    health.locator("button.execute").click()
    live = health.locator(".live-responses-table tbody .response-col_status")
    live.first.wait_for(timeout=30_000)
    assert live.first.inner_text().strip() == "200"
    assert '"status": "healthy"' in health.locator(".live-responses-table").inner_text()
    page.context.close()
    assert chromium.outside(server.base_url) == []
    assert any(url.endswith("/health") for url in chromium.requests)


def test_redoc_renders_every_operation(server: ServerProcess, chromium: OfflineBrowser) -> None:
    """ReDoc renders a section for each operation, titled by its summary, asking nothing of any
    other host (its Redocly logo included)."""
    chromium.requests.clear()
    page = chromium.page()
    page.goto(server.base_url + "/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", timeout=30_000)
    sections = set(
        page.locator("[data-section-id^='operation/']").evaluate_all(
            "nodes => nodes.map(n => n.dataset.sectionId)"
        )
    )
    operations = openapi_operations(server.base_url)
    assert sections == {f"operation/{op['operationId']}" for _, _, op in operations}
    titles = page.locator("h2").all_inner_texts()
    for _, _, operation in operations:
        assert operation["summary"] in titles
    assert page.locator("img[alt='redocly logo']").evaluate("img => img.naturalWidth") > 0
    page.context.close()
    assert chromium.outside(server.base_url) == []


def test_dashboard_asks_for_the_key_once_and_shows_the_statistics(
    server: ServerProcess, chromium: OfflineBrowser
) -> None:
    """The dashboard asks for the key, keeps it for the session, and draws the numbers
    /statistics gives: conversations, audio and speech hours, today's bar, lengths, failures,
    erased conversations, and the low_snr and music flags with the legs' median SNR."""
    chromium.requests.clear()
    context = chromium.context()
    page = context.new_page()
    first = page.goto(server.base_url + "/dashboard")
    assert first is not None and first.status == 401
    page.fill("input[name=key]", "not-the-key")
    page.click("input[type=submit]")
    assert "not the service's API key" in page.inner_text("form")
    page.fill("input[name=key]", KEY)
    page.click("input[type=submit]")
    page.wait_for_selector("#per-day")
    assert page.url == server.base_url + "/dashboard"
    with httpx.Client(base_url=server.base_url, headers=HEADERS, trust_env=False) as http:
        stats = statistics(http)

    def value(selector: str) -> str | None:
        return page.get_attribute(selector, "data-value")

    summary = stats["summary"]
    assert value("#conversations") == str(summary["total_conversations"]) == "2"
    assert float(value("#audio-hours") or 0) == summary["total_hours"] > 0
    assert float(value("#speech-hours") or 0) == stats["speech"]["speech_hours"] > 0
    assert value("#failures-24h") == "1"
    assert value("#erased") == str(stats["erased_conversations"]) == "1"
    assert page.inner_text("#erased").strip() == "1"
    assert "erased conversations" in page.inner_text(".tiles")
    assert page.inner_text("#audio-hours") == f"{summary['total_hours']:.4f} h"
    bars = page.locator("#per-day rect.bar")
    assert bars.count() == 30
    today = bars.last.get_attribute("data-hours")
    assert float(today or 0) == pytest.approx(summary["total_hours"], abs=1e-4)
    assert bars.last.get_attribute("data-files") == "3"
    assert page.locator("#per-day polyline.trend").count() == 1
    counts = page.locator("#lengths rect.bin").evaluate_all("r => r.map(n => +n.dataset.count)")
    assert sum(counts) == 2
    assert page.get_attribute("#failures-by-code g.row", "data-label") == "not_audio"
    assert "call-3" in page.inner_text("#recent-failures")
    flags, quality = stats["speech"]["flags"], stats["speech"]["quality"]
    assert value("#flag-low-snr") == str(flags["low_snr"]) == "2"
    assert value("#flag-music") == "0" and "music" not in flags
    assert quality["snr_measured_legs"] == 3
    assert float(value("#snr-median") or "nan") == quality["snr_median_db"]
    assert page.inner_text("#flag-low-snr") == "2 low_snr"
    assert f"median SNR {quality['snr_median_db']:.1f} dB over 3 legs" in page.inner_text(
        "#leg-quality"
    )
    reasons = page.locator("#flags-by-reason g.row").evaluate_all(
        "g => g.map(n => n.dataset.label)"
    )
    assert "low_snr" in reasons
    labels = page.locator("#speakers g.row").evaluate_all("g => g.map(n => n.dataset.label)")
    assert sorted(labels) == ["agent", "customer"]
    assert page.get_attribute("#progress-audio", "data-state") == "projected"
    assert page.locator("script").count() == 0
    assert page.get_attribute("meta[http-equiv=refresh]", "content") == "60"
    [cookie] = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert KEY not in cookie["value"]
    again = page.reload()  # the session keeps the key
    assert again is not None and again.status == 200
    assert page.locator("#per-day").count() == 1
    context.close()
    assert chromium.outside(server.base_url) == [] and chromium.failed == []


def test_a_missing_chromium_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Chromium the browser tests fail, naming what to install, rather than skip."""
    from bench import browser

    monkeypatch.setattr(browser, "CHROMIUM", str(Path("/nonexistent/chromium")))
    with pytest.raises(RuntimeError, match="make system-packages"), browser.offline_chromium():
        pass
