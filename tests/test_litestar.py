"""``aegis_shared.litestar`` in a real Litestar app under uvicorn on loopback, on SQLite and
PostgreSQL: the plugin's lifespan, one session per request shared by the authentication
middleware, a guard, dependencies and the handler (seed 004's ``current_user_from_token``
through ``provide_services(connection=...)``), the three session sources and their
lifecycles, seed 004's job, our error bodies, and a commit that fails at the request
boundary answering 500, never the handler's 2xx."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.params import FromPath, JSONBody
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.config import Settings
from aegis_shared.database import DatabaseManager, provide_services
from aegis_shared.database.registry import peek_database
from aegis_shared.errors.exceptions import IntegrityViolationError
from aegis_shared.litestar import AegisPlugin
from aegis_shared.web.errors import MESSAGES
from tests.conftest import MakeDb
from tests.deferred_models import Book, DeferredBase, Shelf
from tests.http import serve
from tests.models import Base, UserAccessLog, UserRepository
from tests.models import User as AppUser
from tests.seed004 import (
    Token,
    UsersService,
    cleanup_auth_tokens,
    current_user_from_token,
    provide_roles_service,
    provide_users_service,
)

on_sqlite_and_postgres = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
#: The Litestar code of these tests (and of the guide) marks what Litestar injects, as
#: Litestar 3 will require: a deprecation warning from Litestar fails the test.
strict_litestar = pytest.mark.filterwarnings(
    "error::litestar.exceptions.LitestarDeprecationWarning"
)
pytestmark = strict_litestar


# -- seed 004's guard (tests/seed004.py) in an authentication middleware ----------------


class BearerAuth(AbstractAuthenticationMiddleware):
    """Stands in for the seed's JWT auth: the bearer token is the user's email."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        scheme, _, value = connection.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise NotAuthorizedException("Send Authorization: Bearer <token>")
        user = await current_user_from_token(Token(sub=value), connection)
        async with provide_services(provide_users_service, connection=connection) as (users,):
            connection.state.auth_session = users.session  # what the handler compares
        if user is None:
            raise NotAuthorizedException("Unknown or inactive user")
        return AuthenticationResult(user=user, auth=value)


async def has_posts(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard on the request's session: the user must have a role (a post here)."""
    async with provide_services(provide_users_service, connection=connection) as (users,):
        count = await users.session.scalar(
            text("SELECT count(*) FROM posts WHERE user_id = :id"), {"id": connection.user.id}
        )
    connection.state.guard_session = users.session
    if not count:
        raise NotAuthorizedException("This user has no role yet")


# -- the app -----------------------------------------------------------------------------


@get("/me", guards=[has_posts])
async def me(
    request: Request[AppUser, str, Any],
    db_session: NamedDependency[AsyncSession],
    users: NamedDependency[UsersService],
) -> dict[str, Any]:
    return {
        "email": request.user.email,
        # One session for the whole request: the middleware's user, the guard, the
        # dependency chain and the handler's parameter.
        "same": [
            request.state.auth_session is db_session,
            request.state.guard_session is db_session,
            users.session is db_session,
        ],
    }


@post("/users", exclude_from_auth=True)
async def create_user(
    request: Request[Any, Any, Any],
    data: JSONBody[dict[str, str]],
    db_session: NamedDependency[AsyncSession],
) -> dict[str, Any]:
    async with provide_services(
        provide_users_service, provide_roles_service, connection=request
    ) as (users, roles):
        user = await users.create({"email": data["email"], "name": data["name"]})
        if data.get("role"):
            await roles.create(user, data["role"])
    # Not closed by provide_services, and not committed: the request boundary commits.
    count = await db_session.scalar(select(func.count()).select_from(AppUser))
    return {
        "same": users.session is db_session and roles.session is db_session,
        "count": count,
        "in_transaction": db_session.in_transaction(),
    }


@post("/users/refused", exclude_from_auth=True)
async def refused(request: Request[Any, Any, Any], data: JSONBody[dict[str, str]]) -> None:
    """Writes through all three sources, then answers 409. (The request's own write comes
    last: on SQLite its open write transaction would hold off the others'.)"""
    async with provide_services(provide_users_service) as (own,):
        # Standalone: its own session, committed when the block ends, then closed.
        own.session.add(UserAccessLog(user_id=1, path="/standalone"))
    db = peek_database()
    assert db is not None
    explicit = db.session_factory()
    try:
        async with provide_services(provide_users_service, session=explicit) as (mine,):
            await mine.create({"email": "explicit@example.com", "name": "Explicit"})
        # Explicit: provide_services neither committed nor closed it; its owner decides.
        still_open = explicit.in_transaction()
        await explicit.rollback()
    finally:
        await explicit.close()
    async with provide_services(provide_users_service, connection=request) as (users,):
        await users.create({"email": data["email"], "name": "Request"})
    closed = True
    try:
        await own.session.execute(select(1))
        closed = False
    except Exception:
        pass
    raise HTTPException(
        status_code=409, detail=f"standalone closed={closed}, explicit open={still_open}"
    )


@get("/users/{user_id:int}", exclude_from_auth=True)
async def read_user(
    user_id: FromPath[int], db_session: NamedDependency[AsyncSession]
) -> dict[str, str]:
    user = await UserRepository(db_session).get_one(user_id)
    return {"email": user.email}


@post("/books", exclude_from_auth=True)
async def add_book(
    data: JSONBody[dict[str, int]], db_session: NamedDependency[AsyncSession]
) -> dict[str, str]:
    db_session.add(Book(shelf_id=data["shelf_id"]))
    await db_session.flush()  # the shelf is not checked before COMMIT
    return {"status": "saved"}


@post("/users/killed", exclude_from_auth=True)
async def killed(db_session: NamedDependency[AsyncSession]) -> dict[str, str]:
    """Flushes a user, then has PostgreSQL end this session's backend before the commit."""
    await UserRepository(db_session).create({"email": "killed@example.com", "name": "K"})
    pid = await db_session.scalar(text("SELECT pg_backend_pid()"))
    db = peek_database()
    assert db is not None
    async with db.session() as other:
        await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return {"status": "saved"}


@post("/jobs/cleanup", exclude_from_auth=True)
async def run_cleanup() -> dict[str, int]:
    return await cleanup_auth_tokens(None)


@get("/misuse", exclude_from_auth=True)
async def misuse(
    request: Request[Any, Any, Any], db_session: NamedDependency[AsyncSession]
) -> list[str]:
    """Seed 004's errors, raised before any session is touched."""
    messages = []
    for call in (
        lambda: provide_services(),
        lambda: provide_services(provide_users_service, session=db_session, connection=request),
    ):
        try:
            call()
        except ValueError as exc:
            messages.append(str(exc))
    return messages


@get("/no-plugin")
async def no_plugin(request: Request[Any, Any, Any]) -> str:
    try:
        async with provide_services(provide_users_service, connection=request):
            return "served"
    except RuntimeError as exc:
        return str(exc)


async def users_dependency(
    db_session: NamedDependency[AsyncSession],
) -> AsyncIterator[UsersService]:
    """Seed 004's provider as a Litestar dependency (Litestar 3 wants the marker on the
    parameter it injects, which the seed's plain signature lacks)."""
    async for service in provide_users_service(db_session):
        yield service


def make_app(db: DatabaseManager | None = None, **plugin: Any) -> Litestar:
    plugin.setdefault("close_on_shutdown", False)
    return Litestar(
        route_handlers=[me, create_user, refused, read_user, add_book, killed, run_cleanup, misuse],
        dependencies={"users": Provide(users_dependency)},
        middleware=[DefineMiddleware(BearerAuth, exclude_from_auth_key="exclude_from_auth")],
        plugins=[AegisPlugin(db, **plugin)],
        logging_config=None,  # Litestar's default would replace the test run's log handlers
    )


async def count(db: DatabaseManager, model: Any) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


# -- tests -------------------------------------------------------------------------------


@on_sqlite_and_postgres
async def test_one_session_per_request_for_middleware_guard_dependencies_and_handler(
    db: DatabaseManager,
) -> None:
    async with (
        serve(make_app(db), lifespan="on") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        created = await client.post(
            "/users", json={"email": "ada@example.com", "name": "Ada", "role": "admin"}
        )
        assert created.status_code == 201
        # Uncommitted while the handler ran; committed when the response started.
        assert created.json() == {"same": True, "count": 1, "in_transaction": True}

        response = await client.get("/me", headers={"Authorization": "Bearer ada@example.com"})
        assert response.status_code == 200
        assert response.json() == {"email": "ada@example.com", "same": [True, True, True]}

        unknown = await client.get("/me", headers={"Authorization": "Bearer eve@example.com"})
        assert unknown.status_code == 401
        await client.post("/users", json={"email": "bob@example.com", "name": "Bob"})
        no_role = await client.get("/me", headers={"Authorization": "Bearer bob@example.com"})
        assert no_role.status_code == 401  # the guard refused, on the request's session
    assert await count(db, AppUser) == 2
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_three_session_sources_and_their_lifecycles(db: DatabaseManager) -> None:
    async with (
        serve(make_app(db), lifespan="on") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post("/users/refused", json={"email": "gone@example.com"})

    assert response.status_code == 409
    assert response.json()["detail"] == "standalone closed=True, explicit open=True"
    # Request-scoped: rolled back with the 409. Explicit: rolled back by its owner.
    # Standalone: committed by its own block, whatever the request did afterwards.
    assert await count(db, AppUser) == 0
    async with db.session() as session:
        paths = (await session.scalars(select(UserAccessLog.path))).all()
    assert list(paths) == ["/standalone"]
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_seed_004_job_runs_standalone_in_and_out_of_a_request(db: DatabaseManager) -> None:
    async with db.session() as session:
        for path in ("/verify", "/reset", "/refresh", "/refresh", "/x", "/verify", "/refresh"):
            session.add(UserAccessLog(user_id=1, path=path))

    async with (
        serve(make_app(db), lifespan="on") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post("/jobs/cleanup")
    assert response.status_code == 201
    assert response.json() == {"verification": 2, "reset": 1, "refresh": 3}
    assert await cleanup_auth_tokens(None) == {"verification": 0, "reset": 0, "refresh": 0}
    async with db.session() as session:
        assert list((await session.scalars(select(UserAccessLog.path))).all()) == ["/x"]


@on_sqlite_and_postgres
async def test_error_handlers_answer_safe_bodies(db: DatabaseManager) -> None:
    async with (
        serve(make_app(db), lifespan="on") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        await client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
        missing = await client.get("/users/42")
        duplicate = await client.post("/users", json={"email": "ada@example.com", "name": "Twin"})

    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "detail": "User with id 42 not found"}
    assert duplicate.status_code == 409
    assert duplicate.json() == {
        "error": "duplicate",
        "detail": MESSAGES["duplicate"],
        "fields": ["email"],
    }
    assert await count(db, AppUser) == 1


@on_sqlite_and_postgres
async def test_error_statuses_are_configurable(db: DatabaseManager) -> None:
    app = make_app(db, statuses={IntegrityViolationError: 422})
    async with serve(app, lifespan="on") as base, httpx.AsyncClient(base_url=base) as client:
        await client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
        duplicate = await client.post("/users", json={"email": "ada@example.com", "name": "Twin"})
    assert duplicate.status_code == 422
    assert duplicate.json()["error"] == "duplicate"
    with pytest.raises(TypeError, match="DatabaseError subclasses"):
        make_app(db, statuses={ValueError: 422})


@on_sqlite_and_postgres
async def test_a_commit_that_fails_at_the_request_boundary_is_a_500_with_a_safe_body(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db = await make_db(Base.metadata, DeferredBase.metadata)
    async with db.session() as session:
        session.add(Shelf(id=1))

    with caplog.at_level(logging.ERROR, logger="aegis_shared.web"):
        async with (
            serve(make_app(db), lifespan="on") as base,
            httpx.AsyncClient(base_url=base) as client,
        ):
            good = await client.post("/books", json={"shelf_id": 1})
            bad = await client.post("/books", json={"shelf_id": 999})

    assert good.status_code == 201
    # The handler answered 201, but its COMMIT failed: the client is told, never a 2xx.
    assert bad.status_code == 500
    assert bad.json() == {"error": "invalid_reference", "detail": MESSAGES["invalid_reference"]}
    for secret in ("deferred_books", "deferred_shelves", "shelf_id", "999", "FOREIGN", "foreign"):
        assert secret not in bad.text
    assert bad.headers["cache-control"] == "no-store"
    assert "commit at the end of the request answered 500" in caplog.text
    assert await count(db, Book) == 1
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_a_connection_killed_before_the_commit_is_a_5xx_and_saves_nothing(
    db: DatabaseManager, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    async with (
        serve(make_app(db), lifespan="on") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.post("/users/killed")
        after = await client.post("/users", json={"email": "next@example.com", "name": "Next"})

    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["detail"] == MESSAGES[body["error"]]
    assert "killed@example.com" not in response.text
    assert after.status_code == 201  # one dead connection, replaced; the app goes on
    assert await count(db, AppUser) == 1
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_lifespan_configures_from_settings_and_closes_on_shutdown(
    make_db: MakeDb, db_url: URL
) -> None:
    await make_db(default=False)
    settings = Settings(database_url=db_url.render_as_string(hide_password=False))
    app = make_app(settings=settings, close_on_shutdown=True)
    assert peek_database() is None
    async with serve(app, lifespan="on") as base, httpx.AsyncClient(base_url=base) as client:
        db = peek_database()
        assert db is not None
        created = await client.post("/users", json={"email": "cfg@example.com", "name": "Cfg"})
        assert created.status_code == 201
        assert await count(db, AppUser) == 1
    assert peek_database() is None
    assert db.closed


@on_sqlite_and_postgres
async def test_provide_services_keeps_seed_004_errors_and_needs_the_plugin(
    db: DatabaseManager,
) -> None:
    bare = Litestar(route_handlers=[no_plugin], logging_config=None)
    async with (
        serve(make_app(db), lifespan="on") as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.get("/misuse")
    async with serve(bare) as base, httpx.AsyncClient(base_url=base) as client:
        without = await client.get("/no-plugin")
    assert response.json() == [
        "At least one service provider is required",
        "Cannot provide both 'session' and 'connection' - choose one",
    ]
    assert "no request-scoped database session" in without.text
    assert "AegisPlugin()" in without.text
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_plugin_refuses_db_and_settings_together(db: DatabaseManager) -> None:
    with pytest.raises(ValueError, match="not both"):
        AegisPlugin(db, settings=Settings())


def test_the_litestar_package_needs_neither_starlette_nor_fastapi() -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = sys.modules['fastapi'] = None  # importing them fails\n"
        "import aegis_shared.litestar, aegis_shared.litestar.plugin\n"
        "from aegis_shared.web import HttpSession, SessionMiddleware\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
