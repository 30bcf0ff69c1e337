"""`python main.py` / `diarization-audio serve`: the service under uvicorn, settings from the
environment."""

from __future__ import annotations

import argparse

import uvicorn
from pydantic import ValidationError

from diarization_audio.cli.common import EXIT_OK, EXIT_USAGE, fail, invalid_settings
from diarization_audio.settings import get_settings

APP = "diarization_audio.service.app:app"  # built by uvicorn's import, once per process


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        description="Serve the HTTP API, the dashboard and /metrics with uvicorn. Every setting "
        "(HOST, PORT, API_KEY, AUDIO_STORAGE_DIR ...) comes from the environment or .env; "
        "`uvicorn main:app --workers N` serves the same app in N processes.",
        epilog="Exit codes: 0 stopped, 2 bad settings.",
    ).parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:  # one line naming the setting, as the scripts say it
        return fail(EXIT_USAGE, invalid_settings(exc))
    uvicorn.run(APP, host=settings.host, port=settings.port, log_level="info")
    return EXIT_OK
