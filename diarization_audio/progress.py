"""Progress toward a target of hours: the units, the collection's totals, and the one projection
of the date the target is reached, which the storage report, the dashboard and the hourly
monitor all show.

The projection's rate is the mean of the last RATE_DAYS (7) days' audio hours, today included,
a day with nothing stored counting as zero; a collection younger than that is averaged over
the days since its first file. A week, rather than the last 24 hours, so that one quiet night
or one large batch does not swing the date by weeks. Days are the dates written in the stored
timestamps (LOG_TIMEZONE). The projected date is today plus the remaining hours over that
rate; speech hours are projected at that rate times the speech share so far (speech hours /
audio hours).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from diarization_audio.errors import InvalidInput

MB = 1024 * 1024  # sizes are shown in MiB, as "MB"
HOUR_MICROS = 3.6e9
RATE_DAYS = 7
MAX_TARGET_HOURS = 1e9  # beyond any collection; keeps the arithmetic finite


@dataclass(frozen=True)
class Totals:
    """What progress needs of the whole collection."""

    conversations: int = 0
    micros: int = 0
    size_bytes: int = 0
    first: str | None = None
    last: str | None = None


def hours(micros: float) -> float:
    """Microseconds as hours, to four decimals, as every report shows them."""
    return round(micros / HOUR_MICROS, 4)


def speech_share(speech_micros: float, audio_micros: float) -> float:
    """Speech hours / audio hours (0 before any audio): what speech progress moves at."""
    return speech_micros / audio_micros if audio_micros else 0.0


def check_target(target_hours: float) -> float:
    if not (isinstance(target_hours, (int, float)) and math.isfinite(target_hours)):
        raise InvalidInput(f"target_hours must be a positive number, got {target_hours!r}")
    if not 0 < target_hours <= MAX_TARGET_HOURS:
        raise InvalidInput(
            f"target_hours must be a positive number up to {MAX_TARGET_HOURS:g}, "
            f"got {target_hours!r}"
        )
    return float(target_hours)


def statistics_of(
    totals: Totals, target_hours: float, now: str, speech_micros: int | None = None
) -> dict[str, Any]:
    """The `/statistics` summary (always audio) and progress toward the target.

    With `speech_micros`, progress is counted in speech hours rather than audio hours
    (`progress.measured_in` says which); the summary stays in audio units either way.
    """
    target_hours = check_target(target_hours)
    count = totals.conversations
    seconds = totals.micros / 1_000_000
    size_bytes = totals.size_bytes
    measured = seconds if speech_micros is None else speech_micros / 1_000_000
    done = measured / 3600
    remaining = max(target_hours - done, 0.0)
    average_hours = done / count if count else 0.0
    needed = math.ceil(round(remaining / average_hours, 9)) if average_hours > 0 else 0
    return {
        "summary": {
            "total_conversations": count,
            "total_hours": round(seconds / 3600, 4),
            "total_minutes": round(seconds / 60, 2),
            "total_size_mb": round(size_bytes / MB, 2),
            "total_size_gb": round(size_bytes / MB / 1024, 3),
            "average_duration_minutes": round(seconds / 60 / count, 2) if count else 0.0,
            "average_size_mb": round(size_bytes / MB / count, 2) if count else 0.0,
            "first_download": totals.first,
            "last_download": totals.last,
        },
        "progress": {
            "measured_in": "audio" if speech_micros is None else "speech",
            "target_hours": target_hours,
            "current_hours": round(done, 4),
            "remaining_hours": round(remaining, 4),
            "progress_percentage": round(min(done / target_hours * 100, 100.0), 2),
            "estimated_conversations_needed": needed,
            "target_reached": done >= target_hours,
        },
        "timestamp": now,
    }


# The rate and the projection -------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    """One day's audio hours and the rate as it stood at the end of that day."""

    day: date
    hours: float
    trend: float  # mean hours per day over the `trend_days` days ending this one
    trend_days: int


def first_day(today: date, shown: int) -> date:
    """The first day to read so that the last `shown` days each have a whole trend window."""
    return today - timedelta(days=shown + RATE_DAYS - 2)


def daily(
    seconds_by_day: Mapping[str, float], start: date, today: date, first_file: str | None
) -> list[Day]:
    """Each day from `start` to `today` (days with nothing stored at zero) with its trend.

    `seconds_by_day` maps YYYY-MM-DD to the audio seconds stored that day; days after today
    (a writer's clock ahead) are not read. The last Day's trend is the projection's rate.
    """
    began = date.fromisoformat(first_file[:10]) if first_file else today
    amounts = [
        seconds_by_day.get((start + timedelta(days=n)).isoformat(), 0.0) / 3600
        for n in range((today - start).days + 1)
    ]
    days = []
    for i, amount in enumerate(amounts):
        day = start + timedelta(days=i)
        window = max(1, min(RATE_DAYS, (day - began).days + 1))
        trend = sum(amounts[max(0, i - window + 1) : i + 1]) / window
        days.append(Day(day, amount, trend, window))
    return days


def rate_rule(days: int) -> str:
    """How the rate over `days` days was taken, in words."""
    if days == 1:
        return "today's hours (the collection began today)"
    return f"mean of the last {days} days' hours, today included"


@dataclass(frozen=True)
class Projection:
    state: Literal["reached", "projected", "not moving"]
    hours_per_day: float
    days_to_target: float | None
    projected_date: str | None  # YYYY-MM-DD; None when not moving or beyond the calendar


def project(progress: Mapping[str, Any], per_day: float, now: datetime) -> Projection:
    """When `progress` (from statistics_of) reaches its target at `per_day` hours a day."""
    if progress["target_reached"]:
        return Projection("reached", round(per_day, 4), 0.0, now.date().isoformat())
    if per_day <= 0:
        return Projection("not moving", 0.0, None, None)
    days = progress["remaining_hours"] / per_day
    try:
        when: str | None = (now + timedelta(days=days)).date().isoformat()
    except OverflowError:
        when = None
    finite = round(days, 2) if math.isfinite(days) else None
    return Projection("projected", round(per_day, 4), finite, when)
