"""The conversations CSV: its columns, the row rules, reading it, and writing rows back out.

One conversation per row: an id, the agent's audio URL and, optionally, the customer's and the
agent's id (an `agent_id` column; a dataset export keeps one agent's calls in one split). A row
with a blank or malformed id or URL, or an id already seen, is invalid and reported by its line
number; the others are kept with their record exactly as read, so failed rows can be written
back in the input's own format.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from diarization_audio.atomic import write_atomically
from diarization_audio.errors import InvalidInput
from diarization_audio.names import validate_name, validate_url

DEFAULT_CSV = (
    Path(__file__).resolve().parents[2] / "examples" / "conversations.csv"
)  # the checkout's


@dataclass(frozen=True)
class Columns:
    conversation_id: str = "conversation_id"
    agent: str = "agent_audio_url"
    customer: str = "customer_audio_url"
    customer_required: bool = False
    agent_id: str = "agent_id"


@dataclass(frozen=True)
class Row:
    """One valid conversation of the CSV, with the record as read for failed_rows_*.csv."""

    line: int
    conversation_id: str
    agent_url: str
    customer_url: str | None
    record: dict[str, str]
    agent_id: str | None = None


@dataclass(frozen=True)
class CsvInput:
    fieldnames: list[str]
    rows: list[Row]
    invalid: list[tuple[int, str]]  # (line number, reason)


def read_csv(path: Path, columns: Columns) -> CsvInput:
    """Every row of the CSV, valid ones as Rows and invalid ones as (line, reason)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            fieldnames = list(reader.fieldnames or [])
            _check_header(path, fieldnames, columns)
            rows: list[Row] = []
            invalid: list[tuple[int, str]] = []
            seen: dict[str, int] = {}
            for record in reader:
                line = reader.line_num
                try:
                    row = _row(line, record, fieldnames, columns)
                except InvalidInput as exc:
                    invalid.append((line, exc.message))
                    continue
                first = seen.setdefault(row.conversation_id, line)
                if first != line:
                    invalid.append((line, f"{row.conversation_id} repeats line {first}"))
                    continue
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"cannot read CSV {path}: {exc}") from exc
    return CsvInput(fieldnames, rows, invalid)


def read_ids(path: Path, column: str = "conversation_id") -> list[str]:
    """The conversation ids of a CSV, in order and each once: its `column` when the header has
    one (a conversations CSV works as it is), else the first cell of every line. A malformed
    id is refused with its line number, before any is used."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"cannot read CSV {path}: {exc}") from exc
    header = [cell.strip() for cell in lines[0]] if lines else []
    at, first = (header.index(column), 2) if column in header else (0, 1)
    ids: dict[str, None] = {}
    for number, cells in enumerate(lines[first - 1 :], start=first):
        value = cells[at].strip() if len(cells) > at else ""
        if not value:
            continue
        try:
            ids[validate_name("conversation_id", value)] = None
        except InvalidInput as exc:
            raise InvalidInput(f"{path} line {number}: {exc.message}") from exc
    return list(ids)


def _check_header(path: Path, fieldnames: list[str], columns: Columns) -> None:
    required = [columns.conversation_id, columns.agent]
    if columns.customer_required:
        required.append(columns.customer)
    missing = [name for name in required if name not in fieldnames]
    if missing:
        raise InvalidInput(
            f"CSV {path} has no column {', '.join(map(repr, missing))} (its header is "
            f"{', '.join(fieldnames) or 'empty'}); name the columns with --id-column, "
            f"--agent-column and --customer-column"
        )


def _row(line: int, record: dict[str | Any, Any], fieldnames: list[str], cols: Columns) -> Row:
    def cell(name: str) -> str:
        value = record.get(name)
        return value.strip() if isinstance(value, str) else ""

    conversation_id = cell(cols.conversation_id)
    if not conversation_id:
        raise InvalidInput(f"{cols.conversation_id} is blank")
    validate_name(cols.conversation_id, conversation_id)
    agent_url = cell(cols.agent)
    if not agent_url:
        raise InvalidInput(f"{cols.agent} is blank")
    validate_url(cols.agent, agent_url)
    customer_url = cell(cols.customer) or None
    if customer_url is not None:
        validate_url(cols.customer, customer_url)
    agent_id = cell(cols.agent_id) or None
    if agent_id is not None:
        validate_name(cols.agent_id, agent_id)
    kept = {name: record.get(name) or "" for name in fieldnames}
    return Row(line, conversation_id, agent_url, customer_url, kept, agent_id)


def write_failed_rows(directory: Path, fieldnames: list[str], rows: Sequence[Row]) -> Path:
    """The rows as they were read, under the input's header, in a new timestamped file.

    The file appears whole or not at all (written under a temporary name, then linked into
    place), and never replaces another run's: two runs in one second get distinct names."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")

    def write(handle: IO[str]) -> None:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r.line):
            writer.writerow(row.record)

    for suffix in itertools.count(1):
        path = directory / f"failed_rows_{stamp}{f'_{suffix}' if suffix > 1 else ''}.csv"
        try:
            write_atomically(path, write, newline="", overwrite=False)
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")  # itertools.count never ends
