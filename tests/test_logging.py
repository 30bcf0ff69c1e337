"""Logging: one rotating file shared safely by several processes, times in LOG_TIMEZONE."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

from support.stores import make_settings

from diarization_audio.logs import BACKUP_COUNT, LOG_FILENAME, MAX_BYTES, setup_logging


def _log_a_lot(log_dir: str, worker: int) -> None:
    setup_logging(make_settings(Path(log_dir).parent, log_dir=Path(log_dir)), console=False)
    line = "x" * 1000
    for n in range(10_000):
        logging.getLogger("load").info("worker=%d n=%d %s", worker, n, line)


def test_rotation_keeps_three_backups_of_five_mb_across_processes(tmp_path: Path) -> None:
    """Two processes writing 11 MB each rotate at 5 MB, keep 3 backups, and write whole lines."""
    log_dir = tmp_path / "logs"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_log_a_lot, args=(str(log_dir), w)) for w in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    logs = sorted(p.name for p in log_dir.iterdir() if p.name.startswith(LOG_FILENAME))
    assert logs == [LOG_FILENAME] + [f"{LOG_FILENAME}.{n}" for n in range(1, BACKUP_COUNT + 1)]
    for name in logs:
        size = (log_dir / name).stat().st_size
        assert size <= MAX_BYTES + 2000, (name, size)
    newest = (log_dir / LOG_FILENAME).read_text().splitlines()
    # Every line is whole: timestamp with offset, level, pid, logger, message.
    assert all(" INFO [" in line and "+05:30" in line[:40] for line in newest)


def test_setup_twice_does_not_duplicate_lines(tmp_path: Path) -> None:
    """Configuring logging again (a second app in one process) writes each line once."""
    settings = make_settings(tmp_path)
    setup_logging(settings, console=False)
    path = setup_logging(settings, console=False)
    logging.getLogger("once").warning("only once please")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert path.read_text().count("only once please") == 1
