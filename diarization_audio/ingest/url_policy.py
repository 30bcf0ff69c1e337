"""Which URLs the service may fetch: host allow-list and blocked networks, checked on every hop.

The check runs inside the HTTP transport, so it applies to the first request and to each
redirect the client follows. A host is resolved once, every address it resolves to is checked,
and the connection is then made to that checked address (the URL's host is replaced by it, with
the original name kept for the Host header and TLS), so a name cannot resolve to an allowed
address for the check and a blocked one for the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import httpx

from diarization_audio.errors import SourceError, UrlRefused

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlPolicy:
    """ALLOWED_URL_HOSTS, BLOCKED_NETWORKS and BLOCK_PRIVATE_NETWORKS as one decision."""

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        blocked_networks: Iterable[Network] = (),
        block_private: bool = False,
    ) -> None:
        self.allowed_hosts = [h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip()]
        self.blocked_networks = list(blocked_networks)
        self.block_private = block_private

    def check_host(self, url: httpx.URL) -> None:
        """Refuse a scheme other than http(s) or a host outside ALLOWED_URL_HOSTS."""
        if url.scheme not in ("http", "https"):
            raise UrlRefused(f"{url} is not an http or https URL")
        host = url.host.lower().rstrip(".")
        if self.allowed_hosts and not any(_host_matches(host, p) for p in self.allowed_hosts):
            raise UrlRefused(f"{url}: host {host!r} is not in ALLOWED_URL_HOSTS")

    def check_address(self, url: httpx.URL, address: Address) -> None:
        """Refuse an address in BLOCKED_NETWORKS, or a non-public one when private is blocked."""
        candidates: list[Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            candidates.append(address.ipv4_mapped)
        for candidate in candidates:
            for network in self.blocked_networks:
                if candidate.version == network.version and candidate in network:
                    raise UrlRefused(f"{url} resolves to {candidate}, inside blocked {network}")
            if self.block_private and not candidate.is_global:
                raise UrlRefused(
                    f"{url} resolves to non-public address {candidate} "
                    "(BLOCK_PRIVATE_NETWORKS is on)"
                )

    async def resolve(self, url: httpx.URL) -> Address:
        """The checked address to connect to; every address the host resolves to must pass."""
        host = url.host
        try:
            return self._checked([ipaddress.ip_address(host)], url)
        except ValueError:
            pass
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise SourceError(f"{url}: cannot resolve host {host!r}: {exc}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        return self._checked(addresses, url)

    def _checked(self, addresses: list[Address], url: httpx.URL) -> Address:
        for address in addresses:
            self.check_address(url, address)
        return addresses[0]


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that applies a UrlPolicy to every request it sends."""

    def __init__(self, policy: UrlPolicy, inner: httpx.AsyncBaseTransport) -> None:
        self.policy = policy
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.policy.check_host(request.url)
        address = await self.policy.resolve(request.url)
        if str(address) == request.url.host:
            return await self.inner.handle_async_request(request)
        # Connect to the address that was checked; the Host header and TLS keep the name. A
        # copy, because the client builds the next redirect from the original request.
        pinned = httpx.Request(
            request.method,
            request.url.copy_with(host=str(address)),
            headers=request.headers,
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": request.url.host},
        )
        return await self.inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self.inner.aclose()
