"""The reference application: every seed in one FastAPI service (``aegis demo``).

- seed 002: the fridge on server-side sessions, under its own paths (``/fridge``,
  ``/fridge/events``, ``/login``, ``/logout``, ``/ingredients``, ``/admin/...``);
- seed 003: posts with comments and the chat token stream (``/api/v1/...``);
- seed 000: an access log of every request, written by ``BackgroundUnitOfWork`` on the
  background pool after the answer (:mod:`aegis_demo.access_log`);
- seed 004: a housekeeping job on ``provide_services(...)`` (:mod:`aegis_demo.jobs`);
- the pages (``/``, ``/my-fridge``, ``/posts``, ``/chat``, ``/operator``) and ``/docs``,
  offline.

Run it with ``python -m aegis_demo`` (or ``uvicorn aegis_demo.app:app``). The tables and
seed data are made on first start (:mod:`aegis_demo.seed`), on the embedded SQLite file
by default or on ``DATABASE_URL`` (PostgreSQL, MariaDB).

Settings: ``FRIDGE_ADMIN_TOKEN`` switches on the admin endpoints and the operator panel;
``SESSION_COOKIE_SECURE=false`` for plain http (``python -m aegis_demo`` does that on the
loopback interface only); ``DEMO_CSRF_SECRET`` is the key of the CSRF tokens, which every
worker process must share (without it each process makes its own, which is right for one).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from aegis_demo import posts
from aegis_demo.access_log import AccessLogMiddleware, AccessLogWriter
from aegis_demo.fridge.app import Fridge
from aegis_demo.jobs import Housekeeping
from aegis_demo.realtime import app as realtime
from aegis_demo.seed import prepare
from aegis_demo.web.docs import install_docs
from aegis_demo.web.operator import Operator, operator_router
from aegis_demo.web.pages import install_error_pages, page_router, static_directory
from aegis_demo.web.security import SecurityHeadersMiddleware
from aegis_shared.config import Settings
from aegis_shared.database import DatabaseManager, configure_database
from aegis_shared.web import CSRFTokens, DatabaseSessionMiddleware

__all__ = ["DemoSettings", "create_app"]

logger = logging.getLogger("aegis_demo")


class DemoSettings(BaseSettings):
    """``DEMO_CSRF_SECRET``: the CSRF tokens' key (at least 32 bytes), shared by workers."""

    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore")

    csrf_secret: SecretStr | None = None


def _csrf_secret() -> str:
    secret = DemoSettings().csrf_secret
    if secret is not None:
        return secret.get_secret_value()
    # Right for one process; several workers each making their own would refuse each
    # other's tokens, so python -m aegis_demo sets DEMO_CSRF_SECRET for all of them.
    return secrets.token_urlsafe(32)


def create_app(
    db: DatabaseManager | None = None,
    *,
    admin_token: str | None = None,
    secure_cookie: bool | None = None,
    housekeeping: Housekeeping | None = None,
) -> FastAPI:
    """The reference application on ``db`` (default: from the environment,
    ``DATABASE_URL``; unset, the embedded SQLite file).

    ``admin_token`` (default ``FRIDGE_ADMIN_TOKEN``) opens the admin endpoints (as a
    bearer token) and the operator panel; without one both stay off. ``secure_cookie``
    marks the cookies ``Secure`` (default ``SESSION_COOKIE_SECURE``, true: browsers keep
    them over https only). A ``db`` passed in is left open at shutdown (its owner closes
    it); one made here is closed. ``housekeeping`` replaces the default job (tests run it sooner).
    """
    if secure_cookie is None:
        secure_cookie = Settings().session_cookie_secure
    manager = db or DatabaseManager.from_settings()
    owned = db is None  # a manager passed in stays its owner's to close
    fridge = Fridge.build(manager, admin_token=admin_token)
    writer = AccessLogWriter()
    job = housekeeping or Housekeeping()
    operator = Operator(fridge, writer, job)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_database(manager)
        try:
            await prepare(manager)
            async with fridge.running(app, prepare=False):
                job.start()
                try:
                    yield
                finally:
                    await job.stop()
                    await writer.drain()
        finally:
            if owned:
                await manager.close()

    app = FastAPI(
        title="aegis-shared reference application",
        description="Every seed of aegis-shared in one service: the fridge on server-side "
        "sessions, posts and the chat stream, the access log, a background job.",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    tokens = CSRFTokens(_csrf_secret(), secure=secure_cookie)
    fridge.install(app, secure_cookie=secure_cookie, csrf_tokens=tokens)
    app.include_router(realtime.router)
    app.include_router(posts.router)
    app.include_router(operator_router(operator))
    app.include_router(page_router())
    app.mount("/static", StaticFiles(directory=static_directory()), name="static")
    install_docs(app, favicon_url="/static/favicon.svg")
    # Outermost: the access log sees every answer (a refused CSRF check too), and every
    # answer gets the security headers.
    # One lazily opened session per request, for get_session and seed 004's
    # provide_services(connection=request); committed before the answer starts.
    app.add_middleware(DatabaseSessionMiddleware, db=manager)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(AccessLogMiddleware, writer=writer)

    install_error_pages(app)  # after the fridge's install_error_handlers
    app.state.access_log = writer
    app.state.housekeeping = job
    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn aegis_demo.app:app`` builds the app on first access, not on import.
    if name == "app":
        return create_app()
    raise AttributeError(name)
