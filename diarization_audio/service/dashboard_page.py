"""The dashboard as one HTML page with its charts drawn as inline SVG: no script, no CDN.

Every text that comes from the store (conversation ids, speaker labels, error codes and
details, URLs, flag reasons) is escaped here, in attributes and in text alike. The page
reloads itself every REFRESH_SECONDS. Chart elements carry their numbers in `data-*`
attributes, so a test can read what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from diarization_audio.service.dashboard_figures import (
    DashboardPublic,
    DayPublic,
    LengthBinPublic,
    TargetPublic,
)

REFRESH_SECONDS = 60
DETAIL_CHARS = 200
PAGE_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:baseline}
header h1{font-size:18px;margin:0}header span{color:#b8c0cc}
main{max-width:1360px;margin:0 auto;padding:16px 24px;display:grid;gap:16px;
grid-template-columns:repeat(auto-fit,minmax(560px,1fr))}
section{background:#fff;border-radius:6px;padding:12px 16px;box-shadow:0 1px 2px #0002}
section.wide{grid-column:1/-1}h2{font-size:15px;margin:0 0 8px}
.tiles{display:flex;flex-wrap:wrap;gap:24px}.tile b{display:block;font-size:22px}
.tile span{color:#5b6473}svg{width:100%;height:auto;display:block}
svg text{font:11px system-ui,sans-serif;fill:#3b4250}p.note{color:#5b6473;margin:4px 0 0}
table{border-collapse:collapse;width:100%;font-size:12px}
td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #e3e6ea;vertical-align:top}
td.detail{word-break:break-word}.none{color:#5b6473}
form{max-width:420px;margin:80px auto;background:#fff;padding:24px;border-radius:6px}
input{font:inherit;padding:6px;width:100%;box-sizing:border-box;margin:8px 0}
"""
AUDIO, SPEECH, TREND, FAIL, FLAG = "#4f7fd1", "#2e9e6a", "#d9822b", "#c94a4a", "#8a63c9"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def hours_text(hours: float) -> str:
    """Hours as a person reads them: 1,234.5 h, 12.35 h, 0.0123 h."""
    if hours >= 100:
        return f"{hours:,.1f} h"
    return f"{hours:.2f} h" if hours >= 1 else f"{hours:.4f} h"


def duration_text(seconds: float) -> str:
    """A length as h:mm:ss or m:ss."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def nice_step(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= value * (1 - 1e-12))


def axis_ticks(highest: float) -> list[float]:
    """Round values from 0 to at least `highest`, at most five of them."""
    step = nice_step(highest / 4)
    return (
        [step * i for i in range(math.ceil(highest / step - 1e-9) + 1)]
        if highest > 0
        else [0.0, 1.0]
    )


def _number(value: float) -> str:
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.3g}"


# Pages ------------------------------------------------------------------------------------


def page(data: DashboardPublic, target_hours: float) -> str:
    """The whole dashboard."""
    s = data.summary
    last = _e(s.last_download or "never")
    tiles = [
        ("conversations", f"{s.total_conversations:,}", s.total_conversations),
        ("audio-hours", hours_text(s.total_hours), s.total_hours),
        ("speech-hours", hours_text(data.speech.progress.current_hours),
         data.speech.progress.current_hours),
        ("speech-share", f"{data.speech_share:.1%}", data.speech_share),
        ("failures-24h", f"{data.failures.last_24_hours:,}", data.failures.last_24_hours),
        ("size-gb", f"{s.total_size_gb:,.2f} GB", s.total_size_gb),
        ("erased", f"{data.erased_conversations:,}", data.erased_conversations),
    ]  # fmt: skip
    names = {"conversations": "conversations", "audio-hours": "audio", "speech-hours": "speech",
             "speech-share": "speech share", "failures-24h": "failures, last 24 h",
             "size-gb": "stored", "erased": "erased conversations"}  # fmt: skip
    tile_html = "".join(
        f'<div class="tile"><b id="{key}" data-value="{value}">{_e(text)}</b>'
        f"<span>{names[key]}</span></div>"
        for key, text, value in tiles
    )
    daily = data.per_day
    sections = [
        _section("Collected", f'<div class="tiles">{tile_html}</div>'
                 f'<p class="note">Last file stored {last}.</p>', wide=True),
        _section(f"Progress toward {target_hours:g} h", _progress("audio", data.audio, AUDIO)
                 + _progress("speech", data.speech, SPEECH)
                 + f'<p class="note">Projected date: today plus the remaining hours over the '
                 f"{daily.rate_rule}; speech at that rate times the speech share so far. "
                 "&ldquo;Not moving&rdquo; when nothing was stored in those days.</p>"),
        _section(f"Audio hours per day, last {len(daily.days)} days", _per_day(daily.days)
                 + '<p class="note">Bars: audio hours stored each day (dates in the store\'s '
                 f"time zone). Line: the trend, the mean of the {daily.rate_days} days ending "
                 "each day.</p>"),
        _section("Hours per speaker label", _speakers(data)),
        _section("Conversation lengths", _lengths(data)),
        _section("Failures by error code, last 24 hours",
                 _hbars("failures-by-code", sorted(data.failures.by_error_last_24_hours.items(),
                        key=lambda kv: (-kv[1], kv[0])), FAIL, "no failures in the last 24 hours")
                 + f'<p class="note">{data.failures.total:,} failed attempts in all.</p>'),
        _section("Quality flags by reason",
                 _hbars("flags-by-reason", sorted(data.flags.by_reason.items(),
                        key=lambda kv: (-kv[1], kv[0])), FLAG, "no conversation flagged")
                 + f'<p class="note">{data.flags.flagged_conversations:,} conversations flagged; '
                 f"{data.labelled_files:,} files labelled, {data.unlabelled_files:,} waiting "
                 "for labels.</p>" + _leg_quality(data)),
        _section("Most recent failures", _recent_failures(data), wide=True),
    ]  # fmt: skip
    return _document(
        "Collection dashboard",
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<header><h1>Diarization audio collection</h1><span>updated {_e(data.generated_at)}"
        f" &middot; refreshes every {REFRESH_SECONDS} s &middot; "
        '<a style="color:#b8c0cc" href="dashboard/data">JSON</a></span></header>'
        f"<main>{''.join(sections)}</main>",
    )


def key_form(target_hours: float | None, wrong: bool) -> str:
    """The page asking for the API key (shown with 401)."""
    keep = (
        f'<input type="hidden" name="target_hours" value="{target_hours:g}">'
        if target_hours is not None
        else ""
    )
    return _document(
        "Dashboard: API key",
        "",
        '<form method="post" action="dashboard"><h2>Collection dashboard</h2>'
        + ("<p><b>That key is not the service's API key.</b></p>" if wrong else "")
        + "<p>This service needs its API key. It is kept for this browser session only.</p>"
        '<label>API key<input type="password" name="key" autofocus required></label>'
        f'{keep}<input type="submit" value="Open the dashboard"></form>',
    )


def _document(title: str, head: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{head}<title>{_e(title)}</title><style>{PAGE_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _leg_quality(data: DashboardPublic) -> str:
    """What a training team filters on: low_snr and music counts (shown even at zero) and the
    legs' median SNR."""
    flags, quality = data.flags.by_reason, data.flags.quality
    median = quality.snr_median_db
    snr = "unknown" if median is None else f"{median:.1f} dB"
    return (
        f'<p class="note" id="leg-quality"><span id="flag-low-snr" '
        f'data-value="{flags.get("low_snr", 0)}">{flags.get("low_snr", 0):,} low_snr</span>, '
        f'<span id="flag-music" data-value="{flags.get("music", 0)}">{flags.get("music", 0):,}'
        f" music</span> conversations; median SNR "
        f'<span id="snr-median" data-value="{"" if median is None else median}">{snr}</span> over '
        f"{quality.snr_measured_legs:,} legs, {quality.legs_with_music:,} legs with music or "
        "tones.</p>"
    )


def _section(title: str, body: str, wide: bool = False) -> str:
    css = ' class="wide"' if wide else ""
    return f"<section{css}><h2>{_e(title)}</h2>{body}</section>"


# Charts -----------------------------------------------------------------------------------


def _progress(measure: str, target: TargetPublic, colour: str) -> str:
    p, projection = target.progress, target.projection
    width = 600 * min(p.progress_percentage, 100) / 100
    if projection.state == "reached":
        when = "target reached"
    elif projection.state == "not moving":
        when = "not moving: nothing collected in the rate's window"
    else:
        date = projection.projected_date or "beyond the calendar"
        when = f"{hours_text(projection.hours_per_day)}/day, reached about {date}"
    label = f"{measure}: {hours_text(p.current_hours)} of {p.target_hours:g} h"
    return (
        f'<svg id="progress-{measure}" viewBox="0 0 600 64" role="img" '
        f'data-percent="{p.progress_percentage}" data-current-hours="{p.current_hours}" '
        f'data-state="{projection.state}" data-date="{_e(projection.projected_date or "")}">'
        f"<title>{_e(label)}</title>"
        f'<text x="0" y="12">{_e(label)} ({p.progress_percentage:.2f}%)</text>'
        f'<text x="600" y="12" text-anchor="end">{_e(when)}</text>'
        '<rect x="0" y="18" width="600" height="22" rx="3" fill="#e3e6ea"/>'
        f'<rect class="fill" x="0" y="18" width="{width:.1f}" height="22" rx="3" '
        f'fill="{colour}"/><text x="0" y="56">remaining {hours_text(p.remaining_hours)}, '
        f"about {p.estimated_conversations_needed:,} more conversations</text></svg>"
    )


def _axis(ticks: Sequence[float], left: float, width: float, y0: float, height: float) -> str:
    """Horizontal grid lines with their values."""
    parts = []
    for value in ticks:
        y = y0 - height * value / ticks[-1]
        parts.append(
            f'<line x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ea"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_number(value)}</text>'
        )
    return "".join(parts)


def _per_day(days: Sequence[DayPublic]) -> str:
    left, top, width, height = 44.0, 8.0, 586.0, 170.0
    y0 = top + height
    ticks = axis_ticks(max([d.hours for d in days] + [d.trend_hours for d in days] + [0]))
    ceiling = ticks[-1]
    step = width / max(len(days), 1)
    bars, points, labels = [], [], []
    for i, d in enumerate(days):
        x = left + i * step
        h = height * d.hours / ceiling
        bars.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{y0 - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{AUDIO}" data-day="{d.day}" data-hours="{d.hours}" '
            f'data-files="{d.files}"><title>{d.day}: {hours_text(d.hours)} in {d.files} files'
            f"</title></rect>"
        )
        points.append(f"{x + step / 2:.1f},{y0 - height * d.trend_hours / ceiling:.1f}")
        if (len(days) - 1 - i) % 5 == 0:
            labels.append(
                f'<text x="{x + step / 2:.1f}" y="{y0 + 14}" text-anchor="middle">{d.day[5:]}'
                "</text>"
            )
    return (
        '<svg id="per-day" viewBox="0 0 640 200" role="img"><title>Hours per day</title>'
        f"{_axis(ticks, left, width, y0, height)}{''.join(bars)}"
        f'<polyline class="trend" points="{" ".join(points)}" fill="none" stroke="{TREND}" '
        f'stroke-width="2"/>{"".join(labels)}</svg>'
    )


def _hbars(
    chart_id: str,
    rows: Sequence[tuple[str, float]],
    colour: str,
    empty: str,
    overlay: Sequence[float] | None = None,
    text: Sequence[str] | None = None,
) -> str:
    """Horizontal bars, one row per (label, value); `overlay` draws a second, darker value."""
    if not rows:
        return f'<p class="none" id="{chart_id}">{_e(empty)}</p>'
    ceiling = max(value for _, value in rows) or 1.0
    row_height, left, width = 22, 130, 250
    parts = []
    for i, (label, value) in enumerate(rows):
        y = i * row_height
        shown = text[i] if text else f"{value:,g}"
        parts.append(
            f'<g class="row" data-label="{_e(label)}" data-value="{value}">'
            f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{_e(label[:24])}</text>'
            f'<rect x="{left}" y="{y + 3}" width="{width * value / ceiling:.1f}" height="16" '
            f'fill="{colour}" opacity="{0.45 if overlay else 1}"/>'
        )
        if overlay:
            parts.append(
                f'<rect class="overlay" x="{left}" y="{y + 3}" '
                f'width="{width * overlay[i] / ceiling:.1f}" height="16" fill="{colour}"/>'
            )
        parts.append(f'<text x="{left + width + 6}" y="{y + 15}">{_e(shown)}</text></g>')
    return (
        f'<svg id="{chart_id}" viewBox="0 0 640 {len(rows) * row_height + 4}" role="img">'
        f"{''.join(parts)}</svg>"
    )


def _speakers(data: DashboardPublic) -> str:
    rows = [(s.speaker_label, s.audio_hours) for s in data.speakers]
    text = [
        f"{hours_text(s.audio_hours)} audio, {hours_text(s.speech_hours)} speech, {s.files} files"
        for s in data.speakers
    ]
    chart = _hbars(
        "speakers", rows, SPEECH, "nothing stored yet", [s.speech_hours for s in data.speakers],
        text,
    )  # fmt: skip
    return chart + '<p class="note">Light: audio hours; dark: speech hours within them.</p>'


def _bin_label(b: LengthBinPublic) -> str:
    if b.end_seconds is None:
        return f"{duration_text(b.start_seconds)}+"
    return duration_text(b.start_seconds)


def _lengths(data: DashboardPublic) -> str:
    lengths = data.lengths
    if not lengths.bins:
        return '<p class="none" id="lengths">nothing stored yet</p>'
    left, top, width, height = 44.0, 8.0, 586.0, 150.0
    y0 = top + height
    ticks = axis_ticks(max(b.conversations for b in lengths.bins))
    ceiling = ticks[-1]
    step = width / len(lengths.bins)
    parts = []
    for i, b in enumerate(lengths.bins):
        x = left + i * step
        h = height * b.conversations / ceiling
        end = "longer" if b.end_seconds is None else duration_text(b.end_seconds)
        parts.append(
            f'<rect class="bin" x="{x + 1:.1f}" y="{y0 - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{AUDIO}" data-start="{b.start_seconds}" '
            f'data-end="{"" if b.end_seconds is None else b.end_seconds}" '
            f'data-count="{b.conversations}"><title>{duration_text(b.start_seconds)} to {end}: '
            f"{b.conversations:,} conversations</title></rect>"
        )
        if i % max(1, math.ceil(len(lengths.bins) / 8)) == 0 or b.end_seconds is None:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{y0 + 14}" text-anchor="middle">'
                f"{_bin_label(b)}</text>"
            )
    q = [("min", lengths.min_seconds), ("median", lengths.median_seconds),
         ("90th percentile", lengths.p90_seconds), ("max", lengths.max_seconds)]  # fmt: skip
    summary = ", ".join(f"{name} {duration_text(v)}" for name, v in q if v is not None)
    return (
        '<svg id="lengths" viewBox="0 0 640 190" role="img"><title>Conversation lengths</title>'
        f"{_axis(ticks, left, width, y0, height)}{''.join(parts)}"
        f'<text x="{left}" y="{y0 + 28}">conversations by length (all files together; '
        "m:ss)</text></svg>"
        f'<p class="note">{lengths.conversations:,} conversations: {summary}.</p>'
    )


def _recent_failures(data: DashboardPublic) -> str:
    if not data.failures.recent:
        return '<p class="none" id="recent-failures">no failure recorded</p>'
    rows = "".join(
        f"<tr><td>{_e(f.failed_at)}</td><td>{_e(f.conversation_id)}</td>"
        f"<td>{_e(f.speaker_label)}</td><td>{_e(f.error_code)}</td>"
        f'<td class="detail">{_e(f.detail[:DETAIL_CHARS])}</td>'
        f'<td class="detail">{_e(f.url[:DETAIL_CHARS])}</td></tr>'
        for f in data.failures.recent
    )
    return (
        '<table id="recent-failures"><thead><tr><th>when</th><th>conversation</th>'
        "<th>speaker</th><th>error</th><th>detail</th><th>URL</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
