"""The dashboard's figures: progress in audio and speech hours, hours per day with their trend
and the projected date of the target, speakers, conversation lengths, failures and flags.

The store is read once (MetadataTracker.report); everything here is arithmetic on that.

The rate, the trend of each day and the projected date are diarization_audio.progress's, the
same as the storage report's and the hourly monitor's.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from diarization_audio.progress import (
    daily,
    first_day,
    hours,
    project,
    rate_rule,
    speech_share,
    statistics_of,
)
from diarization_audio.service.api_models import LegQualityPublic, ProgressPublic, SummaryPublic
from diarization_audio.store.reports import Report
from diarization_audio.store.tracker import MetadataTracker

DAYS_SHOWN = 30
RECENT_FAILURES = 10


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
    erased_conversations: int = Field(
        description="Erased conversations whose tombstone is present, as /statistics."
    )


def dashboard(tracker: MetadataTracker, target_hours: float) -> DashboardPublic:
    """Read the store once and compute every figure of the dashboard."""
    now = tracker.now()
    start = first_day(date.fromisoformat(now[:10]), DAYS_SHOWN)
    return figures(tracker.report(start.isoformat(), RECENT_FAILURES), target_hours, now)


def figures(report: Report, target_hours: float, now: str) -> DashboardPublic:
    """The dashboard from what was read; `now` is an ISO 8601 timestamp in LOG_TIMEZONE."""
    totals = report.totals
    spoken = sum(report.speech["speaker_micros"].values())
    audio_stats = statistics_of(totals, target_hours, now)
    speech_stats = statistics_of(totals, target_hours, now, spoken)
    share = speech_share(spoken, totals.micros)
    today = date.fromisoformat(now[:10])
    days = daily(
        {d.day: d.seconds for d in report.days},
        first_day(today, DAYS_SHOWN),
        today,
        totals.first,
    )
    files = {d.day: d.files for d in report.days}
    rate, rate_days = days[-1].trend, days[-1].trend_days
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
            days=[
                DayPublic(
                    day=d.day.isoformat(),
                    files=files.get(d.day.isoformat(), 0),
                    hours=round(d.hours, 4),
                    trend_hours=round(d.trend, 4),
                )
                for d in days[-DAYS_SHOWN:]
            ],
            rate_days=rate_days,
            rate_rule=rate_rule(rate_days),
        ),
        speakers=[
            SpeakerPublic(
                speaker_label=s.speaker_label,
                files=s.files,
                audio_hours=hours(s.audio_micros),
                speech_hours=hours(s.speech_micros),
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
        erased_conversations=report.erased,
        flags=FlagsPublic(
            flagged_conversations=report.speech["flagged_conversations"],
            by_reason=report.speech["flags"],
            quality=LegQualityPublic(**report.speech["quality"]),
        ),
    )


def _target(progress: dict[str, object], per_day: float, now: datetime) -> TargetPublic:
    return TargetPublic(
        progress=ProgressPublic.model_validate(progress),
        projection=ProjectionPublic(**asdict(project(progress, per_day, now))),
    )
