"""Each error's code and status live on its class: answers, docs/api.md, errors.py, /docs follow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from diarization_audio import errors
from diarization_audio.cli import client as service_client

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_PATHS = {"/", "/health"}


def answered_classes() -> list[type[errors.AudioError]]:
    """Every error class errors.py defines for answers: all but the abstract base."""
    return [
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, errors.AudioError)
        and value is not errors.AudioError
    ]


def documented_error_rows() -> list[tuple[int, str]]:
    """(status, code) of each row of the Errors table in docs/api.md, in order."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[:2] == ["| Status | `error` | When |", "|---|---|---|"]
    rows = []
    for line in lines[2:]:
        match = re.fullmatch(r"\| (\d{3}) \| `([a-z_]+)` \| [^|]+ \|", line)
        assert match, f"unreadable row in the Errors table of docs/api.md: {line}"
        rows.append((int(match[1]), match[2]))
    return rows


def test_documented_error_table_matches_the_error_classes() -> None:
    """Every answered class has a row in docs/api.md with its status and code, and no other row."""
    rows = documented_error_rows()
    assert len(rows) == len(set(rows)), rows
    assert sorted(rows) == sorted((cls.status, cls.code) for cls in answered_classes())


def test_errors_docstring_lists_the_tree_without_statuses() -> None:
    """The tree in errors.py's docstring names exactly its classes and keeps no copy of statuses."""
    doc = errors.__doc__ or ""
    listed = re.findall(r"^[│ ]*[├└]── (\w+)\s*$", doc, flags=re.MULTILINE)
    assert sorted(listed) == sorted(cls.__name__ for cls in answered_classes())
    assert re.search(r"\b[1-5]\d\d\b", doc) is None


def test_codes_are_unique_and_map_back_to_their_class() -> None:
    """No two classes share a code, so the scripts' client turns each answer into its class."""
    codes = [cls.code for cls in answered_classes()]
    assert len(codes) == len(set(codes))
    for cls in answered_classes():
        assert service_client._ERRORS_BY_CODE[cls.code] is cls


def _classes_described(status: int, description: str) -> list[type[errors.AudioError]]:
    """The classes of this status whose descriptions, joined, make this description."""

    def uncapitalized(text: str) -> str:
        return text[:1].lower() + text[1:]

    by_text = {uncapitalized(c.description): c for c in answered_classes() if c.status == status}
    parts = uncapitalized(description).split("; or ")
    assert all(part in by_text for part in parts), (status, description, sorted(by_text))
    return [by_text[part] for part in parts]


def test_openapi_error_answers_are_built_from_the_error_classes(client: TestClient) -> None:
    """Each documented error answer describes classes of that status; 401 guards the data routes."""
    schema = client.get("/openapi.json").json()
    seen: dict[str, dict[int, list[type[errors.AudioError]]]] = {}
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            described = seen.setdefault(f"{method.upper()} {path}", {})
            for status_text, answer in operation["responses"].items():
                ref = answer.get("content", {}).get("application/json", {}).get("schema", {})
                if ref.get("$ref") == "#/components/schemas/ErrorPublic":
                    status = int(status_text)
                    described[status] = _classes_described(status, answer["description"])
            if path in PUBLIC_PATHS:
                assert described == {}, (path, described)
            else:
                assert described[401] == [errors.Unauthorized], path
    assert seen["POST /download/single"][503] == [
        errors.ConversionTimeout,
        errors.Busy,
        errors.ShuttingDown,
    ]
    assert seen["POST /download/dual"][422] == [errors.NotAudio, errors.AudioTooLong]
    assert seen["GET /conversations/{conversation_id}"][404] == [errors.NotFound]


@pytest.mark.parametrize("cls", answered_classes(), ids=lambda cls: cls.__name__)
def test_every_error_answers_its_own_status_and_code(
    client: TestClient, cls: type[errors.AudioError]
) -> None:
    """Raised from a route, each class answers its own status and code, never its log detail."""
    app = client.app
    assert isinstance(app, FastAPI)
    path = f"/test-only/raise/{cls.__name__}"

    async def raise_it() -> None:  # a test-only route: the app's own routes raise these rarely
        raise cls("it went wrong", log_detail="only for the log")

    app.add_api_route(path, raise_it)
    response = client.get(path)
    assert response.status_code == cls.status
    assert response.json() == {"detail": "it went wrong", "error": cls.code}
    assert response.headers.get("Retry-After") == ("5" if issubclass(cls, errors.Busy) else None)
