"""The dashboard's figures on SQLite and PostgreSQL, schema 4's migration, the API key kept by
a session cookie, escaping, and the offline docs' assets."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from support.stores import make_settings

from diarization_audio.cli.report import build_report
from diarization_audio.objects import Folder
from diarization_audio.service.app import create_app
from diarization_audio.service.dashboard_figures import DAYS_SHOWN, DashboardPublic, dashboard
from diarization_audio.service.dashboard_routes import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    session_token,
    session_valid,
)
from diarization_audio.settings import Settings
from diarization_audio.store.schema import SCHEMA_VERSION, StoredFile
from diarization_audio.store.speech_labels import LegLabels
from diarization_audio.store.tracker import MetadataTracker

TZ = ZoneInfo("Asia/Kolkata")
KEY = "dashboard-test-key"


def today() -> date:
    return datetime.now(TZ).date()


def leg(name: str, seconds: float, day: date) -> StoredFile:
    """A stored file of `seconds`, stamped at noon of `day` in the store's time zone."""
    return StoredFile(
        filepath=f"/store/{name}.wav", url=f"http://127.0.0.1/{name}.mp3",
        file_size_bytes=int(seconds * 32000) + 44, duration_seconds=seconds, sample_rate=16000,
        channels=1, sha256=f"{abs(hash(name)):064x}"[-64:],
        downloaded_at=f"{day.isoformat()}T12:00:00+05:30",
    )  # fmt: skip


def record_days(tracker: MetadataTracker, hours_by_days_ago: dict[int, float]) -> None:
    """Per day (days ago -> hours), one conversation of two equal legs."""
    tracker.record_many(
        (f"d{back}", label, leg(f"d{back}_{label}", hours * 1800, today() - timedelta(days=back)))
        for back, hours in hours_by_days_ago.items()
        for label in ("agent", "customer")
    )


def test_hours_per_day_trend_and_projected_date(tracker: MetadataTracker) -> None:
    """Each day's hours are summed, zero days filled in, the trend is the mean of the seven
    days ending each day, and the target is projected at today's trend, for audio and speech."""
    record_days(tracker, {10: 4.0, 6: 2.0, 3: 1.0, 0: 0.5, 40: 8.0})
    half = {label: leg(f"d0_{label}", 900, today()) for label in ("agent", "customer")}
    spoken = {
        label: LegLabels(f.sha256, f.sha256, [(0.0, 450.0)], 0.0, True) for label, f in half.items()
    }
    assert tracker.save_labels("d0", spoken, 0.0, {}, {"detector": "test"})
    data = dashboard(tracker, 100)
    days = data.per_day.days
    assert len(days) == DAYS_SHOWN and days[-1].day == today().isoformat()
    by_day = {d.day: d for d in days}
    for back, hours in {10: 4.0, 6: 2.0, 3: 1.0, 0: 0.5, 1: 0.0, 29: 0.0}.items():
        shown = by_day[(today() - timedelta(days=back)).isoformat()]
        assert shown.hours == hours and shown.files == (2 if hours else 0)
    # The 40-day-old day is before the days shown but counts in the totals.
    assert data.summary.total_hours == 15.5
    assert data.per_day.rate_days == 7
    assert days[-1].trend_hours == round((2.0 + 1.0 + 0.5) / 7, 4)
    assert by_day[(today() - timedelta(days=4)).isoformat()].trend_hours == round(6.0 / 7, 4)
    rate = (2.0 + 1.0 + 0.5) / 7
    audio = data.audio.projection
    assert audio.state == "projected" and audio.hours_per_day == round(rate, 4)
    assert audio.days_to_target == round((100 - 15.5) / rate, 2)
    expected = (datetime.fromisoformat(data.generated_at) + timedelta(days=84.5 / rate)).date()
    assert audio.projected_date == expected.isoformat()
    # Speech: 0.25 h of 15.5 h, so it moves at the audio rate times that share.
    assert data.speech.progress.current_hours == 0.25 and data.speech_share == round(0.25 / 15.5, 4)
    assert data.speech.projection.hours_per_day == round(rate * 0.25 / 15.5, 4)


def test_a_young_collection_is_rated_over_its_own_days(tracker: MetadataTracker) -> None:
    """A collection that started two days ago divides by three days, not seven."""
    record_days(tracker, {2: 3.0, 0: 1.5})
    data = dashboard(tracker, 10)
    assert data.per_day.rate_days == 3
    assert data.audio.projection.hours_per_day == 1.5
    assert "last 3 days" in data.per_day.rate_rule


def test_no_recent_files_is_not_moving_and_a_met_target_is_reached(
    tracker: MetadataTracker,
) -> None:
    """Nothing stored in the last seven days: 'not moving', no date; a met target: 'reached'."""
    record_days(tracker, {20: 2.0})
    stalled = dashboard(tracker, 10).audio.projection
    assert (stalled.state, stalled.projected_date, stalled.hours_per_day) == ("not moving", None, 0)
    assert dashboard(tracker, 1).audio.projection.state == "reached"
    empty_speech = dashboard(tracker, 10).speech.projection
    assert empty_speech.state == "not moving"


def test_conversation_lengths_follow_replaced_files(tracker: MetadataTracker) -> None:
    """Lengths are whole conversations (all files), binned evenly up to the 99th percentile
    with longer ones in an open last bin; replacing a file moves its conversation."""
    stamp = today()
    for n in range(150):
        tracker.record_file(f"c{n}", "agent", leg(f"c{n}a", 60 + n, stamp))
        tracker.record_file(f"c{n}", "customer", leg(f"c{n}c", 30, stamp))
    tracker.record_file("long", "agent", leg("long", 5 * 3600, stamp))
    lengths = dashboard(tracker, 10).lengths
    assert lengths.conversations == 151
    assert sum(b.conversations for b in lengths.bins) == 151
    assert (lengths.min_seconds, lengths.max_seconds) == (90.0, 18000.0)
    assert lengths.median_seconds == 165.0
    last = lengths.bins[-1]
    assert last.end_seconds is None and last.conversations == 1 and last.start_seconds <= 18000
    widths = {b.end_seconds - b.start_seconds for b in lengths.bins if b.end_seconds is not None}
    assert len(widths) == 1 and len(lengths.bins) <= 21
    # c0 was 90 s; its agent leg replaced by a 2-hour one makes it the second longest.
    tracker.record_file("c0", "agent", leg("c0a-again", 7200, stamp))
    again = dashboard(tracker, 10).lengths
    assert again.min_seconds == 91.0 and again.conversations == 151
    assert sum(b.conversations for b in again.bins if b.end_seconds is None) == 2


def test_a_version_3_store_is_migrated_to_version_4(tmp_path: Path) -> None:
    """A store of schema 3 gets each conversation's duration and the report indexes, and the
    dashboard's figures come out the same as on a new store."""
    settings = make_settings(tmp_path, log_timezone="Asia/Kolkata")
    tracker = MetadataTracker.from_settings(settings)
    record_days(tracker, {5: 2.0, 0: 1.0})
    tracker.record_file("solo", "agent", leg("solo", 600, today()))
    before = dashboard(tracker, 50)
    tracker.close()
    path = tmp_path / "conversations_metadata.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("drop index files_by_day")
        db.execute("drop index conversations_by_duration")
        db.execute("alter table conversations drop column duration_micros")
        db.execute("update store_info set schema_version = 3")
    tracker = MetadataTracker.from_settings(settings)
    after = dashboard(tracker, 50)
    tracker.close()
    assert after.model_dump(exclude={"generated_at"}) == before.model_dump(exclude={"generated_at"})
    with sqlite3.connect(path) as db:
        indexes = {
            row[0] for row in db.execute("select name from sqlite_master where type='index'")
        }
        durations = dict(db.execute("select conversation_id, duration_micros from conversations"))
        version = db.execute("select schema_version from store_info").fetchone()[0]
    assert {"files_by_day", "conversations_by_duration"} <= indexes
    assert durations == {"d5": 7_200_000_000, "d0": 3_600_000_000, "solo": 600_000_000}
    assert version == SCHEMA_VERSION


# The HTTP side -----------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, api_key=KEY, dashboard_target_hours=40)


@pytest.fixture
def keyed_client(keyed: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(keyed), follow_redirects=False) as test_client:
        yield test_client


def fill(settings: Settings, extra: Callable[[MetadataTracker], None] | None = None) -> None:
    tracker = MetadataTracker.from_settings(settings)
    tracker.record_many((f"h{n}", "agent", leg(f"h{n}", 600 + n, today())) for n in range(3))
    if extra:
        extra(tracker)
    tracker.close()


def test_data_needs_the_key_and_matches_statistics(
    keyed: Settings, keyed_client: TestClient
) -> None:
    """/dashboard/data is 401 JSON without the key; with it, its totals are /statistics'."""
    fill(keyed)
    refused = keyed_client.get("/dashboard/data")
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    headers = {"X-API-Key": KEY}
    data = DashboardPublic.model_validate(
        keyed_client.get("/dashboard/data", headers=headers).json()
    )
    stats = keyed_client.get("/statistics", params={"target_hours": 40}, headers=headers).json()
    assert data.summary.model_dump() == stats["summary"]
    assert data.audio.progress.model_dump() == stats["progress"]
    assert data.speech.progress.current_hours == stats["speech"]["speech_hours"]
    speech = stats["speech"]
    assert (data.labelled_files, data.unlabelled_files) == (0, 3)  # recorded, never labelled
    assert (speech["labelled_files"], speech["unlabelled_files"]) == (0, 3)
    assert data.audio.progress.target_hours == 40  # DASHBOARD_TARGET_HOURS
    other = keyed_client.get("/dashboard/data?target_hours=2.5", headers=headers).json()
    assert other["audio"]["progress"]["target_hours"] == 2.5


@pytest.mark.parametrize("value", ["0", "-1", "2e9", "abc", "nan", "inf"])
def test_bad_targets_are_400(keyed_client: TestClient, value: str) -> None:
    """target_hours must be a positive number up to 1e9, on the data and on the page."""
    for path in ("/dashboard/data", "/dashboard"):
        answer = keyed_client.get(path, params={"target_hours": value}, headers={"X-API-Key": KEY})
        assert answer.status_code == 400, (path, value, answer.text)
        assert answer.json()["error"] == "invalid_input"


def test_the_key_is_asked_once_and_kept_by_a_session_cookie(keyed_client: TestClient) -> None:
    """Without the key the page asks for it (401); a wrong key is refused; the right one sets an
    HttpOnly, SameSite=Strict session cookie for /dashboard that opens the page and its data
    but no other endpoint."""
    asked = keyed_client.get("/dashboard?target_hours=7")
    assert asked.status_code == 401 and asked.headers["content-type"].startswith("text/html")
    assert 'name="key"' in asked.text and 'name="target_hours" value="7"' in asked.text
    wrong = keyed_client.post("/dashboard", data={"key": "guess"})
    assert wrong.status_code == 401 and "not the service's API key" in wrong.text
    assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    right = keyed_client.post("/dashboard", data={"key": KEY, "target_hours": "7"})
    assert right.status_code == 303 and right.headers["location"] == "/dashboard?target_hours=7"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and KEY not in cookie
    for attribute in ("HttpOnly", "Path=/dashboard", "SameSite=strict"):
        assert attribute in cookie, cookie
    assert "expires" not in cookie.lower() and "max-age" not in cookie.lower()
    page = keyed_client.get("/dashboard?target_hours=7")
    assert page.status_code == 200 and "Progress toward 7 h" in page.text
    assert keyed_client.get("/dashboard/data").status_code == 200
    token = keyed_client.cookies[SESSION_COOKIE]
    elsewhere = keyed_client.get("/statistics", headers={"Cookie": f"{SESSION_COOKIE}={token}"})
    assert elsewhere.status_code == 401


@pytest.mark.parametrize(
    "forge",
    [
        lambda token: token[:-1] + ("0" if token[-1] != "0" else "1"),  # altered signature
        lambda token: session_token("another-key", int(time.time())),  # signed with another key
        lambda token: session_token(KEY, int(time.time()) - SESSION_SECONDS - 5),  # expired
        lambda token: KEY,  # the key itself is not a session
        lambda token: "",
    ],
)
def test_forged_or_expired_sessions_are_refused(
    keyed_client: TestClient, forge: Callable[[str], str]
) -> None:
    """A session cookie opens the dashboard only as issued, for this key, within its lifetime."""
    token = session_token(KEY, int(time.time()))
    keyed_client.cookies.set(SESSION_COOKIE, token, path="/dashboard")
    assert keyed_client.get("/dashboard/data").status_code == 200
    keyed_client.cookies.clear()
    keyed_client.cookies.set(SESSION_COOKIE, forge(token), path="/dashboard")
    assert keyed_client.get("/dashboard/data").status_code == 401
    assert keyed_client.get("/dashboard").status_code == 401


def test_session_tokens_with_odd_characters_are_refused() -> None:
    """Digits that are not ASCII, or any other text, are no session (no error either)."""
    now = time.time()
    assert session_valid(session_token(KEY, int(now)), KEY, now)
    for odd in ("\u00b2\u00b3." + "0" * 64, "1.\udcff", "1." + "g" * 64, "9" * 40):
        assert not session_valid(odd, KEY, now)


def test_everything_from_the_store_is_escaped(keyed: Settings, keyed_client: TestClient) -> None:
    """Failure ids, details and URLs and flag reasons reach the page as text, never as markup."""

    def hostile(tracker: MetadataTracker) -> None:
        tracker.record_failure("<b>id</b>", "a&b", 'http://x/"><img src=x>', "<i>code</i>",
                               "<script>alert(1)</script>")  # fmt: skip
        f = leg("h0", 600, today())
        spoken = {"agent": LegLabels(f.sha256, f.sha256, [(0.0, 1.0)], 0.0, False)}
        tracker.save_labels("h0", spoken, 0.0, {"<u>flag</u>": "<svg onload=x>"}, {"d": 1})

    fill(keyed, hostile)
    page = keyed_client.get("/dashboard", headers={"X-API-Key": KEY}).text
    assert "<script" not in page and "<img" not in page and "<b>id" not in page
    assert "<u>flag" not in page and "<i>code" not in page
    shown = ["&lt;b&gt;id&lt;/b&gt;", "&lt;script&gt;alert(1)&lt;/script&gt;", "a&amp;b",
             "&lt;i&gt;code&lt;/i&gt;", "&lt;u&gt;flag&lt;/u&gt;", "&quot;&gt;&lt;img"]  # fmt: skip
    for text in shown:
        assert text in page, text
    assert re.search(r'<meta http-equiv="refresh" content="60">', page)


def test_docs_load_their_assets_from_the_service(client: TestClient) -> None:
    """/docs and /redoc name no other host; the JS and CSS they load are served by the app."""
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        assert "cdn" not in html and "fonts.googleapis" not in html
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
        assert assets, html
        for asset in assets:
            assert asset.startswith(path + "/"), asset
            served = client.get(asset)
            assert served.status_code == 200 and len(served.content) > 100_000
    assert '"validatorUrl": null' in client.get("/docs").text


def test_the_report_and_the_dashboard_project_the_same_date(
    tracker: MetadataTracker, tmp_path: Path
) -> None:
    """The storage report (and so the hourly monitor's line) projects the target date at the
    dashboard's rate, for audio and for speech hours."""
    record_days(tracker, {10: 4.0, 6: 2.0, 3: 1.0, 0: 0.5})
    half = {label: leg(f"d0_{label}", 900, today()) for label in ("agent", "customer")}
    spoken = {
        label: LegLabels(f.sha256, f.sha256, [(0.0, 450.0)], 0.0, True) for label, f in half.items()
    }
    assert tracker.save_labels("d0", spoken, 0.0, {}, {"detector": "test"})
    page = dashboard(tracker, 100)
    now = datetime.fromisoformat(page.generated_at)
    for speech, shown in ((False, page.audio), (True, page.speech)):
        report, _ = build_report(tracker, Folder(tmp_path), 100, now, speech)
        rate = report["rate"]
        assert rate["hours_per_day"] == shown.projection.hours_per_day > 0
        assert rate["days_to_target"] == shown.projection.days_to_target
        assert rate["projected_target_date"] == shown.projection.projected_date
        assert rate["rate_days"] == page.per_day.rate_days == 7
