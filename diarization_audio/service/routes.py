"""The HTTP routes: a few lines each that call the core and shape the answer."""

from __future__ import annotations

import dataclasses
import hmac
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi import Path as PathParam

from diarization_audio import __version__, errors
from diarization_audio.ingest.downloader import AudioDownloader, StoredAudio
from diarization_audio.names import NAME_PATTERN, NAME_RULE
from diarization_audio.objects import Place
from diarization_audio.progress import MB
from diarization_audio.service.api_models import (
    ConversationPublic,
    ConversationsPagePublic,
    DownloadResultPublic,
    DualDownloadPublic,
    DualItemPublic,
    ErasurePublic,
    ErrorPublic,
    FfmpegPublic,
    HealthPublic,
    RootPublic,
    StatisticsPublic,
    StorageInfoPublic,
)
from diarization_audio.settings import Settings
from diarization_audio.store.layout import stored_name, wav_files
from diarization_audio.store.tracker import MetadataTracker
from diarization_audio.url_secrets import scrub, shown

MAX_URL_CHARS = 8192


def error_responses(*classes: type[errors.AudioError]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI error answers of these classes; a shared status describes each of its classes."""
    described: dict[int, list[str]] = {}
    for cls in classes:
        described.setdefault(cls.status, []).append(cls.description)
    return {
        status: {"model": ErrorPublic, "description": _sentence("; or ".join(texts))}
        for status, texts in sorted(described.items())
    }


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


# What the metadata can fail with on any read or write.
METADATA_ERRORS = (errors.StorageError, errors.MetadataCorrupt)
DOWNLOAD_ERROR_CLASSES = (
    errors.InvalidInput, errors.UrlRefused, errors.UrlConflict, errors.Erased, errors.TooLarge,
    errors.NotAudio,
    errors.AudioTooLong, *METADATA_ERRORS, errors.SourceError, errors.ConversionTimeout,
    errors.Busy, errors.ShuttingDown, errors.SourceTimeout, errors.InsufficientStorage,
)  # fmt: skip
DOWNLOAD_ERRORS = error_responses(*DOWNLOAD_ERROR_CLASSES)


@dataclass
class Services:
    """Everything a request needs, built once per process by the lifespan."""

    settings: Settings
    tracker: MetadataTracker
    downloader: AudioDownloader
    ffmpeg_version: str
    place: Place  # where the finished WAVs are: AUDIO_STORAGE_DIR or AUDIO_STORAGE_URL


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


public_router = APIRouter()
# Everything but / and /health needs the key when API_KEY is set.
protected_router = APIRouter(
    dependencies=[Depends(require_api_key)], responses=error_responses(errors.Unauthorized)
)
NameForm = Form(pattern=NAME_PATTERN, description=NAME_RULE)
MAX_OFFSET = 2**53  # past any collection, and within every database's integers
AgentIdForm = Annotated[
    str | None,
    Form(
        pattern=NAME_PATTERN,
        description="The agent's id (optional): an export keeps one agent's calls in one split",
    ),
]
AllowErasedForm = Annotated[
    bool,
    Form(description="Store it even if the conversation was erased (default: refused, 410)"),
]


@public_router.get("/", response_model=RootPublic, summary="Service name, version and endpoints")
async def root() -> RootPublic:
    return RootPublic(
        name="Diarization audio downloader",
        version=__version__,
        endpoints={
            "GET /health": "service, storage and ffmpeg status",
            "POST /download/single": "store one speaker's audio",
            "POST /download/dual": "store agent and customer audio of a conversation",
            "POST /download/stereo": "store the two channels of a stereo call as two speakers",
            "GET /storage/info": "stored .wav files and their total size",
            "GET /statistics": "hours collected and progress toward target_hours",
            "GET /conversations": "recorded conversations, paged",
            "GET /conversations/{conversation_id}": "one recorded conversation",
            "DELETE /conversations/{conversation_id}": "erase a conversation everywhere",
            "GET /metrics": "Prometheus metrics of every worker process",
            "GET /dashboard": "progress, hours per day, speakers, lengths, failures: one page",
            "GET /dashboard/data": "the dashboard's figures as JSON",
            "GET /docs": "interactive API documentation",
        },
    )


@public_router.get("/health", response_model=HealthPublic, summary="Liveness and storage status")
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
        version=__version__,
        storage_directory=str(storage),
        storage_writable=writable,
        metadata_file=str(settings.metadata_file),
        ffmpeg=FfmpegPublic(path=services.downloader.ffmpeg, version=services.ffmpeg_version),
        free_disk_mb=round(free_mb, 1),
        timestamp=services.tracker.now(),
    )


@protected_router.post(
    "/download/single",
    response_model=DownloadResultPublic,
    responses=DOWNLOAD_ERRORS,
    summary="Download, convert and store one audio file",
)
async def download_single(
    services: ServicesDep,
    conversation_id: Annotated[str, NameForm],
    audio_url: Annotated[
        str, Form(min_length=1, max_length=MAX_URL_CHARS, description="http(s) URL of the audio")
    ],
    speaker_label: Annotated[str, Form(pattern=NAME_PATTERN, description=NAME_RULE)] = "speaker",
    overwrite: Annotated[bool, Form(description="Download again even if stored")] = False,
    agent_id: AgentIdForm = None,
    allow_erased: AllowErasedForm = False,
) -> DownloadResultPublic:
    stored = await services.downloader.download(
        conversation_id, speaker_label, audio_url, overwrite, agent_id, allow_erased=allow_erased
    )
    return DownloadResultPublic(**_public_fields(stored))


@protected_router.post(
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
        Form(min_length=1, max_length=MAX_URL_CHARS, description="http(s) URL of the agent audio"),
    ],
    audio_url_customer: Annotated[
        str | None,
        Form(max_length=MAX_URL_CHARS, description="http(s) URL of the customer audio (optional)"),
    ] = None,
    overwrite: Annotated[bool, Form(description="Download again even if stored")] = False,
    agent_id: AgentIdForm = None,
    allow_erased: AllowErasedForm = False,
) -> DualDownloadPublic:
    urls = {"agent": audio_url_agent}
    if audio_url_customer:
        urls["customer"] = audio_url_customer
    outcomes = await services.downloader.download_many(
        conversation_id, urls, overwrite, agent_id, allow_erased=allow_erased
    )
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


@protected_router.post(
    "/download/stereo",
    response_model=DualDownloadPublic,
    responses=error_responses(errors.NotStereo, errors.IdenticalChannels, *DOWNLOAD_ERROR_CLASSES),
    summary="Download one stereo call and store its left and right channels as two speakers",
)
async def download_stereo(
    services: ServicesDep,
    conversation_id: Annotated[str, NameForm],
    audio_url: Annotated[
        str,
        Form(min_length=1, max_length=MAX_URL_CHARS, description="http(s) URL of the stereo audio"),
    ],
    left_label: Annotated[
        str, Form(pattern=NAME_PATTERN, description="Speaker on the left channel")
    ] = "agent",
    right_label: Annotated[
        str, Form(pattern=NAME_PATTERN, description="Speaker on the right channel")
    ] = "customer",
    overwrite: Annotated[bool, Form(description="Download again even if stored")] = False,
    agent_id: AgentIdForm = None,
    allow_erased: AllowErasedForm = False,
) -> DualDownloadPublic:
    stored = await services.downloader.download_stereo(
        conversation_id, audio_url, left_label, right_label, overwrite, agent_id,
        allow_erased=allow_erased,
    )  # fmt: skip
    return DualDownloadPublic(
        conversation_id=conversation_id,
        status="success",
        total_files=len(stored),
        downloads=[_dual_item(s.speaker_label, audio_url, s, conversation_id) for s in stored],
    )


@protected_router.get(
    "/storage/info",
    response_model=StorageInfoPublic,
    responses=error_responses(errors.InvalidInput, errors.StorageError),
    summary="Stored .wav files, a page of names at a time",
)
async def storage_info(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=10000, description="Names per page")] = 1000,
    after: Annotated[
        str, Query(max_length=300, description="Start after this name (a page's next_after)")
    ] = "",
) -> StorageInfoPublic:
    return await anyio.to_thread.run_sync(_storage_listing, services.place, after, limit)


@protected_router.get(
    "/statistics",
    response_model=StatisticsPublic,
    responses=error_responses(errors.InvalidInput, *METADATA_ERRORS),
    summary="Hours collected and progress toward a target",
)
async def statistics(
    services: ServicesDep,
    target_hours: Annotated[float, Query(gt=0, description="Target hours (> 0)")] = 100.0,
    speech: Annotated[
        bool, Query(description="Count progress toward the target in speech hours")
    ] = False,
) -> dict[str, Any]:
    result: dict[str, Any] = await anyio.to_thread.run_sync(
        services.tracker.statistics, target_hours, speech
    )
    return result


@protected_router.get(
    "/conversations",
    response_model=ConversationsPagePublic,
    responses=error_responses(errors.InvalidInput, *METADATA_ERRORS),
    summary="Recorded conversations, in the order they were first stored",
)
async def conversations(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    total, page = await anyio.to_thread.run_sync(services.tracker.list_conversations, limit, offset)
    return {"total": total, "limit": limit, "offset": offset, "conversations": page}


@protected_router.get(
    "/conversations/{conversation_id}",
    response_model=ConversationPublic,
    responses=error_responses(errors.InvalidInput, errors.NotFound, *METADATA_ERRORS),
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


@protected_router.delete(
    "/conversations/{conversation_id}",
    response_model=ErasurePublic,
    responses=error_responses(errors.InvalidInput, *METADATA_ERRORS),
    summary="Erase a conversation: its files, records, labels, flags and failures",
)
async def erase_conversation(
    services: ServicesDep,
    conversation_id: Annotated[str, PathParam(pattern=NAME_PATTERN, description=NAME_RULE)],
    reason: Annotated[str, Query(max_length=1000, description="Why (kept in its tombstone)")] = "",
) -> ErasurePublic:
    done = await anyio.to_thread.run_sync(
        services.tracker.erase, conversation_id, reason, services.place
    )
    return ErasurePublic(**dataclasses.asdict(done))


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
            url=shown(url), error=scrub(outcome.message), error_code=outcome.code,
        )  # fmt: skip
    return DualItemPublic(
        **outcome.file.model_dump(), speaker=label, filename=outcome.filename,
        status=outcome.status,
    )  # fmt: skip


def _storage_listing(place: Place, after: str, limit: int) -> StorageInfoPublic:
    """Counts over every stored WAV, names of one page of them (in one pass over the listing,
    which comes sorted by name: a bucket answers 1,000 names a request)."""
    count = size = 0
    page: list[str] = []
    for name, bytes_ in wav_files(place).items():
        count += 1
        size += bytes_
        if name > after and len(page) <= limit:
            page.append(name)
    more = len(page) > limit
    page = page[:limit]
    return StorageInfoPublic(
        storage_directory=place.url,
        total_files=count,
        total_size_mb=round(size / MB, 2),
        files=page,
        next_after=page[-1] if more else None,
    )
