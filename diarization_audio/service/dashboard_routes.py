"""The dashboard's routes: the page, its JSON data, and the API key kept for a browser session.

With API_KEY set, both need the X-API-Key header, like every data endpoint, or a session
cookie. A browser sends no custom header when it opens a page, so `GET /dashboard` without
either answers 401 with a form asking for the key; posting the right key sets the cookie
`dashboard_session` (HttpOnly, SameSite=Strict, path /dashboard, no expiry date: it ends with
the browser session) and redirects to the page. The cookie holds `<issued>.<HMAC-SHA256 of the
issue time keyed by API_KEY>`, not the key itself; it is accepted for SESSION_SECONDS and by
every process that has the same API_KEY, and changing API_KEY ends every session. The key is
never taken from the URL, where access logs and browser history would keep it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Cookie, Depends, Form, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from diarization_audio import errors
from diarization_audio.progress import MAX_TARGET_HOURS
from diarization_audio.service.dashboard_figures import DashboardPublic, dashboard
from diarization_audio.service.dashboard_page import key_form, page
from diarization_audio.service.routes import (
    METADATA_ERRORS,
    ServicesDep,
    error_responses,
    require_api_key,
)

SESSION_COOKIE = "dashboard_session"
SESSION_SECONDS = 12 * 3600
_TOKEN = re.compile(r"([0-9]{1,12})\.[0-9a-f]{64}")

router = APIRouter()
TargetQuery = Annotated[
    float | None,
    Query(
        gt=0,
        le=MAX_TARGET_HOURS,
        description="Target hours (> 0); default DASHBOARD_TARGET_HOURS",
    ),
]


def session_token(api_key: str, issued: int) -> str:
    mac = hmac.new(api_key.encode(), f"dashboard-session:{issued}".encode(), hashlib.sha256)
    return f"{issued}.{mac.hexdigest()}"


def session_valid(token: str, api_key: str, now: float) -> bool:
    """Whether `token` was issued for this API_KEY within SESSION_SECONDS (constant time)."""
    found = _TOKEN.fullmatch(token)
    if found is None or not now - SESSION_SECONDS <= int(found[1]) <= now + 60:
        return False
    return hmac.compare_digest(token.encode(), session_token(api_key, int(found[1])).encode())


def viewer(
    services: ServicesDep,
    x_api_key: Annotated[str | None, Header(description="Required when API_KEY is set")] = None,
    session: Annotated[
        str | None,
        Cookie(alias=SESSION_COOKIE, description="Set by posting the key to /dashboard"),
    ] = None,
) -> bool:
    """Whether this request may see the dashboard: no API_KEY, a valid session, or the key."""
    expected = services.settings.api_key
    if expected is None or (session is not None and session_valid(session, expected, time.time())):
        return True
    try:
        require_api_key(services, x_api_key)
    except errors.Unauthorized:
        return False
    return True


Viewer = Annotated[bool, Depends(viewer)]


def _target(services: ServicesDep, target_hours: float | None) -> float:
    return target_hours or services.settings.dashboard_target_hours


@router.get(
    "/dashboard/data",
    response_model=DashboardPublic,
    responses=error_responses(errors.InvalidInput, errors.Unauthorized, *METADATA_ERRORS),
    summary="The dashboard's figures: progress, hours per day, speakers, lengths, failures",
)
async def dashboard_data(
    services: ServicesDep, allowed: Viewer, target_hours: TargetQuery = None
) -> DashboardPublic:
    if not allowed:
        raise errors.Unauthorized("missing or wrong X-API-Key header or dashboard session")
    target = _target(services, target_hours)
    return await anyio.to_thread.run_sync(dashboard, services.tracker, target)


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page(
    services: ServicesDep, allowed: Viewer, target_hours: TargetQuery = None
) -> HTMLResponse:
    if not allowed:
        return HTMLResponse(key_form(target_hours, wrong=False), status_code=401)
    target = _target(services, target_hours)
    data = await anyio.to_thread.run_sync(dashboard, services.tracker, target)
    return HTMLResponse(page(data, target))


@router.post("/dashboard", include_in_schema=False)
async def dashboard_login(
    request: Request,
    services: ServicesDep,
    key: Annotated[str, Form(max_length=4096)],
    target_hours: Annotated[float | None, Form(gt=0, le=MAX_TARGET_HOURS)] = None,
) -> Response:
    expected = services.settings.api_key
    try:
        require_api_key(services, key)
    except errors.Unauthorized:
        return HTMLResponse(key_form(target_hours, wrong=True), status_code=401)
    query = f"?target_hours={target_hours:g}" if target_hours is not None else ""
    path = f"{request.scope.get('root_path', '')}/dashboard"
    answer = RedirectResponse(path + query, status_code=303)
    if expected is not None:
        answer.set_cookie(
            SESSION_COOKIE, session_token(expected, int(time.time())), path=path,
            httponly=True, samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
    return answer
