"""Seed 002 as a FastAPI service: a fridge per visitor, kept in a server-side session.

Run it on the embedded SQLite default (or set DATABASE_URL)::

    SESSION_COOKIE_SECURE=false uvicorn aegis_demo.fridge.app:app

The session cookie is ``Secure`` (and named ``__Host-session``) by default, which a browser
keeps only over https: ``SESSION_COOKIE_SECURE=false`` opts out for local plain http.
Several workers behind pgbouncer with read replicas (``uvicorn --workers 2``,
``DATABASE_PGBOUNCER``, ``DATABASE_DIRECT_URL``, ``DATABASE_REPLICA_URLS``) is the
"Deploying" section of docs/guide.md: the pure reads may go to a replica, and a visitor
still sees its own changes at once (``ReadYourWritesMiddleware``).

``GET /fridge`` shows the fridge, ``POST /fridge/ingredients`` and ``DELETE
/fridge/ingredients`` change it, ``GET /fridge/events`` follows its changes live (Server-Sent
Events, also across worker processes: another tab sees an ingredient the moment its commit
is done), ``POST /login`` and ``POST /logout`` rotate and end the
session, and ``GET /admin/session-stats`` / ``POST /admin/cleanup-sessions`` are seed 002's
monitoring and cleanup, behind the bearer token ``FRIDGE_ADMIN_TOKEN``
(src/aegis_demo/fridge/admin.py).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from aegis_demo.errors import errors
from aegis_demo.fridge.admin import AdminSettings, CleanupJobs, admin_router
from aegis_demo.fridge.models import FridgeBase, UserFridgeIngredient, UserFridgeSession
from aegis_demo.fridge.service import FridgeService, FridgeUnitOfWork, fridge_channel
from aegis_shared.config import Settings
from aegis_shared.database import DatabaseManager, configure_database
from aegis_shared.events import EventHub, create_event_tables, sweep_events
from aegis_shared.sessions import SessionStore, sweep_sessions
from aegis_shared.web import (
    CSRFTokens,
    HttpSession,
    ReadYourWritesMiddleware,
    SessionMiddleware,
    current_session,
    install_error_handlers,
)
from aegis_shared.web.events import event_stream, last_event_id

__all__ = ["CATALOGUE", "Fridge", "create_app", "fridge_router", "prepare_database"]

#: The ingredients a new database starts with.
CATALOGUE = [
    ("milk", "dairy"),
    ("eggs", "dairy"),
    ("butter", "dairy"),
    ("carrot", "vegetable"),
    ("onion", "vegetable"),
    ("tomato", "vegetable"),
    ("apple", "fruit"),
    ("lemon", "fruit"),
]

CurrentSession = Depends(current_session)

#: Polling bounds of the event hub on SQLite and MariaDB (PostgreSQL is woken by NOTIFY):
#: a change made through another worker process shows within about 50 ms, for one
#: one-row read per process every 50 ms, which these servers do in microseconds.
LIVE_POLL_SECONDS = 0.05

#: Where the session's data keeps the name of its fridge's event channel.
FRIDGE_ID = "fridge_id"


#: An ingredient id as the column can hold it (a 32-bit INTEGER): anything else is a 422,
#: never a value the database rejects with an overflow.
IngredientId = Annotated[int, Field(ge=1, le=2**31 - 1)]


class IngredientIds(BaseModel):
    """A request body naming ingredients."""

    ingredient_ids: list[IngredientId] = Field(min_length=1, max_length=500)


class Login(BaseModel):
    """Who logs in (the example trusts the name: authentication is not its subject)."""

    user: str = Field(min_length=1, max_length=100)


def _fridge_json(rows: list[UserFridgeIngredient]) -> list[dict[str, Any]]:
    return [
        {
            "ingredient_id": row.ingredient_id,
            "name": row.ingredient.name,
            "category": row.ingredient.category,
            "added_at": row.added_at.isoformat(),
        }
        for row in rows
    ]


def channel_of(session: HttpSession) -> str:
    """The session's fridge channel, named on first use; the name lives in the session's
    data, so it survives the new id a login gives the session."""
    fridge_id = session.get(FRIDGE_ID)
    if not isinstance(fridge_id, str):
        fridge_id = secrets.token_urlsafe(12)
        session[FRIDGE_ID] = fridge_id
    return fridge_channel(fridge_id)


async def prepare_database(db: DatabaseManager) -> None:
    """Create the tables if missing and the catalogue's rows (a demo's set-up; a real
    service runs migrations instead). Idempotent, also when several worker processes start
    at once: an ingredient already there (the unique name) is skipped, never doubled."""
    await db.create_all(FridgeBase.metadata)
    await create_event_tables(db)
    async with FridgeUnitOfWork(db) as uow:
        await uow.ingredients.create_many(
            [{"name": name, "category": category} for name, category in CATALOGUE],
            returning=False,
            skip_duplicates=True,
        )
        await uow.commit()


def fridge_router() -> APIRouter:
    """Seed 002's visitor endpoints: the fridge, its live changes, login and logout, the
    catalogue. They need the session middleware (:meth:`Fridge.install`) and the event hub
    in ``app.state.hub`` (:meth:`Fridge.running`)."""
    router = APIRouter(tags=["fridge"])

    @router.get("/fridge")
    async def show_fridge(session: HttpSession = CurrentSession) -> dict[str, Any]:
        """The visitor's fridge (empty, and no session created, for a new visitor)."""
        key = session.key
        # A pure read: a replica may answer, once it has this visitor's last write.
        rows = await FridgeService.get_session_ingredients(key, read_only=True) if key else []
        return {"user": session.get("user"), "ingredients": _fridge_json(rows)}

    @router.post("/fridge/ingredients")
    async def add_ingredients(
        body: IngredientIds, session: HttpSession = CurrentSession
    ) -> dict[str, Any]:
        """Put ingredients in the fridge (one already there stays as it is); answers with
        the fridge's contents."""
        key = await session.ensure()
        channel = channel_of(session)
        await FridgeService.add_ingredients(key, body.ingredient_ids, channel=channel)
        rows = await FridgeService.get_session_ingredients(key)
        return {"user": session.get("user"), "ingredients": _fridge_json(rows)}

    @router.delete("/fridge/ingredients")
    async def remove_ingredients(
        body: IngredientIds, session: HttpSession = CurrentSession
    ) -> dict[str, int]:
        """Take ingredients out of the fridge."""
        key = session.key
        if key is None:
            return {"removed": 0}
        channel = channel_of(session)
        removed = await FridgeService.remove_ingredients(key, body.ingredient_ids, channel=channel)
        return {"removed": removed}

    async def follow(
        request: Request,
        session: HttpSession = CurrentSession,
        after: int | None = Depends(last_event_id),
    ) -> tuple[str, int, ServerSentEvent | None]:
        """What ``/fridge/events`` streams: its channel, the position it starts after and,
        on a first connection, a snapshot of the fridge. A dependency, so that a visitor
        without a fridge gets a real 404 and a failed read a real 503: once the stream's
        generator runs, the response is already a 200."""
        key = session.key
        if key is None:
            raise HTTPException(404, "No fridge yet: add an ingredient first, then follow it.")
        channel = channel_of(session)
        if after is not None:  # a reconnecting EventSource: replay what it missed
            return channel, after, None
        # Snapshot, then follow: the position first, so a change that commits while the
        # snapshot is read is in both (the events are idempotent) rather than in neither.
        hub: EventHub = request.app.state.hub
        position = await hub.latest_position(channel)
        # On the primary, like the position: a lagging replica could miss a change at or
        # before it, which the stream would then never send.
        rows = await FridgeService.get_session_ingredients(key)
        snapshot = ServerSentEvent(
            event="snapshot", data={"ingredients": _fridge_json(rows)}, id=str(position)
        )
        return channel, position, snapshot

    @router.get(
        "/fridge/events",
        response_class=EventSourceResponse,
        responses=errors((404, "No fridge yet: add an ingredient first.")),
    )
    async def fridge_events(
        request: Request, start: tuple[str, int, ServerSentEvent | None] = Depends(follow)
    ) -> AsyncIterator[ServerSentEvent]:
        """The fridge's changes as Server-Sent Events: a ``snapshot`` event first, then
        ``{"added": [ids]}`` and ``{"removed": [ids]}`` as they commit, from any worker
        process. Each carries its position as ``id``, so a reconnecting ``EventSource``
        resumes where it stopped, nothing missed. It holds no database connection while
        it waits."""
        channel, after, snapshot = start
        if snapshot is not None:
            yield snapshot
        async for message in event_stream(request.app.state.hub, channel, after=after):
            yield message

    @router.post("/login", responses=errors((409, "The session ended meanwhile.")))
    async def login(body: Login, session: HttpSession = CurrentSession) -> dict[str, str]:
        """Remember the user and give the session a new id (the fridge stays)."""
        session["user"] = body.user
        if not await session.rotate():
            # The session ended (a logout, its absolute lifetime) while this request ran:
            # nothing is saved, and the login must not be reported as done.
            raise HTTPException(409, "The session ended meanwhile; log in again.")
        return {"user": body.user}

    @router.post("/logout")
    async def logout(session: HttpSession = CurrentSession) -> dict[str, str]:
        """End the session on the server (its fridge goes with it) and clear the cookie."""
        await session.invalidate()
        return {"detail": "logged out"}

    @router.get("/ingredients")
    async def catalogue() -> list[dict[str, Any]]:
        """Every ingredient that can go in a fridge."""
        async with FridgeUnitOfWork(read_only=True) as uow:  # may read on a replica
            items = await uow.ingredients.list(order_by="id", limit=500)
        return [{"id": i.id, "name": i.name, "category": i.category} for i in items]

    return router


@dataclass
class Fridge:
    """The fridge's parts, for any app that serves it: its session store, the cleanup jobs
    and the admin token. :func:`create_app` is the fridge alone; ``aegis_demo.app``
    serves it beside the other seeds."""

    db: DatabaseManager
    sessions: SessionStore
    token: str | None
    jobs: CleanupJobs
    sweep_every: timedelta

    @classmethod
    def build(
        cls,
        db: DatabaseManager,
        *,
        store: SessionStore | None = None,
        sweep_every: timedelta = timedelta(minutes=10),
        admin_token: str | None = None,
    ) -> Fridge:
        """The parts on ``db``. ``admin_token`` defaults to ``FRIDGE_ADMIN_TOKEN``; without
        one the admin endpoints answer 403."""
        sessions = store or SessionStore(db, UserFridgeSession)
        if admin_token is None:
            secret = AdminSettings().admin_token
            admin_token = None if secret is None else secret.get_secret_value()
        token = admin_token or None  # an empty token would let an empty guess in
        return cls(db, sessions, token, CleanupJobs(sessions), sweep_every)

    def install(
        self, app: FastAPI, *, secure_cookie: bool, csrf_tokens: CSRFTokens | None = None
    ) -> None:
        """Add the session and read-your-writes middlewares, the error handlers and the
        fridge's routes (the admin ones included) to ``app``. ``csrf_tokens`` makes every
        unsafe request also carry the form token (pages with forms); the origin check of
        the session middleware runs either way."""
        app.add_middleware(
            SessionMiddleware, store=self.sessions, secure=secure_cookie, csrf_tokens=csrf_tokens
        )
        # Outermost (added last), so that its token follows the session middleware's commit;
        # with DATABASE_REPLICA_URLS a visitor's reads then see its own writes at once.
        app.add_middleware(ReadYourWritesMiddleware, db=self.db, secure=secure_cookie)
        install_error_handlers(app)
        app.include_router(fridge_router())
        app.include_router(admin_router(self.sessions, self.token, self.jobs))

    @asynccontextmanager
    async def running(self, app: FastAPI, *, prepare: bool = True) -> AsyncIterator[EventHub]:
        """The tables and catalogue (unless ``prepare=False``: the caller made them), the
        event hub (``app.state.hub``) and the sweepers of expired sessions and old events,
        while the block runs (an app's lifespan)."""
        if prepare:
            await prepare_database(self.db)
        hub = EventHub.from_settings(
            self.db, poll_min=LIVE_POLL_SECONDS, poll_max=LIVE_POLL_SECONDS
        )
        # The event log keeps a week of changes (EVENTS_RETENTION_*), trimmed in the
        # background like expired sessions.
        try:
            async with (
                hub,
                sweep_sessions(self.sessions, every=self.sweep_every),
                sweep_events(self.db),
            ):
                app.state.hub = hub
                yield hub
        finally:
            await self.jobs.stop()


def create_app(
    db: DatabaseManager | None = None,
    *,
    store: SessionStore | None = None,
    sweep_every: timedelta = timedelta(minutes=10),
    admin_token: str | None = None,
    secure_cookie: bool | None = None,
) -> FastAPI:
    """The fridge service on ``db`` (default: from the environment, ``DATABASE_URL``).

    The admin endpoints need ``admin_token`` (default: ``FRIDGE_ADMIN_TOKEN``) as a bearer
    token; without one they answer 403. ``secure_cookie`` makes the session cookie
    ``Secure``; by default it comes from ``SESSION_COOKIE_SECURE`` (true unless set to
    false, for local plain http).
    """
    if secure_cookie is None:
        secure_cookie = Settings().session_cookie_secure
    manager = db or DatabaseManager.from_settings()
    fridge = Fridge.build(manager, store=store, sweep_every=sweep_every, admin_token=admin_token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_database(manager)
        try:
            async with fridge.running(app):
                yield
        finally:
            await manager.close()

    app = FastAPI(title="aegis-shared fridge (seed 002)", lifespan=lifespan)
    fridge.install(app, secure_cookie=secure_cookie)
    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn aegis_demo.fridge.app:app`` builds the app on first access, not on import.
    if name == "app":
        return create_app()
    raise AttributeError(name)
