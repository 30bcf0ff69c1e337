"""The running service as the command-line scripts see it: a small client over its HTTP API.

Error answers (`{"detail", "error"}`) come back as the errors.py class of the same code, so a
script catches AudioError once whether the problem was found here or on the server. A service
that cannot be reached, that went away during a request, or that is not this service, is
ServiceUnreachable. When API_KEY is set the client sends it as X-API-Key, as the service expects.
ServicePool spreads requests over several services of one store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx

from diarization_audio import errors
from diarization_audio.settings import Settings


def _descendants(cls: type[errors.AudioError]) -> list[type[errors.AudioError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_descendants(sub))]


_ERRORS_BY_CODE: dict[str, type[errors.AudioError]] = {
    cls.code: cls for cls in _descendants(errors.AudioError)
}
_HINT = "is it running? Start it with `make run`, or pass --server"
PROBE_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


class ServiceUnreachable(errors.AudioError):
    """The service did not answer, or something that is not the service answered."""

    code = "service_unreachable"


def default_server(settings: Settings) -> str:
    """The URL `make run` listens on with these settings, as seen from this machine."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


class ServiceClient:
    """Calls the service; `timeout` bounds the wait for one answer (downloads can be long)."""

    def __init__(self, base_url: str, timeout: float, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"X-API-Key": api_key} if api_key else None,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, server: str | None = None, timeout: float | None = None
    ) -> ServiceClient:
        """A client for `server` (default: where these settings make the service listen)."""
        wait = timeout or settings.download_deadline_seconds + settings.convert_timeout_seconds
        return cls(server or default_server(settings), wait, settings.api_key)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        return self._json(self._send("GET", "/health"), "/health")

    def check_access(self) -> None:
        """Raise Unauthorized now, rather than on every row, when the API key is refused."""
        self._json(self._send("GET", "/conversations", params={"limit": 1}), "/conversations")

    def statistics(self, target_hours: float) -> dict[str, Any]:
        response = self._send("GET", "/statistics", params={"target_hours": target_hours})
        return self._json(response, "/statistics")

    def download_dual(
        self,
        conversation_id: str,
        agent_url: str,
        customer_url: str | None,
        overwrite: bool,
        agent_id: str | None = None,
        *,
        allow_erased: bool = False,
    ) -> dict[str, Any]:
        """The /download/dual answer (status success or partial); raises if nothing was stored."""
        data = {"conversation_id": conversation_id, "audio_url_agent": agent_url}
        if customer_url:
            data["audio_url_customer"] = customer_url
        if agent_id:
            data["agent_id"] = agent_id
        if overwrite:
            data["overwrite"] = "true"
        if allow_erased:
            data["allow_erased"] = "true"
        return self._json(self._send("POST", "/download/dual", data=data), "/download/dual")

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServiceUnreachable(
                f"cannot reach the service at {self.base_url} ({exc}); {_HINT}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise errors.AudioError(
                f"no answer from {self.base_url}{path} within {self.timeout:g} s"
            ) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            # The connection broke before the answer. Whether the service is gone, or only this
            # exchange failed, decides if the caller stops (or turns to another service).
            if self._gone():
                raise ServiceUnreachable(
                    f"cannot reach the service at {self.base_url}: it went away during {path} "
                    f"({type(exc).__name__}: {exc}); {_HINT}"
                ) from exc
            raise errors.AudioError(
                f"{self.base_url}{path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise errors.AudioError(
                f"{self.base_url}{path} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _gone(self) -> bool:
        """Whether nothing answers at the service's address any more."""
        try:
            self._http.get("/health", timeout=PROBE_TIMEOUT_SECONDS)
        except (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError):
            return True
        except httpx.HTTPError:  # slow or odd, but there
            return False
        return False

    def _json(self, response: httpx.Response, path: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and isinstance(body, dict):
            return body
        if isinstance(body, dict) and isinstance(body.get("detail"), str) and "error" in body:
            error_class = _ERRORS_BY_CODE.get(str(body["error"]), errors.AudioError)
            if issubclass(error_class, errors.Busy):
                retry_after = response.headers.get("retry-after", "")
                raise error_class(body["detail"], int(retry_after) if retry_after.isdigit() else 5)
            raise error_class(body["detail"])
        raise ServiceUnreachable(
            f"{self.base_url}{path} answered HTTP {response.status_code} without the service's "
            "JSON; is --server the audio downloader service?"
        )


class ServicePool:
    """Several services sharing one store, as one: each request goes to the live service with the
    fewest requests in flight (in turn when tied), and a service that cannot be reached leaves
    the rotation, its request going to another. Thread-safe."""

    def __init__(self, clients: Sequence[ServiceClient]) -> None:
        self.clients = list(clients)
        self._live = list(clients)
        self._in_flight = dict.fromkeys(self.clients, 0)
        self._turn = 0
        self._lock = threading.Lock()
        #: (base URL, why) of each service taken out of the rotation, in that order.
        self.dropped: list[tuple[str, str]] = []
        self._last_reason = ""

    @property
    def live(self) -> list[ServiceClient]:
        with self._lock:
            return list(self._live)

    def check(self) -> None:
        """Ask every service for /health and access now; the unreachable ones leave at once.

        Raises ServiceUnreachable when none answers, Unauthorized when one refuses the API key.
        """
        for client in self.live:
            try:
                client.health()
                client.check_access()
            except ServiceUnreachable as exc:
                self._drop(client, exc)
        with self._lock:
            if not self._live:
                raise self._none_left()

    def call(self, request: Callable[[ServiceClient], T]) -> T:
        """`request(client)` on the least busy live service, again on another while unreachable."""
        while True:
            client = self._take()
            try:
                return request(client)
            except ServiceUnreachable as exc:
                self._drop(client, exc)
            finally:
                with self._lock:
                    self._in_flight[client] -= 1

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def _take(self) -> ServiceClient:
        with self._lock:
            if not self._live:
                raise self._none_left()
            start = self._turn % len(self._live)
            self._turn += 1
            turn_order = self._live[start:] + self._live[:start]
            client = min(turn_order, key=self._in_flight.__getitem__)
            self._in_flight[client] += 1
            return client

    def _drop(self, client: ServiceClient, exc: ServiceUnreachable) -> None:
        with self._lock:
            if client in self._live:
                self._live.remove(client)
                self.dropped.append((client.base_url, exc.message))
            self._last_reason = exc.message

    def _none_left(self) -> ServiceUnreachable:
        if len(self.clients) == 1:
            return ServiceUnreachable(self._last_reason)
        return ServiceUnreachable(
            f"none of the {len(self.clients)} services answers; the last: {self._last_reason}"
        )
