"""The data layer inside a real FastAPI app, over a real HTTP client, on every backend.

Requests go through ``httpx.AsyncClient`` with ``httpx.ASGITransport``: the whole ASGI app
(middleware, dependencies with ``yield``, exception handlers, background tasks) has run by
the time the response is returned, so what the database holds afterwards is what the
request left behind.
"""

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import (
    DatabaseManager,
    UnitOfWork,
    configure_database,
    get_background_session,
    get_session,
    reset_database,
)
from aegis_shared.errors.exceptions import DatabaseNotConfiguredError
from aegis_shared.web import DatabaseSessionMiddleware, install_error_handlers
from tests.models import AppUnitOfWork, User, UserAccessLog, UserRepository

MakeDb = Callable[..., Awaitable[DatabaseManager]]

SessionDep = Depends(get_session)
BackgroundSessionDep = Depends(get_background_session)


def _client(app: FastAPI, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def _emails(db: DatabaseManager) -> list[str]:
    async with db.session() as session:
        return list((await session.scalars(select(User.email).order_by(User.id))).all())


def _app(*, middleware: bool = False, error_handlers: bool = False) -> FastAPI:
    app = FastAPI()
    if middleware:
        app.add_middleware(DatabaseSessionMiddleware)
    if error_handlers:
        install_error_handlers(app)
    return app


# -- get_session: one session per request --------------------------------------------------


async def test_get_session_is_shared_by_the_dependencies_of_one_request(
    db: DatabaseManager,
) -> None:
    seen: list[AsyncSession] = []

    async def users_repository(session: AsyncSession = SessionDep) -> UserRepository:
        return UserRepository(session)

    async def current_session(session: AsyncSession = SessionDep) -> AsyncSession:
        return session

    app = _app()

    @app.post("/users")
    async def create(
        repo: UserRepository = Depends(users_repository),  # noqa: B008
        other: AsyncSession = Depends(current_session),  # noqa: B008
        session: AsyncSession = SessionDep,
    ) -> dict[str, Any]:
        seen.append(session)
        user = await repo.create({"email": f"u{len(seen)}@example.com", "name": "U"})
        # The second dependency's session sees the first one's uncommitted row: same session.
        found = await other.scalar(select(func.count()).select_from(User))
        await session.commit()
        return {"same": repo.session is other is session, "count": found, "id": user.id}

    async with _client(app) as client:
        first = await client.post("/users")
        second = await client.post("/users")

    assert first.status_code == second.status_code == 200
    assert first.json()["same"] is True
    assert first.json()["count"] == 1
    assert second.json()["count"] == 2
    assert len(seen) == 2
    assert seen[0] is not seen[1]  # a new session for each request
    assert await _emails(db) == ["u1@example.com", "u2@example.com"]
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_handler_that_writes_then_raises_leaves_nothing(db: DatabaseManager) -> None:
    app = _app()

    @app.post("/users")
    async def create(session: AsyncSession = SessionDep) -> None:
        user = await UserRepository(session).create({"email": "a@example.com", "name": "A"})
        assert user.id is not None  # the INSERT reached the database
        raise RuntimeError("handler failed after writing")

    async with _client(app, raise_app_exceptions=False) as client:
        response = await client.post("/users")

    assert response.status_code == 500
    assert await _emails(db) == []
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_handler_that_writes_then_raises_http_exception_leaves_nothing(
    db: DatabaseManager,
) -> None:
    app = _app()

    @app.post("/users")
    async def create(session: AsyncSession = SessionDep) -> None:
        await UserRepository(session).create({"email": "a@example.com", "name": "A"})
        raise HTTPException(status_code=422, detail="rejected")

    async with _client(app) as client:
        response = await client.post("/users")

    assert response.status_code == 422
    assert await _emails(db) == []


async def test_uncommitted_work_is_rolled_back_when_the_request_ends(
    db: DatabaseManager,
) -> None:
    app = _app()

    @app.post("/users")
    async def create(session: AsyncSession = SessionDep) -> dict[str, Any]:
        user = await UserRepository(session).create({"email": "a@example.com", "name": "A"})
        return {"id": user.id, "in_transaction": session.in_transaction()}

    async with _client(app) as client:
        response = await client.post("/users")

    assert response.status_code == 200
    assert response.json()["id"] is not None  # written, in the request's open transaction
    assert response.json()["in_transaction"] is True
    assert await _emails(db) == []
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_handler_that_commits_persists(db: DatabaseManager) -> None:
    app = _app()

    @app.post("/users")
    async def create(session: AsyncSession = SessionDep) -> dict[str, Any]:
        user = await UserRepository(session).create({"email": "a@example.com", "name": "A"})
        await session.commit()
        return {"id": user.id}

    async with _client(app) as client:
        response = await client.post("/users")

    assert response.status_code == 200
    async with db.session() as session:
        stored = await UserRepository(session).get_by_id(response.json()["id"])
    assert stored is not None
    assert stored.email == "a@example.com"


async def test_unit_of_work_in_a_handler_commits_independently_of_the_request(
    db: DatabaseManager,
) -> None:
    app = _app()

    @app.post("/logs")
    async def create() -> dict[str, Any]:
        async with AppUnitOfWork() as uow:
            await uow.user_access_logs.create({"user_id": 1, "path": "/kept"})
            await uow.commit()
        async with AppUnitOfWork() as uow:
            await uow.user_access_logs.create({"user_id": 1, "path": "/dropped"})
        return {}

    async with _client(app) as client:
        assert (await client.post("/logs")).status_code == 200

    async with db.session() as session:
        paths = (await session.scalars(select(UserAccessLog.path))).all()
    assert list(paths) == ["/kept"]


# -- DatabaseSessionMiddleware ------------------------------------------------------------


async def test_middleware_commits_when_the_status_is_below_400(db: DatabaseManager) -> None:
    app = _app(middleware=True)

    @app.post("/users", status_code=201)
    async def create(session: AsyncSession = SessionDep) -> dict[str, Any]:
        await UserRepository(session).create({"email": "a@example.com", "name": "A"})
        return {}

    async with _client(app) as client:
        response = await client.post("/users")

    assert response.status_code == 201
    assert await _emails(db) == ["a@example.com"]
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_middleware_rolls_back_when_the_status_is_400_or_more(db: DatabaseManager) -> None:
    app = _app(middleware=True)

    @app.post("/users")
    async def create(session: AsyncSession = SessionDep) -> None:
        await UserRepository(session).create({"email": "a@example.com", "name": "A"})
        raise HTTPException(status_code=409, detail="conflict")

    @app.post("/rejected")
    async def rejected(session: AsyncSession = SessionDep) -> Any:
        await UserRepository(session).create({"email": "b@example.com", "name": "B"})
        return JSONResponse({"detail": "bad"}, status_code=400)

    @app.post("/crash")
    async def crash(session: AsyncSession = SessionDep) -> None:
        await UserRepository(session).create({"email": "c@example.com", "name": "C"})
        raise RuntimeError("crash")

    async with _client(app, raise_app_exceptions=False) as client:
        conflict = await client.post("/users")
        bad = await client.post("/rejected")
        crashed = await client.post("/crash")

    assert conflict.status_code == 409
    assert conflict.json() == {"detail": "conflict"}
    assert bad.status_code == 400
    assert crashed.status_code == 500
    assert await _emails(db) == []
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_middleware_streaming_response_holds_no_pooled_connection(
    db: DatabaseManager,
) -> None:
    app = _app(middleware=True)

    @app.post("/stream")
    async def stream(session: AsyncSession = SessionDep) -> StreamingResponse:
        await UserRepository(session).create({"email": "a@example.com", "name": "A"})
        assert db.pool_status()["main"]["checked_out"] == 1  # the handler holds one

        async def body() -> AsyncIterator[bytes]:
            yield f"checked_out={db.pool_status()['main']['checked_out']}\n".encode()
            # Code that runs while the response streams opens its own unit of work; the
            # request's write is already committed.
            async with UnitOfWork() as uow:
                count = await uow.session.scalar(select(func.count()).select_from(User))
            yield f"committed={count}\n".encode()

        return StreamingResponse(body(), media_type="text/plain")

    async with _client(app) as client:
        response = await client.post("/stream")

    assert response.status_code == 200
    assert response.text == "checked_out=0\ncommitted=1\n"
    assert await _emails(db) == ["a@example.com"]


async def test_function_scoped_get_session_releases_before_streaming(
    db: DatabaseManager,
) -> None:
    # Without the middleware, Depends(get_session, scope="function") ends the session when
    # the handler returns, before the body streams.
    app = _app()

    @app.post("/stream")
    async def stream(
        session: AsyncSession = Depends(get_session, scope="function"),  # noqa: B008
    ) -> StreamingResponse:
        await UserRepository(session).create({"email": "a@example.com", "name": "A"})
        await session.commit()

        async def body() -> AsyncIterator[bytes]:
            yield f"checked_out={db.pool_status()['main']['checked_out']}".encode()

        return StreamingResponse(body(), media_type="text/plain")

    async with _client(app) as client:
        response = await client.post("/stream")

    assert response.text == "checked_out=0"
    assert await _emails(db) == ["a@example.com"]


# -- install_error_handlers -------------------------------------------------------------


async def test_error_handlers_map_not_found_to_404(db: DatabaseManager) -> None:
    app = _app(error_handlers=True)

    @app.get("/users/{user_id}")
    async def read(user_id: int, session: AsyncSession = SessionDep) -> dict[str, Any]:
        user = await UserRepository(session).get_one(user_id)
        return {"email": user.email}

    async with _client(app) as client:
        response = await client.get("/users/4242")

    assert response.status_code == 404
    assert response.json() == {
        "detail": "User with id 4242 not found",
        "error": "not_found",
    }


async def test_error_handlers_map_duplicate_to_409_and_nothing_is_written(
    db: DatabaseManager,
) -> None:
    app = _app(error_handlers=True)

    @app.post("/users")
    async def create(session: AsyncSession = SessionDep) -> dict[str, Any]:
        repo = UserRepository(session)
        await repo.create({"email": "same@example.com", "name": "First"})
        await repo.create({"email": "same@example.com", "name": "Second"})
        await session.commit()
        return {}

    async with _client(app) as client:
        response = await client.post("/users")

    assert response.status_code == 409
    assert response.json()["error"] == "duplicate"
    assert response.json()["fields"] == ["email"]
    assert await _emails(db) == []
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_error_handlers_with_middleware_409_rolls_back(db: DatabaseManager) -> None:
    app = _app(middleware=True, error_handlers=True)

    @app.post("/users/{tag}")
    async def create(tag: str, session: AsyncSession = SessionDep) -> dict[str, Any]:
        repo = UserRepository(session)
        await repo.create({"email": f"{tag}@example.com", "name": tag})
        await repo.create({"email": "same@example.com", "name": "Same"})
        return {}

    async with _client(app) as client:
        ok = await client.post("/users/first")
        duplicate = await client.post("/users/second")

    assert ok.status_code == 200
    assert duplicate.status_code == 409
    assert duplicate.json()["error"] == "duplicate"
    # The second request's first write succeeded before the duplicate; it was rolled back.
    assert await _emails(db) == ["first@example.com", "same@example.com"]
    assert db.pool_status()["main"]["checked_out"] == 0


# -- no default manager -----------------------------------------------------------------


@pytest.fixture
def no_default_manager() -> Iterator[None]:
    previous = reset_database()
    yield
    reset_database()
    if previous is not None:
        configure_database(previous)


async def test_unit_of_work_without_configured_manager(no_default_manager: None) -> None:
    with pytest.raises(DatabaseNotConfiguredError, match="configure_database"):
        async with UnitOfWork():
            pass


async def test_get_session_without_configured_manager(no_default_manager: None) -> None:
    app = _app()

    @app.get("/users")
    async def read(session: AsyncSession = SessionDep) -> dict[str, Any]:
        return {}

    @app.get("/background")
    async def background(session: AsyncSession = BackgroundSessionDep) -> dict[str, Any]:
        return {}

    async with _client(app) as client:
        with pytest.raises(DatabaseNotConfiguredError) as raised:
            await client.get("/users")
        assert "configure_database" in str(raised.value)
        with pytest.raises(DatabaseNotConfiguredError, match="configure_database"):
            await client.get("/background")


async def test_get_session_without_configured_manager_through_error_handlers(
    no_default_manager: None, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(error_handlers=True)

    @app.get("/users")
    async def read(session: AsyncSession = SessionDep) -> dict[str, Any]:
        return {}

    async with _client(app) as client:
        response = await client.get("/users")

    # A 500's body is generic; what to fix is in the server log.
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal",
        "detail": "The server could not complete the request.",
    }
    logged = [r for r in caplog.records if r.name == "aegis_shared.web"]
    assert len(logged) == 1
    assert "DatabaseNotConfiguredError" in logged[0].getMessage()
    assert "configure_database" in logged[0].getMessage()


# -- background pool ---------------------------------------------------------------------


async def test_get_background_session_works_while_the_main_pool_is_exhausted(
    make_db: MakeDb,
) -> None:
    db = await make_db(pool_size=1, max_overflow=0, pool_timeout=0.2)
    app = _app(error_handlers=True)

    @app.post("/logs")
    async def log(session: AsyncSession = BackgroundSessionDep) -> dict[str, Any]:
        session.add(UserAccessLog(user_id=1, path="/bg"))
        await session.commit()
        count = await session.scalar(select(func.count()).select_from(UserAccessLog))
        return {"count": count, "pools": db.pool_status()}

    @app.get("/users")
    async def users(session: AsyncSession = SessionDep) -> dict[str, Any]:
        return {"count": await session.scalar(select(func.count()).select_from(User))}

    async with db.engine.connect() as held:
        await held.execute(text("SELECT 1"))
        status = db.pool_status()["main"]
        assert (status["checked_out"], status["size"], status["overflow"]) == (1, 1, 0)

        async with _client(app) as client:
            logged = await client.post("/logs")
            starved = await client.get("/users")

    assert logged.status_code == 200
    assert logged.json()["count"] == 1
    assert logged.json()["pools"]["background"]["checked_out"] == 1
    assert logged.json()["pools"]["main"]["checked_out"] == 1
    # The main pool really was exhausted: a get_session request timed out waiting.
    assert starved.status_code == 503
    assert starved.json()["error"] == "busy"
    assert db.pool_status()["background"]["checked_out"] == 0
    async with db.session() as session:
        paths = (await session.scalars(select(UserAccessLog.path))).all()
    assert list(paths) == ["/bg"]


async def test_get_background_session_rolls_back_uncommitted_work(db: DatabaseManager) -> None:
    app = _app()

    @app.post("/logs")
    async def log(session: AsyncSession = BackgroundSessionDep) -> dict[str, Any]:
        session.add(UserAccessLog(user_id=1, path="/bg"))
        await session.flush()
        return {}

    async with _client(app) as client:
        assert (await client.post("/logs")).status_code == 200

    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(UserAccessLog)) == 0
    assert db.pool_status()["background"]["checked_out"] == 0
