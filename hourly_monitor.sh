#!/usr/bin/env bash
# Hourly progress check for cron: appends one timestamped line to hourly_log.txt per run.
#
#   crontab -e, then:  0 * * * * TARGET_HOURS=100 /absolute/path/to/hourly_monitor.sh
#
# cli/monitor.py does the work: the progress line (analyze_storage.py's numbers), stamped
# in LOG_TIMEZONE; once the target is met, a "TARGET REACHED" line every run, and on the first
# such run TARGET_REACHED_COMMAND (for example a mail, or `systemctl stop audio-downloader`).
# It reads the same settings (.env beside this file, or the environment) as the service.
#
# Environment (all optional):
#   TARGET_HOURS            hours to collect (default below)
#   TARGET_IN_SPEECH        1 to count TARGET_HOURS in speech hours rather than audio hours
#   TARGET_REACHED_COMMAND  shell command run once when the target is first reached
#   TARGET_REACHED_TIMEOUT  seconds before that command is killed with all it started (600)
#   HOURLY_LOG_FILE         log file (default: hourly_log.txt beside this script)
#   HOURLY_LOCK_FILE        lock that keeps runs from overlapping (default: beside this script)
set -u
case "${1:-}" in
    -h | --help) sed -n '2,16p' "$0" | cut -c3-; exit 0 ;;
esac

TARGET_HOURS="${TARGET_HOURS:-100}"

# cron starts jobs in $HOME with a minimal PATH: work from this script's own folder.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || exit 1
cd "$HERE" || exit 1
LOG_FILE="${HOURLY_LOG_FILE:-$HERE/hourly_log.txt}"
LOCK_FILE="${HOURLY_LOCK_FILE:-$HERE/.hourly_monitor.lock}"
PYTHON="$HERE/.venv/bin/python"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)" || PYTHON=python3

# One run at a time: the lock is held (fd 9, inherited by Python) until the run ends; a run
# that finds it taken only logs that it was skipped.
exec 9>>"$LOCK_FILE"
if ! flock --nonblock 9; then
    exec "$PYTHON" -m diarization_audio.cli.monitor "--log-file=$LOG_FILE" "--skipped=$LOCK_FILE"
fi
SPEECH=()
[ "${TARGET_IN_SPEECH:-0}" = 1 ] && SPEECH=(--speech)
exec "$PYTHON" -m diarization_audio.cli.monitor "--log-file=$LOG_FILE" "--target=$TARGET_HOURS" \
    "--command=${TARGET_REACHED_COMMAND:-}" "--command-timeout=${TARGET_REACHED_TIMEOUT:-600}" \
    "${SPEECH[@]}"
