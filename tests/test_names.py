"""The one name rule: the API's pattern and the scripts' check agree, and the CSV reader that
applies it loads nothing of the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import StringConstraints, TypeAdapter, ValidationError

from diarization_audio.errors import InvalidInput
from diarization_audio.names import NAME_MAX_LENGTH, NAME_PATTERN, validate_name

ROOT = Path(__file__).resolve().parent.parent
SERVER_MODULES = ("numpy", "sqlalchemy", "prometheus_client", "fastapi", "httpx")
SERVER_PACKAGES = ("ingest", "store", "labels", "dataset", "service")
# How the HTTP API applies the pattern to its form fields and path parameters.
API_NAME = TypeAdapter(Annotated[str, StringConstraints(pattern=NAME_PATTERN)])


@pytest.mark.parametrize(
    "name",
    ["a", "call-1", "A_b.c", "_x", "-x", "x" * NAME_MAX_LENGTH, "x" * (NAME_MAX_LENGTH + 1),
     ".hidden", "", "with space", "slash/x", "x\n", "é", "a.b.c-d_e"],
)  # fmt: skip
def test_the_api_pattern_and_the_check_accept_the_same_names(name: str) -> None:
    """A name the HTTP API's pattern accepts is one validate_name accepts, and only those."""
    try:
        API_NAME.validate_python(name)
        by_pattern = True
    except ValidationError:
        by_pattern = False
    try:
        validate_name("conversation_id", name)
        by_check = True
    except InvalidInput:
        by_check = False
    assert by_pattern == by_check


def test_a_refused_name_is_told_the_rule() -> None:
    """The message names the field, the rule and the value, as clients and scripts read it."""
    with pytest.raises(InvalidInput) as caught:
        validate_name("speaker_label", ".agent")
    assert caught.value.message == (
        "speaker_label must be 1-128 characters of letters, digits, '.', '_' or '-' and must "
        "not start with '.'; got '.agent'"
    )


def test_the_conversations_csv_reader_loads_nothing_of_the_server() -> None:
    """Reading a conversations CSV (what the batch script does before it talks HTTP) imports
    the name rule alone: no store, numpy, ffmpeg, metrics or web framework."""
    code = (
        "import json, sys\n"
        "import diarization_audio.cli.conversations_csv\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert [m for m in loaded if m.split(".")[0] in SERVER_MODULES] == []
    ours = [m.split(".")[1] for m in loaded if m.startswith("diarization_audio.")]
    assert [m for m in ours if m in SERVER_PACKAGES] == []
    assert "diarization_audio.metrics" not in loaded
