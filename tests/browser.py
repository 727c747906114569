"""A real headless Chromium for the page tests: Debian's ``chromium`` package driven by
Playwright for Python through ``executable_path`` (never ``playwright install``, which
downloads a browser build of its own).

``.ci/run`` installs the package when it is missing; elsewhere the browser tests skip
with one line saying how to get it, and under ``CI=true`` a missing chromium fails them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, Response, async_playwright

from tests.conftest import IN_CI

INSTALL_HINT = "chromium not found: apt-get install chromium"


def chromium() -> str | None:
    """Debian's chromium executable, or None."""
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium for one test."""
    executable = chromium()
    if executable is None:
        if IN_CI:
            pytest.fail(f"{INSTALL_HINT} (CI=true requires it)", pytrace=False)
        pytest.skip(INSTALL_HINT)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Problems:
    """What went wrong on the pages watched: console errors, uncaught exceptions, failed
    requests and error answers. A request the browser cancelled itself (the page left while
    it loaded, an event stream closed) is no problem."""

    found: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> Page:
        """Record ``page``'s problems from now on; returns it."""
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.found.append(f"page error: {error}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.found.append(f"console {message.type}: {message.text}")

    def _failed(self, request: Request) -> None:
        if request.failure == "net::ERR_ABORTED":
            # The browser cancelled the request itself: the page was left (a reload, a new
            # URL) while it loaded, say the favicon, or closed its event stream. A server's
            # failure shows as an HTTP status or as another net:: error.
            return
        self.found.append(f"failed: {request.method} {request.url} {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.found.append(f"HTTP {response.status}: {response.request.method} {response.url}")
