"""GET /metrics: the service's Prometheus metrics, summed over all of its worker processes."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Header
from fastapi.responses import Response

from diarization_audio import errors, metrics
from diarization_audio.service.routes import ServicesDep, error_responses, require_api_key


def require_metrics_access(
    services: ServicesDep,
    x_api_key: Annotated[
        str | None, Header(description="Required when API_KEY is set and METRICS_PUBLIC is not")
    ] = None,
) -> None:
    """Open with METRICS_PUBLIC=true; otherwise the API key rule of the data endpoints."""
    if not services.settings.metrics_public:
        require_api_key(services, x_api_key)


router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(require_metrics_access)],
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(errors.Unauthorized),
    },
    summary="Prometheus metrics of every worker process",
)
async def metrics_text() -> Response:
    body = await anyio.to_thread.run_sync(metrics.render)
    return Response(body, media_type=metrics.CONTENT_TYPE)
