"""The HTTP service: the app, its start-up, and the one place where errors become answers."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_standalone_docs import StandaloneDocs
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from diarization_audio import __version__, errors, metrics
from diarization_audio.ingest.downloader import AudioDownloader
from diarization_audio.ingest.ffmpeg import ffmpeg_version
from diarization_audio.logs import setup_logging
from diarization_audio.names import NAME_RULE
from diarization_audio.service.dashboard_routes import router as dashboard_router
from diarization_audio.service.graceful import on_termination, stop_with_supervisor
from diarization_audio.service.metrics_routes import router as metrics_router
from diarization_audio.service.routes import Services, protected_router, public_router
from diarization_audio.settings import Settings, get_settings, invalid_settings
from diarization_audio.store.tracker import JsonExporter, MetadataTracker
from diarization_audio.url_secrets import scrub

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; `settings` defaults to the environment's (tests pass their own)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active = settings or get_settings()
        setup_logging(active)
        stop_with_supervisor()
        tracker = MetadataTracker.from_settings(active)
        try:
            count = await anyio.to_thread.run_sync(tracker.check)
        except errors.AudioError as exc:
            log.error("refusing to start: %s", exc.full_message)
            tracker.close()
            raise
        downloader = AudioDownloader(active, tracker)
        downloader.prepare_storage()
        await downloader.start()
        version = await anyio.to_thread.run_sync(ffmpeg_version, downloader.ffmpeg)
        exporter = JsonExporter(tracker, active.metadata_export_seconds)
        exporter.start()
        restore_signals = on_termination(downloader.begin_shutdown)
        app.state.services = Services(
            active, tracker, downloader, version, downloader.storage.place
        )
        log.info(
            "ready: storage=%s store=%s (%d conversations) export=%s ffmpeg=%s (%s)",
            downloader.storage.place.url, tracker.name, count, active.metadata_file,
            downloader.ffmpeg, version,
        )  # fmt: skip
        try:
            yield
        finally:
            restore_signals()
            await downloader.aclose()
            await anyio.to_thread.run_sync(exporter.stop)
            tracker.close()

    app = FastAPI(
        title="Diarization audio downloader",
        version=__version__,
        description=(
            "Downloads conversation audio from URLs, stores it as 16 kHz mono 16-bit WAV named "
            "`{conversation_id}_{speaker_label}.wav`, and records every stored hour in its "
            "metadata store (exported as JSON). Every error answer is `{detail, error}`."
        ),
        lifespan=lifespan,
        # No validator badge: it would send the schema to a web service.
        swagger_ui_parameters={"validatorUrl": None},
        exception_handlers={
            errors.AudioError: audio_error,
            RequestValidationError: invalid_request,
            StarletteHTTPException: http_error,
            Exception: unexpected_error,
        },
    )
    # /docs and /redoc load Swagger UI and ReDoc from the fastapi-standalone-docs wheel, not a
    # CDN: the service often runs where there is no internet.
    StandaloneDocs(app=app)
    app.include_router(public_router)
    app.include_router(protected_router)
    app.include_router(metrics_router)
    metrics.instrument(app)
    app.include_router(dashboard_router)
    return app


# Error answers: the status and code come from the error class; what only the log may know
# (paths, errno, exception classes) never reaches the client.


async def audio_error(request: Request, exc: errors.AudioError) -> JSONResponse:
    log.log(
        logging.ERROR if exc.status >= 500 else logging.WARNING,
        "%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code,
        exc.full_message,
    )  # fmt: skip
    return _answer(exc)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for problem in exc.errors():
        field = ".".join(str(p) for p in problem.get("loc", ()) if p not in ("body", "query"))
        if problem.get("type") == "missing":
            problems.append(f"{field} is required")
        elif problem.get("type") == "string_pattern_mismatch":
            problems.append(f"{field} must be {NAME_RULE}")
        else:
            problems.append(f"{field}: {problem.get('msg', 'invalid')}")
    return await audio_error(request, errors.InvalidInput("; ".join(problems) or "invalid request"))


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: errors.NotFound.code, 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"detail": str(exc.detail), "error": code},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "%s %s -> 500 %s: unexpected %s: %s", request.method, request.url.path,
        errors.InternalError.code, type(exc).__name__, exc, exc_info=exc,
    )  # fmt: skip
    return _answer(errors.InternalError("internal error; the server log has the details"))


def _answer(exc: errors.AudioError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, errors.Busy) else None
    # Messages name source URLs; their query strings (signatures, tokens) stay out.
    return JSONResponse(
        {"detail": scrub(exc.message), "error": exc.code}, status_code=exc.status, headers=headers
    )


_app: FastAPI | None = None


def _stop_supervisor() -> None:
    """Under `uvicorn --workers N` each worker is a multiprocessing child of uvicorn's
    supervisor, which starts a worker that exits again, forever: a worker that cannot start
    because of the settings asks it to stop instead (SIGTERM, its graceful stop)."""
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        os.kill(parent.pid, signal.SIGTERM)


def __getattr__(name: str) -> object:
    """`app`, built on first use: where uvicorn imports it (`main:app`, or this module's
    `app`), once per process, and never as a side effect of importing this module (a second
    app would keep metrics of its own)."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        try:
            get_settings()  # a bad setting is one line, not a traceback from inside uvicorn
        except ValidationError as exc:
            print(f"error: {invalid_settings(exc)}", file=sys.stderr)
            _stop_supervisor()
            raise SystemExit(2) from None
        _app = create_app()
    return _app
