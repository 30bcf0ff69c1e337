"""Headless Chromium (Debian's, driven by Playwright) that can reach 127.0.0.1 and nothing else:
the browser the page tests and docs/screenshot.py look at the service's pages with.

Every host name but 127.0.0.1 fails to resolve, and every request not to loopback goes to a
proxy address where nothing listens, so a page that needs the internet shows it by failing.
Each request the browser makes is kept in `requests`, to be checked afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page, Request, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
MISSING = (
    "Chromium is not installed: the pages are checked in a real browser. `make test` installs "
    "Debian's chromium package (make system-packages), or set CHROMIUM to a Chromium binary."
)
OFFLINE_ARGS = [
    # Names do not resolve, so nothing but 127.0.0.1 can be reached by name ...
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    # ... and addresses other than loopback go through a proxy that is not there (port 9,
    # discard, has no listener here); loopback itself never goes through a proxy.
    "--proxy-server=http://127.0.0.1:9",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--no-first-run",
]


@dataclass
class OfflineBrowser:
    browser: Browser
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def context(self, width: int = 1440, height: int = 900) -> BrowserContext:
        """A fresh context (cookies of its own) whose every request is recorded."""
        context = self.browser.new_context(viewport={"width": width, "height": height})
        context.on("request", self._record)
        context.on("requestfailed", lambda r: self.failed.append(f"{r.url} {r.failure}"))
        return context

    def page(self, context: BrowserContext | None = None) -> Page:
        return (context or self.context()).new_page()

    def _record(self, request: Request) -> None:
        self.requests.append(request.url)

    def outside(self, base_url: str) -> list[str]:
        """Requests that went anywhere but `base_url` (inline data: URLs aside)."""
        return [
            url for url in self.requests if not url.startswith((base_url + "/", "data:", "blob:"))
        ]


@contextmanager
def offline_chromium() -> Iterator[OfflineBrowser]:
    """Debian's Chromium, headless, with no route out of 127.0.0.1; fails if it is missing."""
    if not Path(CHROMIUM).is_file():
        raise RuntimeError(MISSING)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=OFFLINE_ARGS
        )
        try:
            yield OfflineBrowser(browser)
        finally:
            browser.close()
