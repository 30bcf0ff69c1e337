"""The dashboard's figures: progress in audio and speech hours, hours per day with their trend
and the projected date of the target, speakers, conversation lengths, failures and flags.

The store is read once (MetadataTracker.report); everything here is arithmetic on that.

The rate is the mean of the last RATE_DAYS days' hours (today included, days with nothing
stored counted as zero), or of the days since the first file if the collection is younger.
The projected date is today plus the remaining hours over that rate. Speech hours are
projected at that rate times the speech share so far (speech hours / audio hours).
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from diarization_audio.service.api_models import LegQualityPublic, ProgressPublic, SummaryPublic
from diarization_audio.store.json_export import statistics_of
from diarization_audio.store.reports import Report
from diarization_audio.store.tracker import MetadataTracker

DAYS_SHOWN = 30
RATE_DAYS = 7
RECENT_FAILURES = 10
HOUR_MICROS = 3.6e9


class ProjectionPublic(BaseModel):
    state: Literal["reached", "projected", "not moving"] = Field(
        description="'not moving' when nothing was collected in the rate's window."
    )
    hours_per_day: float = Field(description="The rate the projection assumes.")
    days_to_target: float | None
    projected_date: str | None = Field(
        description="YYYY-MM-DD in LOG_TIMEZONE; None when not moving or beyond the calendar."
    )


class TargetPublic(BaseModel):
    progress: ProgressPublic
    projection: ProjectionPublic


class DayPublic(BaseModel):
    day: str = Field(description="YYYY-MM-DD, the date of downloaded_at.")
    files: int
    hours: float = Field(description="Audio hours stored that day.")
    trend_hours: float = Field(
        description="Mean hours per day over the RATE_DAYS days ending this one."
    )


class DailyPublic(BaseModel):
    days: list[DayPublic] = Field(description="The last DAYS_SHOWN days, oldest first.")
    rate_days: int = Field(description="Days the rate is the mean of (7, fewer when younger).")
    rate_rule: str


class SpeakerPublic(BaseModel):
    speaker_label: str
    files: int
    audio_hours: float
    speech_hours: float


class LengthBinPublic(BaseModel):
    start_seconds: float
    end_seconds: float | None = Field(description="Exclusive; None: the open last bin.")
    conversations: int


class LengthsPublic(BaseModel):
    conversations: int
    min_seconds: float | None
    median_seconds: float | None
    p90_seconds: float | None
    max_seconds: float | None
    bins: list[LengthBinPublic] = Field(
        description="Conversation lengths (all files together); even bins up to the 99th "
        "percentile, then one open bin for longer ones."
    )


class FailurePublic(BaseModel):
    conversation_id: str
    speaker_label: str
    url: str = Field(description="Without its query string.")
    error_code: str
    detail: str
    failed_at: str


class DashboardFailuresPublic(BaseModel):
    total: int
    last_24_hours: int
    by_error_last_24_hours: dict[str, int]
    recent: list[FailurePublic] = Field(description="The latest failed attempts, newest first.")


class FlagsPublic(BaseModel):
    flagged_conversations: int
    by_reason: dict[str, int] = Field(description="Quality flag reason -> conversations.")
    quality: LegQualityPublic = Field(description="The legs' SNR and music, as /statistics.")


class DashboardPublic(BaseModel):
    generated_at: str
    summary: SummaryPublic
    audio: TargetPublic = Field(description="Progress counted in audio hours.")
    speech: TargetPublic = Field(description="Progress counted in speech hours.")
    speech_share: float = Field(description="Speech hours / audio hours.")
    labelled_files: int
    unlabelled_files: int = Field(description="Stored files whose labels have not come yet.")
    per_day: DailyPublic
    speakers: list[SpeakerPublic]
    lengths: LengthsPublic
    failures: DashboardFailuresPublic
    flags: FlagsPublic


def dashboard(tracker: MetadataTracker, target_hours: float) -> DashboardPublic:
    """Read the store once and compute every figure of the dashboard."""
    now = tracker.now()
    return figures(tracker.report(_first_day(now).isoformat(), RECENT_FAILURES), target_hours, now)


def _first_day(now: str) -> date:
    """The first day read: DAYS_SHOWN days are shown, each with a whole trend window."""
    return date.fromisoformat(now[:10]) - timedelta(days=DAYS_SHOWN + RATE_DAYS - 2)


def figures(report: Report, target_hours: float, now: str) -> DashboardPublic:
    """The dashboard from what was read; `now` is an ISO 8601 timestamp in LOG_TIMEZONE."""
    totals = report.totals
    spoken = sum(report.speech["speaker_micros"].values())
    audio_stats = statistics_of(totals, target_hours, now)
    speech_stats = statistics_of(totals, target_hours, now, spoken)
    share = spoken / totals.micros if totals.micros else 0.0
    days, rate_days = _daily(report, now)
    rate = days[-1].trend_hours if days else 0.0
    moment = datetime.fromisoformat(now)
    lengths = report.lengths
    return DashboardPublic(
        generated_at=now,
        summary=SummaryPublic(**audio_stats["summary"]),
        audio=_target(audio_stats["progress"], rate, moment),
        speech=_target(speech_stats["progress"], rate * share, moment),
        speech_share=round(share, 4),
        labelled_files=report.speech["labelled_files"],
        unlabelled_files=report.speech["unlabelled_files"],
        per_day=DailyPublic(
            days=days[-DAYS_SHOWN:],
            rate_days=rate_days,
            rate_rule=f"mean of the last {rate_days} days' hours, today included",
        ),
        speakers=[
            SpeakerPublic(
                speaker_label=s.speaker_label,
                files=s.files,
                audio_hours=round(s.audio_micros / HOUR_MICROS, 4),
                speech_hours=round(s.speech_micros / HOUR_MICROS, 4),
            )
            for s in report.speakers
        ],
        lengths=LengthsPublic(
            conversations=lengths.conversations,
            min_seconds=lengths.quantiles.get("min"),
            median_seconds=lengths.quantiles.get("median"),
            p90_seconds=lengths.quantiles.get("p90"),
            max_seconds=lengths.quantiles.get("max"),
            bins=[
                LengthBinPublic(
                    start_seconds=b.start_seconds,
                    end_seconds=b.end_seconds,
                    conversations=b.conversations,
                )
                for b in lengths.bins
            ],
        ),
        failures=DashboardFailuresPublic(**report.failures),
        flags=FlagsPublic(
            flagged_conversations=report.speech["flagged_conversations"],
            by_reason=report.speech["flags"],
            quality=LegQualityPublic(**report.speech["quality"]),
        ),
    )


def _daily(report: Report, now: str) -> tuple[list[DayPublic], int]:
    """Each day read, up to today, zeros filled in, with its trend: the mean over the RATE_DAYS
    days ending that day, none before the first file. Also how many days today's trend
    averages. Days after today (a writer's clock ahead) are left out."""
    today = date.fromisoformat(now[:10])
    first_file = date.fromisoformat(report.totals.first[:10]) if report.totals.first else today
    stored = {d.day: d for d in report.days}
    start = _first_day(now)
    hours: list[tuple[date, int, float]] = []
    for n in range((today - start).days + 1):
        day = start + timedelta(days=n)
        found = stored.get(day.isoformat())
        hours.append((day, found.files if found else 0, found.seconds / 3600 if found else 0.0))
    days, window_days = [], 1
    for i, (day, files, amount) in enumerate(hours):
        window_days = max(1, min(RATE_DAYS, (day - first_file).days + 1))
        window = [h for _, _, h in hours[max(0, i - window_days + 1) : i + 1]]
        days.append(
            DayPublic(
                day=day.isoformat(),
                files=files,
                hours=round(amount, 4),
                trend_hours=round(sum(window) / window_days, 4),
            )
        )
    return days, window_days


def _target(progress: dict[str, object], per_day: float, now: datetime) -> TargetPublic:
    shown = ProgressPublic.model_validate(progress)
    if shown.target_reached:
        projection = ProjectionPublic(
            state="reached", hours_per_day=round(per_day, 4), days_to_target=0.0,
            projected_date=now.date().isoformat(),
        )  # fmt: skip
    elif per_day <= 0:
        projection = ProjectionPublic(
            state="not moving", hours_per_day=0.0, days_to_target=None, projected_date=None
        )
    else:
        days = shown.remaining_hours / per_day
        try:
            when: str | None = (now + timedelta(days=days)).date().isoformat()
        except OverflowError:
            when = None
        projection = ProjectionPublic(
            state="projected", hours_per_day=round(per_day, 4),
            days_to_target=round(days, 2) if math.isfinite(days) else None, projected_date=when,
        )  # fmt: skip
    return TargetPublic(progress=shown, projection=projection)
