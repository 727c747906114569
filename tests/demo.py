"""Helpers of the reference application's tests: the app on a test database under a real
server, a client that holds a page's CSRF token, and waiting for a condition."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx

from aegis_demo.app import create_app
from aegis_demo.jobs import Housekeeping
from aegis_shared.database import DatabaseManager
from tests.http import serve

ADMIN_TOKEN = "test-admin-token-0123456789"
TIMEOUT = 10.0
_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@asynccontextmanager
async def running(
    db: DatabaseManager, *, admin_token: str | None = ADMIN_TOKEN, **options: Any
) -> AsyncIterator[str]:
    """``aegis_demo.app.create_app(db)`` under uvicorn (its lifespan on); yields its URL.
    Housekeeping is left to the test (``Housekeeping.sweep()``) unless it passes one."""
    options.setdefault("housekeeping", Housekeeping(every=timedelta(hours=1)))
    app = create_app(db, admin_token=admin_token, secure_cookie=False, **options)
    async with serve(app, lifespan="on") as base:
        yield base


def csrf_of(html: str) -> str:
    """The CSRF token a page embeds for its script."""
    found = _META.search(html)
    assert found is not None, html[:500]
    return found.group(1)


@asynccontextmanager
async def browser_like(base: str) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """A client that loaded ``/`` as a browser would (cookies kept) and the headers its
    page's script sends on a state change (same origin, the page's CSRF token)."""
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
        page = await client.get("/")
        assert page.status_code == 200
        headers = {
            "X-CSRF-Token": csrf_of(page.text),
            "Origin": base,
            "Sec-Fetch-Site": "same-origin",
        }
        yield client, headers
