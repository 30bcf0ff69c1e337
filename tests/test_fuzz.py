"""Schemathesis against the app's own OpenAPI schema: no internal errors, answers match the schema.

Generated URLs never leave this machine: the app under fuzzing has ALLOWED_URL_HOSTS=127.0.0.1,
so any other host is refused before it is even resolved.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis import checks
from support.stores import make_settings

from diarization_audio.service.app import create_app

_base = Path(tempfile.mkdtemp(prefix="fuzz-"))
app = create_app(make_settings(_base, allowed_url_hosts=["127.0.0.1"], download_retries=0))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)

# 5xx answers the API documents for sources (502 for 127.0.0.1 on a closed port, say).
DOCUMENTED_5XX = {"source_error", "source_timeout", "conversion_timeout", "busy"}


@pytest.fixture(scope="module", autouse=True)
def running_app() -> Iterator[TestClient]:
    """The app's lifespan, started once for every generated request, as a real server would."""
    with TestClient(app) as client:
        yield client


@schema.parametrize()
@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
def test_generated_requests_get_documented_answers(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
    """Each generated request gets a documented status whose body matches its schema; no 500."""
    response = case.call_and_validate(
        checks=[
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
        ]
    )
    assert response.status_code != 500, response.text
    if response.status_code >= 500:
        assert response.json()["error"] in DOCUMENTED_5XX, response.text
