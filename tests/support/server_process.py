"""The service as a real `uvicorn main:app` process, the command the README documents."""

from __future__ import annotations

from pathlib import Path

from diarization_audio.service.process import ServiceProcess
from diarization_audio.settings import Settings
from support import ROOT


class ServerProcess(ServiceProcess):
    """A real `uvicorn main:app` process on 127.0.0.1 with its own storage."""

    def __init__(self, settings: Settings, workers: int = 1, log_path: Path | None = None) -> None:
        super().__init__(settings, workers, log_path, app="main:app", app_dir=ROOT)
