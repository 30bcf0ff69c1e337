"""The HTTP service: thin routes over audio_downloader and metadata_tracker; errors mapped once."""

from __future__ import annotations

import hmac
import logging
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import uvicorn
from fastapi import Depends, FastAPI, Form, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import errors
from api_models import (
    NAME_PATTERN,
    NAME_RULE,
    ConversationPublic,
    ConversationsPagePublic,
    DownloadResultPublic,
    DualDownloadPublic,
    DualItemPublic,
    ErrorPublic,
    FfmpegPublic,
    HealthPublic,
    RootPublic,
    StatisticsPublic,
    StorageInfoPublic,
)
from audio_downloader import AudioDownloader, StoredAudio
from converter import ffmpeg_version
from logger import setup_logging
from metadata_schema import MB
from metadata_tracker import JsonExporter, MetadataTracker
from settings import Settings, get_settings
from storage_layout import stored_name, wav_files

VERSION = "1.0.0"
MAX_URL_CHARS = 8192
log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.AudioError], int] = {
    errors.InvalidInput: 400,
    errors.Unauthorized: 401,
    errors.UrlRefused: 403,
    errors.NotFound: 404,
    errors.UrlConflict: 409,
    errors.TooLarge: 413,
    errors.NotAudio: 422,
    errors.AudioTooLong: 422,
    errors.SourceError: 502,
    errors.ConversionTimeout: 503,
    errors.Busy: 503,
    errors.SourceTimeout: 504,
    errors.InsufficientStorage: 507,
    errors.StorageError: 500,
    errors.MetadataCorrupt: 500,
}


def status_for(exc: errors.AudioError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Missing or malformed field",
        401: "API_KEY is set and X-API-Key is missing or wrong",
        403: "The URL policy refuses this host or address",
        404: "Unknown conversation",
        409: "Already stored from another URL",
        413: "Source larger than MAX_DOWNLOAD_MB",
        422: "Not decodable audio, or longer than MAX_AUDIO_HOURS",
        502: "Source answered an error or was unreachable",
        503: "Conversion timed out, or no job slot free (see Retry-After)",
        504: "Source timed out",
        507: "Storage full",
    }
    return {code: {"model": ErrorPublic, "description": described[code]} for code in codes}


DOWNLOAD_ERRORS = _error_responses(400, 401, 403, 409, 413, 422, 502, 503, 504, 507)


@dataclass
class Services:
    """Everything a request needs, built once per process by the lifespan."""

    settings: Settings
    tracker: MetadataTracker
    downloader: AudioDownloader
    ffmpeg_version: str


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; `settings` defaults to the environment's (tests pass their own)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active = settings or get_settings()
        setup_logging(active)
        tracker = MetadataTracker.from_settings(active)
        try:
            count = await anyio.to_thread.run_sync(tracker.check)
        except errors.AudioError as exc:
            log.error("refusing to start: %s", exc.message)
            tracker.close()
            raise
        downloader = AudioDownloader(active, tracker)
        downloader.prepare_storage()
        version = await anyio.to_thread.run_sync(ffmpeg_version, downloader.ffmpeg)
        exporter = JsonExporter(tracker, active.metadata_export_seconds)
        exporter.start()
        app.state.services = Services(active, tracker, downloader, version)
        log.info(
            "ready: storage=%s store=%s (%d conversations) export=%s ffmpeg=%s (%s)",
            active.audio_storage_dir, tracker.name, count, active.metadata_file,
            downloader.ffmpeg, version,
        )  # fmt: skip
        try:
            yield
        finally:
            await downloader.aclose()
            await anyio.to_thread.run_sync(exporter.stop)
            tracker.close()

    app = FastAPI(
        title="Diarization audio downloader",
        version=VERSION,
        description=(
            "Downloads conversation audio from URLs, stores it as 16 kHz mono 16-bit WAV named "
            "`{conversation_id}_{speaker_label}.wav`, and tracks every stored hour in a live "
            "JSON metadata file. Every error answer is `{detail, error}`."
        ),
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    app.include_router(_routes())
    return app


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_api_key(
    services: ServicesDep,
    x_api_key: Annotated[str | None, Header(description="Required when API_KEY is set")] = None,
) -> None:
    """When API_KEY is set, the X-API-Key header must equal it (compared in constant time)."""
    expected = services.settings.api_key
    if expected is None:
        return
    if x_api_key is None or not hmac.compare_digest(
        x_api_key.encode("utf-8", "surrogateescape"), expected.encode("utf-8")
    ):
        raise errors.Unauthorized("missing or wrong X-API-Key header")


NameForm = Form(pattern=NAME_PATTERN, description=NAME_RULE)


def _routes() -> Any:
    from fastapi import APIRouter

    router = APIRouter()
    # Everything but / and /health needs the key when API_KEY is set.
    protected = APIRouter(dependencies=[Depends(require_api_key)], responses=_error_responses(401))

    @router.get("/", response_model=RootPublic, summary="Service name, version and endpoints")
    async def root() -> RootPublic:
        return RootPublic(
            name="Diarization audio downloader",
            version=VERSION,
            endpoints={
                "GET /health": "service, storage and ffmpeg status",
                "POST /download/single": "store one speaker's audio",
                "POST /download/dual": "store agent and customer audio of a conversation",
                "GET /storage/info": "stored .wav files and their total size",
                "GET /statistics": "hours collected and progress toward target_hours",
                "GET /conversations": "recorded conversations, paged",
                "GET /conversations/{conversation_id}": "one recorded conversation",
                "GET /docs": "interactive API documentation",
            },
        )

    @router.get("/health", response_model=HealthPublic, summary="Liveness and storage status")
    async def health(services: ServicesDep) -> HealthPublic:
        settings = services.settings
        storage = Path(settings.audio_storage_dir)
        writable = storage.is_dir() and os.access(storage, os.W_OK | os.X_OK)
        try:
            free_mb = shutil.disk_usage(storage).free / MB
        except OSError:
            free_mb = 0.0
        return HealthPublic(
            status="healthy" if writable else "degraded",
            version=VERSION,
            storage_directory=str(storage),
            storage_writable=writable,
            metadata_file=str(settings.metadata_file),
            ffmpeg=FfmpegPublic(path=services.downloader.ffmpeg, version=services.ffmpeg_version),
            free_disk_mb=round(free_mb, 1),
            timestamp=services.tracker.now(),
        )

    @protected.post(
        "/download/single",
        response_model=DownloadResultPublic,
        responses=DOWNLOAD_ERRORS,
        summary="Download, convert and store one audio file",
    )
    async def download_single(
        services: ServicesDep,
        conversation_id: Annotated[str, NameForm],
        audio_url: Annotated[
            str,
            Form(min_length=1, max_length=MAX_URL_CHARS, description="http(s) URL of the audio"),
        ],
        speaker_label: Annotated[str, Form(pattern=NAME_PATTERN, description=NAME_RULE)] = (
            "speaker"
        ),
        overwrite: Annotated[bool, Form(description="Download again even if stored")] = False,
    ) -> DownloadResultPublic:
        stored = await services.downloader.download(
            conversation_id, speaker_label, audio_url, overwrite
        )
        return DownloadResultPublic(**_public_fields(stored))

    @protected.post(
        "/download/dual",
        response_model=DualDownloadPublic,
        responses=DOWNLOAD_ERRORS,
        summary="Download agent and (optionally) customer audio of one conversation",
    )
    async def download_dual(
        services: ServicesDep,
        conversation_id: Annotated[str, NameForm],
        audio_url_agent: Annotated[
            str,
            Form(
                min_length=1, max_length=MAX_URL_CHARS, description="http(s) URL of the agent audio"
            ),
        ],
        audio_url_customer: Annotated[
            str | None,
            Form(
                max_length=MAX_URL_CHARS, description="http(s) URL of the customer audio (optional)"
            ),
        ] = None,
        overwrite: Annotated[bool, Form(description="Download again even if stored")] = False,
    ) -> DualDownloadPublic:
        urls = {"agent": audio_url_agent}
        if audio_url_customer:
            urls["customer"] = audio_url_customer
        outcomes = await services.downloader.download_many(conversation_id, urls, overwrite)
        failures = [o for o in outcomes if isinstance(o, errors.AudioError)]
        if len(failures) == len(outcomes):
            raise failures[0]
        items = [
            _dual_item(label, url, outcome, conversation_id)
            for (label, url), outcome in zip(urls.items(), outcomes, strict=True)
        ]
        return DualDownloadPublic(
            conversation_id=conversation_id,
            status="partial" if failures else "success",
            total_files=len(outcomes) - len(failures),
            downloads=items,
        )

    @protected.get("/storage/info", response_model=StorageInfoPublic, summary="Stored .wav files")
    async def storage_info(services: ServicesDep) -> StorageInfoPublic:
        storage = Path(services.settings.audio_storage_dir)
        return await anyio.to_thread.run_sync(_storage_listing, storage)

    @protected.get(
        "/statistics",
        response_model=StatisticsPublic,
        responses=_error_responses(400),
        summary="Hours collected and progress toward a target",
    )
    async def statistics(
        services: ServicesDep,
        target_hours: Annotated[float, Query(gt=0, description="Target hours (> 0)")] = 100.0,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await anyio.to_thread.run_sync(
            services.tracker.statistics, target_hours
        )
        return result

    @protected.get(
        "/conversations",
        response_model=ConversationsPagePublic,
        responses=_error_responses(400),
        summary="Recorded conversations, in the order they were first stored",
    )
    async def conversations(
        services: ServicesDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        total, page = await anyio.to_thread.run_sync(
            services.tracker.list_conversations, limit, offset
        )
        return {"total": total, "limit": limit, "offset": offset, "conversations": page}

    @protected.get(
        "/conversations/{conversation_id}",
        response_model=ConversationPublic,
        responses=_error_responses(400, 404),
        summary="One recorded conversation",
    )
    async def conversation(
        services: ServicesDep,
        conversation_id: Annotated[str, PathParam(pattern=NAME_PATTERN, description=NAME_RULE)],
    ) -> dict[str, Any]:
        entry = await anyio.to_thread.run_sync(services.tracker.get_conversation, conversation_id)
        if entry is None:
            raise errors.NotFound(f"conversation {conversation_id!r} is not recorded")
        return entry

    router.include_router(protected)
    return router


def _public_fields(stored: StoredAudio) -> dict[str, Any]:
    return {
        **stored.file.model_dump(),
        "status": stored.status,
        "conversation_id": stored.conversation_id,
        "speaker_label": stored.speaker_label,
        "filename": stored.filename,
    }


def _dual_item(
    label: str, url: str, outcome: StoredAudio | errors.AudioError, conversation_id: str
) -> DualItemPublic:
    if isinstance(outcome, errors.AudioError):
        return DualItemPublic(
            speaker=label, filename=stored_name(conversation_id, label), status="failed",
            url=url, error=outcome.message, error_code=outcome.code,
        )  # fmt: skip
    return DualItemPublic(
        **outcome.file.model_dump(), speaker=label, filename=outcome.filename,
        status=outcome.status,
    )  # fmt: skip


def _storage_listing(storage: Path) -> StorageInfoPublic:
    found = wav_files(storage)
    return StorageInfoPublic(
        storage_directory=str(storage),
        total_files=len(found),
        total_size_mb=round(sum(found.values()) / MB, 2),
        files=sorted(found),
    )


def _install_error_handlers(app: FastAPI) -> None:
    """The one place where errors become HTTP answers."""

    @app.exception_handler(errors.AudioError)
    async def audio_error(request: Request, exc: errors.AudioError) -> JSONResponse:
        status = status_for(exc)
        log.log(
            logging.ERROR if status >= 500 else logging.WARNING,
            "%s %s -> %d %s: %s", request.method, request.url.path, status, exc.code, exc.message,
        )  # fmt: skip
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, errors.Busy) else None
        return JSONResponse(
            {"detail": exc.message, "error": exc.code}, status_code=status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
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
        detail = "; ".join(problems) or "invalid request"
        log.warning("%s %s -> 400 invalid_input: %s", request.method, request.url.path, detail)
        return JSONResponse({"detail": detail, "error": "invalid_input"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"detail": str(exc.detail), "error": code},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s -> 500: unexpected error", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error: {type(exc).__name__}", "error": "internal_error"},
            status_code=500,
        )


app = create_app()


def main() -> None:
    settings = get_settings()
    uvicorn.run("main:app", host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
