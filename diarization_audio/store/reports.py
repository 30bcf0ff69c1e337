"""Read-only reports on the metadata store: hours per day and in the last 24 hours,
conversation lengths, speakers, speech and quality, failures.

The storage report (cli/report.py), the dashboard and `/statistics` all take their figures from
here, computed in SQL once. The functions run inside the read transactions store/tracker.py
hands them. Each reads an index or a small table rather than every stored file, so
the dashboard costs about the same at 100,000 conversations as at a hundred:

- hours per day sum `files_by_day` (the date part of `downloaded_at` with each duration), over
  the days asked for only;
- conversation lengths come from `conversations_by_duration`: quantiles by offset in the index
  (interpolated between neighbours, as Python's statistics.quantiles(method="inclusive")),
  then one range count per bin;
- speakers come from `speaker_totals`, failures from `failures_by_time`.

Days are the dates written in the stored timestamps, i.e. in the LOG_TIMEZONE of the process
that recorded each file.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from diarization_audio.progress import Totals, hours, speech_share
from diarization_audio.store.erasure import erased_count
from diarization_audio.store.schema import (
    conversation_flags,
    conversations,
    day_of,
    failures,
    files,
    speaker_totals,
    speech,
    store_info,
)

MAX_BINS = 20
# Bin widths a person reads at a glance, in seconds: 1 s ... 30 min, then whole hours.
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
# The regular bins span the lengths up to this quantile; longer outliers share one last bin,
# so a single all-day call does not squeeze every other conversation into the first bar.
SPAN_QUANTILE = 0.99
LAST_DAY_SECONDS = 24 * 3600  # "the last 24 hours" of failures and of collected audio


@dataclass(frozen=True)
class DayTotal:
    """What was stored on one day (the date of `downloaded_at`)."""

    day: str
    files: int
    seconds: float


@dataclass(frozen=True)
class SpeakerTotal:
    speaker_label: str
    files: int
    audio_micros: int
    speech_micros: int


@dataclass(frozen=True)
class LengthBin:
    """Conversations whose length (all their files together) is in [start, end); end None:
    at least start."""

    start_seconds: float
    end_seconds: float | None
    conversations: int


@dataclass(frozen=True)
class Lengths:
    conversations: int
    quantiles: dict[str, float]  # min, median, p90, max, in seconds
    bins: list[LengthBin]


@dataclass(frozen=True)
class Report:
    """Everything the dashboard and the storage report show, read from one view of the store."""

    totals: Totals
    speech: dict[str, Any]  # speech_summary
    days: list[DayTotal]
    last_day_micros: int  # audio stored in the last 24 hours
    speakers: list[SpeakerTotal]
    lengths: Lengths
    failures: dict[str, Any]
    erased: int  # erased conversations whose tombstone is present


def report(conn: Connection, totals: Totals, since_day: str, now: float, recent: int) -> Report:
    """The figures: days from `since_day`, the last 24 hours before the epoch `now`."""
    return Report(
        totals=totals,
        speech=speech_summary(conn),
        days=hours_per_day(conn, since_day),
        last_day_micros=audio_between(conn, now - LAST_DAY_SECONDS, now),
        speakers=speakers(conn),
        lengths=lengths(conn, totals.conversations),
        failures=failure_summary(conn, now - LAST_DAY_SECONDS, recent),
        erased=erased_count(conn),
    )


def hours_per_day(conn: Connection, since_day: str) -> list[DayTotal]:
    """Files and seconds stored per day from `since_day` (YYYY-MM-DD) on, by day."""
    day = day_of(files.c.downloaded_at)
    rows = conn.execute(
        select(day, func.count(), func.sum(files.c.duration_seconds))
        .where(day >= since_day)
        .group_by(day)
        .order_by(day)
    )
    return [DayTotal(str(d), int(count), float(seconds or 0.0)) for d, count, seconds in rows]


def audio_between(conn: Connection, start: float, end: float) -> int:
    """Microseconds of audio downloaded between two epochs (both included)."""
    epoch = files.c.downloaded_epoch
    seconds = conn.execute(
        select(func.coalesce(func.sum(files.c.duration_seconds), 0.0)).where(
            epoch >= start, epoch <= end
        )
    ).scalar_one()
    return round(float(seconds) * 1_000_000)


def speakers(conn: Connection) -> list[SpeakerTotal]:
    """Every speaker label with a stored file, most audio first."""
    t = speaker_totals.c
    rows = conn.execute(
        select(t.speaker_label, t.files, t.duration_micros, t.speech_micros)
        .where(t.files > 0)
        .order_by(t.duration_micros.desc(), t.speaker_label)
    )
    return [SpeakerTotal(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]


def _length_at(conn: Connection, rank: int) -> int:
    """The `rank`-th shortest conversation's length in microseconds (0 = the shortest)."""
    d = conversations.c.duration_micros
    return int(conn.execute(select(d).order_by(d).limit(1).offset(rank)).scalar_one())


def _quantile(conn: Connection, count: int, q: float) -> float:
    """The q-quantile of the `count` lengths, interpolated between the two nearest ranks."""
    position = q * (count - 1)
    low = math.floor(position)
    below = _length_at(conn, low)
    if position == low:
        return below
    return below + (position - low) * (_length_at(conn, low + 1) - below)


def nice_step(low: float, high: float, max_bins: int = MAX_BINS) -> float:
    """The smallest width of NICE_STEPS whose bins cover [low, high] in at most `max_bins`."""
    for step in NICE_STEPS:
        if math.floor(high / step) - math.floor(low / step) + 1 <= max_bins:
            return float(step)
    return float(math.ceil(high / max_bins / 3600) * 3600)  # whole hours past six-hour bins


def bin_edges(low: float, high: float) -> list[float]:
    """Edges in seconds of even bins [edge, next edge) that hold every length in [low, high]."""
    step = nice_step(low, high)
    first, last = math.floor(low / step), math.floor(high / step) + 1
    return [n * step for n in range(first, last + 1)]


def lengths(conn: Connection, count: int) -> Lengths:
    """The distribution of conversation lengths among `count` conversations."""
    if count == 0:
        return Lengths(0, {}, [])
    at = {
        name: _quantile(conn, count, q)
        for name, q in (("min", 0.0), ("median", 0.5), ("p90", 0.9), ("span", SPAN_QUANTILE))
    }
    at["max"] = _length_at(conn, count - 1)
    seconds = {name: value / 1e6 for name, value in at.items()}
    edges = bin_edges(seconds["min"], seconds["span"])
    d = conversations.c.duration_micros
    ranges: list[tuple[float, float | None]] = list(itertools.pairwise(edges))
    if seconds["max"] >= edges[-1]:
        ranges.append((edges[-1], None))
    counts = conn.execute(
        select(
            *(
                select(func.count())
                .where(d >= round(lo * 1e6), *(() if hi is None else (d < round(hi * 1e6),)))
                .scalar_subquery()
                for lo, hi in ranges
            )
        )
    ).one()
    del seconds["span"]
    return Lengths(
        count,
        {k: round(v, 3) for k, v in seconds.items()},
        [LengthBin(lo, hi, int(n)) for (lo, hi), n in zip(ranges, counts, strict=True)],
    )


def failure_summary(conn: Connection, since_epoch: float, recent: int = 0) -> dict[str, Any]:
    """Failed attempts: in all, since `since_epoch` by error code, and the latest `recent`."""
    total = conn.execute(select(func.count()).select_from(failures)).scalar_one()
    by_code: dict[str, int] = dict(
        conn.execute(
            select(failures.c.error_code, func.count())
            .where(failures.c.failed_epoch >= since_epoch)
            .group_by(failures.c.error_code)
            .order_by(failures.c.error_code)
        ).all()
    )
    summary: dict[str, Any] = {
        "total": total,
        "last_24_hours": sum(by_code.values()),
        "by_error_last_24_hours": by_code,
    }
    if recent:
        latest = conn.execute(select(failures).order_by(failures.c.id.desc()).limit(recent))
        summary["recent"] = [
            {k: v for k, v in row.items() if k not in ("id", "failed_epoch")}
            for row in latest.mappings()
        ]
    return summary


# Speech and quality ---------------------------------------------------------------------


def speech_summary(conn: Connection) -> dict[str, Any]:
    """Speech and overlap totals per speaker and overall, labelled files, flags by reason."""
    per_speaker = {
        row.speaker_label: int(row.speech_micros)
        for row in conn.execute(
            select(speaker_totals.c.speaker_label, speaker_totals.c.speech_micros)
        )
    }
    overlap = int(conn.execute(select(store_info.c.overlap_micros)).scalar() or 0)
    labelled = int(conn.execute(select(func.count()).select_from(speech)).scalar_one())
    stored = int(
        conn.execute(select(func.coalesce(func.sum(speaker_totals.c.files), 0))).scalar_one()
    )
    flags: dict[str, int] = dict(
        conn.execute(
            select(conversation_flags.c.reason, func.count()).group_by(conversation_flags.c.reason)
        ).all()
    )
    flagged = int(
        conn.execute(
            select(func.count(func.distinct(conversation_flags.c.conversation_id)))
        ).scalar_one()
    )
    return {
        "speaker_micros": per_speaker,
        "overlap_micros": overlap,
        "labelled_files": labelled,
        "unlabelled_files": max(stored - labelled, 0),
        "flags": {reason: int(count) for reason, count in sorted(flags.items())},
        "flagged_conversations": flagged,
        "quality": _quality_summary(conn),
    }


def _quality_summary(conn: Connection) -> dict[str, Any]:
    """Legs with each measure, the median SNR (read from its index) and legs with music."""
    s = speech.c
    measured_snr, measured_music, with_music = conn.execute(
        select(
            func.count(s.snr_db),
            func.count(s.music_share),
            func.count().filter(s.music_share > 0),
        )
    ).one()
    median = None
    if measured_snr:
        middle = conn.execute(
            select(s.snr_db)
            .where(s.snr_db.is_not(None))
            .order_by(s.snr_db)
            .offset((measured_snr - 1) // 2)
            .limit(2 - measured_snr % 2)
        ).scalars()
        values = list(middle)
        median = round(sum(values) / len(values), 1)
    return {
        "snr_measured_legs": int(measured_snr),
        "snr_median_db": median,
        "music_measured_legs": int(measured_music),
        "legs_with_music": int(with_music),
    }


def speech_statistics(summary: Mapping[str, Any], audio_micros: int) -> dict[str, Any]:
    """The `speech` section of `/statistics`: hours of speech beside the hours of audio."""
    per_speaker = summary["speaker_micros"]
    total = sum(per_speaker.values())
    return {
        "labelled_files": summary["labelled_files"],
        "unlabelled_files": summary["unlabelled_files"],
        "speech_hours": hours(total),
        "speech_hours_by_speaker": {k: hours(v) for k, v in sorted(per_speaker.items())},
        "overlap_hours": hours(summary["overlap_micros"]),
        "speech_share": round(speech_share(total, audio_micros), 4),
        "flagged_conversations": summary["flagged_conversations"],
        "flags": summary["flags"],
        "quality": summary["quality"],
    }
