#!/usr/bin/env bash
# Hourly progress check for cron: appends one timestamped line to hourly_log.txt per run.
#
#   crontab -e, then:  0 * * * * TARGET_HOURS=100 /absolute/path/to/hourly_monitor.sh
#
# All the numbers come from `analyze_storage.py --summary-line --check-target`, which reads the
# same settings (.env beside this file, or the environment) as the service. Once the target is
# met every run also writes a "TARGET REACHED" line, and the first such run executes
# TARGET_REACHED_COMMAND (for example a mail, or `systemctl stop audio-downloader`).
#
# Environment (all optional):
#   TARGET_HOURS            hours to collect (default below)
#   TARGET_REACHED_COMMAND  shell command run once when the target is first reached
#   HOURLY_LOG_FILE         log file (default: hourly_log.txt beside this script)
#   HOURLY_LOCK_FILE        lock that keeps runs from overlapping (default: beside this script)
set -u
case "${1:-}" in
    -h | --help) sed -n '2,15p' "$0" | cut -c3-; exit 0 ;;
esac

TARGET_HOURS="${TARGET_HOURS:-100}"
TARGET_REACHED_COMMAND="${TARGET_REACHED_COMMAND:-}"

# cron starts jobs in $HOME with a minimal PATH: work from this script's own folder.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || exit 1
cd "$HERE" || exit 1
LOG_FILE="${HOURLY_LOG_FILE:-$HERE/hourly_log.txt}"
LOCK_FILE="${HOURLY_LOCK_FILE:-$HERE/.hourly_monitor.lock}"
PYTHON="$HERE/.venv/bin/python"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)" || PYTHON=python3

log() { printf '%s %s\n' "$(date '+%Y-%m-%d %H:%M:%S %z')" "$*" >>"$LOG_FILE"; }

# One run at a time: if the previous one still runs, note it and leave.
exec 9>>"$LOCK_FILE"
if ! flock --nonblock 9; then
    log "SKIPPED: another hourly_monitor.sh run holds $LOCK_FILE"
    exit 0
fi

summary="$("$PYTHON" analyze_storage.py --summary-line --check-target --target "$TARGET_HOURS" 2>&1)"
status=$?
case "$status" in
    3) log "$summary" ;;
    0)
        log "$summary"
        marker="TARGET REACHED: ${TARGET_HOURS} h"
        first_time=yes
        grep --quiet --fixed-strings "$marker" "$LOG_FILE" && first_time=no
        log "$marker"
        if [ "$first_time" = yes ] && [ -n "$TARGET_REACHED_COMMAND" ]; then
            output="$(bash -c "$TARGET_REACHED_COMMAND" 2>&1)"
            log "TARGET_REACHED_COMMAND exited $?${output:+: ${output//$'\n'/ | }}"
        fi
        ;;
    *)
        log "ERROR (exit $status): $summary"
        echo "hourly_monitor.sh: $summary" >&2
        exit 1
        ;;
esac
