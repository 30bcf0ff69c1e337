"""Batch download: send every conversation of a CSV to the running service's /download/dual.

The service decides what is already stored: a conversation whose files it answers as `exists`
is counted as skipped and nothing is downloaded, so running the same command again resumes
where the last run stopped. A conversation the service refuses with 410 `erased` is counted
as erased, neither failed nor retried (--allow-erased stores it again). Rows that failed are
written to `failed_rows_<timestamp>.csv` with the input's header, ready to be passed back as
the CSV.

With several --server options the rows are spread over those services (of one store): each row
goes to the one with the fewest rows in flight. A service that does not answer at the start is
left out with a warning; one that stops answering during the run leaves the rotation and its
row is sent to another. Only when none is left does the run stop.

Exit codes: 0 every row stored, skipped or erased (or the target was reached); 1 some rows
failed or were invalid; 2 the CSV or an option is unusable; 3 no service could be reached, or
one refused the API key.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tqdm import tqdm

from diarization_audio.cli.client import ServiceClient, ServicePool, ServiceUnreachable
from diarization_audio.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    invalid_settings,
    positive_float,
    positive_int,
    warn,
)
from diarization_audio.cli.conversations_csv import (
    DEFAULT_CSV,
    Columns,
    CsvInput,
    Row,
    read_csv,
    write_failed_rows,
)
from diarization_audio.errors import AudioError, Busy, Erased, Unauthorized
from diarization_audio.settings import get_settings

EXIT_UNREACHABLE = 3
BUSY_ATTEMPTS = 4  # a service with every job slot taken says when to come back
BUSY_MAX_WAIT_SECONDS = 60.0
COLUMNS = Columns()  # the default column names
OUTCOMES = ("succeeded", "partial", "failed", "skipped", "erased")


# The service -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What happened to one row: succeeded, partial, failed, skipped or erased."""

    row: Row
    status: str
    hours_added: float = 0.0
    message: str = ""
    server: str = ""  # the service that answered


def send(client: ServiceClient, row: Row, overwrite: bool, allow_erased: bool = False) -> Outcome:
    """One conversation through the service; raises only when the service itself is unusable."""
    retrying = Retrying(
        retry=retry_if_exception_type(Busy),
        stop=stop_after_attempt(BUSY_ATTEMPTS),
        wait=_busy_wait,
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                body = client.download_dual(
                    row.conversation_id, row.agent_url, row.customer_url, overwrite, row.agent_id,
                    allow_erased=allow_erased,
                )  # fmt: skip
    except (ServiceUnreachable, Unauthorized):
        raise
    except Erased as exc:
        return Outcome(row, "erased", message=exc.message, server=client.base_url)
    except AudioError as exc:
        return Outcome(row, "failed", message=f"{exc.code}: {exc.message}", server=client.base_url)
    return replace(classify(row, body), server=client.base_url)


def _busy_wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    return min(float(exc.retry_after), BUSY_MAX_WAIT_SECONDS) if isinstance(exc, Busy) else 1.0


def classify(row: Row, body: dict[str, Any]) -> Outcome:
    """Turn a /download/dual answer into an Outcome; hours count only files stored just now."""
    items = body.get("downloads", [])
    stored = [item for item in items if item.get("status") == "success"]
    added = sum(float(item.get("duration_seconds") or 0.0) for item in stored) / 3600
    failed = [f"{i['speaker']}: {i.get('error')}" for i in items if i.get("status") == "failed"]
    if any(item.get("error_code") == Erased.code for item in items):
        # Erased while its other leg was stored: the erase removed that one too.
        return Outcome(row, "erased", message="; ".join(failed))
    if failed:
        return Outcome(row, "partial", added, "; ".join(failed))
    if all(item.get("status") == "exists" for item in items):
        return Outcome(row, "skipped")
    return Outcome(row, "succeeded", added)


# The run ---------------------------------------------------------------------------------


@dataclass
class Summary:
    """Counts and rows to retry, kept as rows finish."""

    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    hours_added: float = 0.0
    sent: int = 0
    retry: list[Row] = field(default_factory=list)
    not_sent: list[Row] = field(default_factory=list)
    took: Counter[str] = field(default_factory=Counter)  # rows answered, by service

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        self.hours_added += outcome.hours_added
        self.took[outcome.server] += 1
        if outcome.status in ("failed", "partial"):
            self.retry.append(outcome.row)

    def report(self, invalid: int, services: ServicePool) -> str:
        elapsed = time.monotonic() - self.started
        per_minute = 60 / max(elapsed, 1e-9)
        c = self.counts
        lines = [
            "Summary:",
            f"  succeeded {c['succeeded']}, partial {c['partial']}, failed {c['failed']}, "
            f"skipped {c['skipped']} (already stored), invalid rows {invalid}",
            f"  erased {c['erased']} (refused by the service; --allow-erased stores them again)",
            f"  hours added {self.hours_added:.4f} ({self.hours_added * 60:.1f} min of audio)",
            f"  elapsed {elapsed:.1f} s, throughput {sum(c.values()) * per_minute:.1f} "
            f"conversations/min, {self.hours_added * 60 * per_minute:.2f} min of audio per min",
        ]
        if len(services.clients) > 1:
            left = {url for url, _ in services.dropped}
            took = [
                f"{url} {self.took[url]}" + (" (left the rotation)" if url in left else "")
                for url in (client.base_url for client in services.clients)
            ]
            lines.append(f"  rows per server: {', '.join(took)}")
        return "\n".join(lines)


def run_batch(
    services: ServicePool, rows: list[Row], args: argparse.Namespace, summary: Summary
) -> str | None:
    """Send the rows, `concurrency` at a time; returns why it stopped early, if it did."""
    queue: Iterator[Row] = iter(rows)
    in_flight: dict[Future[Outcome], Row] = {}
    stop: str | None = None
    bar = tqdm(total=len(rows), unit="conv", disable=args.no_progress or None, dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    dropped = len(services.dropped)
    try:
        while True:
            while stop is None and len(in_flight) < args.concurrency:
                row = next(queue, None)
                if row is None:
                    break
                request = partial(
                    send, row=row, overwrite=args.overwrite, allow_erased=args.allow_erased
                )
                in_flight[pool.submit(services.call, request)] = row
                summary.sent += 1
            if not in_flight:
                break
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = future.result()
                del in_flight[future]
                summary.add(outcome)
                if outcome.message:
                    row = outcome.row
                    bar.write(f"  {outcome.status.upper()} line {row.line} {row.conversation_id}: "
                              f"{outcome.message}")  # fmt: skip
                bar.update(1)
                bar.set_postfix(failed=len(summary.retry), hours=f"+{summary.hours_added:.3f}")
            for _, reason in services.dropped[dropped:]:
                left = len(services.live)
                bar.write(f"warning: {reason}; its rows go to the {left} other server(s)",
                          file=sys.stderr)  # fmt: skip
            dropped = len(services.dropped)
            if stop is None and args.stop_at_target and summary.hours_added > 0:
                stop = _target_reached(services, args.stop_at_target)
    except BaseException:
        summary.retry.extend(in_flight.values())  # their outcome is unknown: try them again
        raise
    finally:
        summary.not_sent.extend(queue)
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return stop


def _target_reached(services: ServicePool, target: float) -> str | None:
    progress = services.call(lambda client: client.statistics(target))["progress"]
    reached, hours = progress["target_reached"], progress["current_hours"]
    return f"target of {target:g} h reached (the service has {hours:.4f} h)" if reached else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Download every conversation of a CSV through the running service "
        "(POST /download/dual). Conversations the service already stores are skipped, so the "
        "same command resumes an interrupted batch.",
        epilog="Exit codes: 0 all stored, skipped or erased (or target reached), 1 some rows "
        "failed or were invalid, 2 unusable CSV or settings, 3 no service reachable or API key "
        "refused.",
    )
    add = parser.add_argument
    add("csv", nargs="?", type=Path, default=DEFAULT_CSV, help="default: %(default)s")
    add("--server", action="append", metavar="URL",
        help="service URL (default: http://127.0.0.1:PORT from the settings). Give it several "
        "times to spread the rows over several services of one store; one that does not answer "
        "at the start is left out with a warning, one that stops answering leaves the rotation "
        "and its rows go to the others")  # fmt: skip
    add("--concurrency", type=positive_int, default=4, metavar="N",
        help="conversations in flight at once, over all servers (default 4)")  # fmt: skip
    add("--id-column", default=COLUMNS.conversation_id, metavar="NAME",
        help="default: %(default)s")  # fmt: skip
    add("--agent-column", default=COLUMNS.agent, metavar="NAME", help="default: %(default)s")
    add("--customer-column", metavar="NAME", help=f"optional; default: {COLUMNS.customer}")
    add("--agent-id-column", default=COLUMNS.agent_id, metavar="NAME",
        help="optional column of agent ids (default: %(default)s)")  # fmt: skip
    add("--overwrite", action="store_true", help="download again what is already stored")
    add("--allow-erased", action="store_true",
        help="store conversations that were erased again (by default the service refuses "
        "them and they are counted as erased)")  # fmt: skip
    add("--stop-at-target", type=positive_float, metavar="HOURS",
        help="send no more rows once the service reports HOURS collected")  # fmt: skip
    add("--failed-rows-dir", type=Path, default=Path("."), metavar="DIR",
        help="where failed_rows_<timestamp>.csv goes (default: current directory)")  # fmt: skip
    add("--timeout", type=positive_float, metavar="SECONDS",
        help="longest wait for one conversation (default: DOWNLOAD_DEADLINE_SECONDS + "
        "CONVERT_TIMEOUT_SECONDS)")  # fmt: skip
    add("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = get_settings()
        columns = Columns(
            args.id_column,
            args.agent_column,
            args.customer_column or COLUMNS.customer,
            customer_required=args.customer_column is not None,
            agent_id=args.agent_id_column,
        )
        data = read_csv(args.csv, columns)
    except ValidationError as exc:
        return fail(EXIT_USAGE, invalid_settings(exc))
    except AudioError as exc:
        return fail(EXIT_USAGE, exc.message)
    urls = dict.fromkeys(args.server or [None])  # in the order given, each once
    services = ServicePool(
        [ServiceClient.from_settings(settings, url, args.timeout) for url in urls]
    )
    summary = Summary()
    try:
        return _run(services, data, args, summary)
    except (ServiceUnreachable, Unauthorized) as exc:
        return _stopped(EXIT_UNREACHABLE, exc.message, data, args, summary, services)
    except KeyboardInterrupt:
        return _stopped(130, "interrupted", data, args, summary, services)
    except AudioError as exc:
        return fail(EXIT_FAILED, exc.message)
    finally:
        services.close()


def _run(services: ServicePool, data: CsvInput, args: argparse.Namespace, summary: Summary) -> int:
    services.check()
    for _, reason in services.dropped:
        warn(f"{reason}; going on with the {len(services.live)} other server(s)")
    servers = ", ".join(client.base_url for client in services.live)
    print(f"{len(data.rows)} conversations in {args.csv} -> {servers}")
    for line, reason in data.invalid:
        print(f"  INVALID line {line}: {reason}")
    stop = _target_reached(services, args.stop_at_target) if args.stop_at_target else None
    if stop is None:
        stop = run_batch(services, data.rows, args, summary)
    else:
        summary.not_sent = list(data.rows)
    print(summary.report(len(data.invalid), services))
    if stop:
        print(f"Stopped: {stop}; {len(summary.not_sent)} conversations not sent.")
    if summary.retry:
        path = write_failed_rows(args.failed_rows_dir, data.fieldnames, summary.retry)
        print(f"Failed rows written to {path}")
        retry = _retry_command(path, args)
        return fail(
            EXIT_FAILED, f"{len(summary.retry)} conversations not fully stored; retry: {retry}"
        )
    if data.invalid:
        return fail(EXIT_FAILED, f"{len(data.invalid)} invalid rows in {args.csv} (listed above)")
    return EXIT_OK


def _stopped(
    code: int,
    reason: str,
    data: CsvInput,
    args: argparse.Namespace,
    summary: Summary,
    services: ServicePool,
) -> int:
    """An early end: if anything was sent, keep what is left for a retry; then one line."""
    if summary.sent:
        print(summary.report(len(data.invalid), services))
        path = write_failed_rows(
            args.failed_rows_dir, data.fieldnames, summary.retry + summary.not_sent
        )
        reason += f"; the unfinished conversations are in {path}"
    return fail(code, reason)


def _retry_command(path: Path, args: argparse.Namespace) -> str:
    """This run's command on the failed rows: every option it was given that differs from its
    default (--allow-erased, --overwrite, --timeout ...), quoted as a shell takes it."""
    parts = ["python3", "batch_download_from_csv.py", str(path)]
    defaults = vars(parse_args([]))
    for name, value in vars(args).items():
        if name == "csv" or value == defaults[name]:
            continue
        option = f"--{name.replace('_', '-')}"
        if value is True:
            parts.append(option)
        else:
            for each in value if isinstance(value, list) else [value]:
                parts += [option, str(each)]
    return shlex.join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
