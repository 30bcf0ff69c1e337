"""The storage report as text: the page a person reads, and the one line the hourly log keeps."""

from __future__ import annotations

from typing import Any

from diarization_audio.progress import MB

BAR_WIDTH = 40
FLAGS_SHOWN = 20


def render(report: dict[str, Any]) -> str:
    """The report for a person."""
    p, rate, sizes = report["progress"], report["rate"], report["storage"]
    filled = round(BAR_WIDTH * p["progress_percentage"] / 100)
    lines = [
        f"Storage report {report['generated_at']}",
        f"  metadata {report['metadata_store']}, storage {report['storage_directory']}",
        "",
        f"Progress toward {p['target_hours']:g} h of {p['measured_in']}",
        f"  [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {p['progress_percentage']:.2f}%"
        + ("  TARGET REACHED" if p["target_reached"] else ""),
        f"  collected  {_hours(p['current_hours'])} in "
        f"{report['summary']['total_conversations']} conversations",
        f"  erased     {report['erased_conversations']} conversations (refused from now on)",
        f"  remaining  {_hours(p['remaining_hours'])}, about "
        f"{p['estimated_conversations_needed']} more conversations",
        f"  last 24 h  {_hours(rate['hours_last_24h'])} collected",
        f"  rate       {rate['hours_per_day']:.4f} h a day ({rate['rate_rule']}); {_eta(rate, p)}",
        "",
        "Hours by speaker",
    ]
    for name, group in report["speakers"].items():
        lines.append(f"  {name:<9} {_hours(group['hours'])} in {group['files']} files")
    lines += ["", *_speech(report["speech"], report["flagged"])]
    d = report["durations"]
    lines += ["", f"Conversation durations ({d['conversations']} conversations)"]
    if d["conversations"]:
        lines.append(
            "  " + "   ".join(f"{key} {_clock(d[key])}" for key in ("min", "median", "p90", "max"))
        )
    free = "unknown" if sizes["free_bytes"] is None else _size(sizes["free_bytes"])
    lines += [
        "",
        "Storage",
        f"  {sizes['wav_files']} .wav files, {_size(sizes['wav_bytes'])} on disk "
        f"(metadata records {_size(sizes['recorded_bytes'])}); {free} free",
        "",
        *_failures(report["failures"]),
        "",
        "Consistency",
        *_problems(report["consistency"]),
    ]
    return "\n".join(lines)


def _speech(speech: dict[str, Any], flagged: list[dict[str, str]]) -> list[str]:
    lines = [
        f"Speech ({speech['labelled_files']} files labelled, {speech['unlabelled_files']} waiting)",
        f"  speech     {_hours(speech['speech_hours'])}, {speech['speech_share']:.1%} of the "
        f"audio; both talking {_hours(speech['overlap_hours'])}",
    ]
    lines += [f"  {name:<9}  {_hours(hours)}"
              for name, hours in speech["speech_hours_by_speaker"].items()]  # fmt: skip
    quality = speech["quality"]
    median = quality["snr_median_db"]
    unknown = speech["labelled_files"] - quality["snr_measured_legs"]
    lines.append(
        f"  SNR        median {'unknown' if median is None else f'{median:.1f} dB'} over "
        f"{quality['snr_measured_legs']} legs ({unknown} without speech or measured before); "
        f"{speech['flags'].get('low_snr', 0)} conversations low_snr"
    )
    lines.append(
        f"  music      {quality['legs_with_music']} legs with music or tones; "
        f"{speech['flags'].get('music', 0)} conversations music"
    )
    lines += ["", f"Flagged conversations: {speech['flagged_conversations']} (left out of "
              "dataset exports unless asked for)"]  # fmt: skip
    lines += [f"  {reason:<22} {count}" for reason, count in speech["flags"].items()]
    lines += [f"  {f['conversation_id']}: {f['reason']}: {f['detail']}"
              for f in flagged[:FLAGS_SHOWN]]  # fmt: skip
    if len(flagged) > FLAGS_SHOWN:
        lines.append(f"  ... {len(flagged) - FLAGS_SHOWN} more (--json lists every one)")
    return lines


def _failures(failures: dict[str, Any]) -> list[str]:
    lines = [f"Failed attempts: {failures['total']} in all, {failures['last_24_hours']} in the "
             "last 24 h"]  # fmt: skip
    lines += [f"  {code:<22} {count}" for code, count in failures["by_error_last_24_hours"].items()]
    lines += [f"  latest: {f['failed_at']} {f['conversation_id']}_{f['speaker_label']} "
              f"{f['error_code']}: {f['detail']}" for f in failures.get("recent", [])]  # fmt: skip
    return lines


def summary_line(report: dict[str, Any]) -> str:
    """The report in one line, for logs (hourly_monitor.sh)."""
    p, rate, c = report["progress"], report["rate"], report["consistency"]
    problems = sum(len(c[k]) for k in ("missing_files", "size_mismatches", "unknown_files"))
    of_speech = " of speech" if p["measured_in"] == "speech" else ""
    return (
        f"{p['current_hours']:.4f}/{p['target_hours']:g} h{of_speech} "
        f"({p['progress_percentage']:.2f}%), "
        f"{report['summary']['total_conversations']} conversations, "
        f"{p['remaining_hours']:.4f} h to go (~{p['estimated_conversations_needed']} "
        f"conversations), last 24 h +{rate['hours_last_24h']:.4f} h, "
        f"projected {rate['projected_target_date'] or 'unknown'}, "
        f"{report['storage']['wav_files']} files {_size(report['storage']['wav_bytes'])}, "
        f"{problems} consistency problems"
    )


def _problems(check: dict[str, Any]) -> list[str]:
    if check["ok"]:
        return ["  OK: every entry has its file and every .wav file has an entry"]
    lines = [f"  missing  {name} (in metadata, not on disk)" for name in check["missing_files"]]
    lines += [
        f"  size     {m['file']} recorded {m['recorded_bytes']} bytes, on disk {m['actual_bytes']}"
        for m in check["size_mismatches"]
    ]
    lines += [f"  unknown  {name} (on disk, not in metadata)" for name in check["unknown_files"]]
    return [f"  {len(lines)} problems:", *lines]


def _eta(rate: dict[str, Any], progress: dict[str, Any]) -> str:
    if progress["target_reached"]:
        return "target reached"
    if rate["projected_target_date"] is None:
        if rate["days_to_target"] is None and rate["hours_per_day"] <= 0:
            return f"no projection (nothing collected in the last {rate['rate_days']} days)"
        return "no projection (beyond the calendar)"
    days, date = rate["days_to_target"], rate["projected_target_date"]
    return f"at this rate the target is reached in {days:g} days, around {date}"


def _hours(hours: float) -> str:
    return f"{hours:.4f} h ({_clock(hours * 3600)})"


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _size(size: int) -> str:
    return f"{size / MB / 1024:.2f} GB" if size >= 1024 * MB else f"{size / MB:.2f} MB"
