"""Error bodies leak nothing of the database, through a real uvicorn server on every backend.

What a client receives is checked on the wire (``tests/http.py``); what the client was not
told must be in the ``aegis_shared.web`` log instead.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import CheckConstraint, Integer, MetaData, String, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aegis_shared.database import DatabaseManager, get_session, with_db_retry
from aegis_shared.errors.exceptions import (
    CheckViolationError,
    CommitOutcomeUnknownError,
    ConflictRetriesExhaustedError,
    DatabaseError,
    DuplicateEntityError,
    EntityNotFoundError,
    IntegrityViolationError,
    PoolTimeoutError,
    TransactionConflictError,
)
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.web import DatabaseSessionMiddleware, install_error_handlers
from aegis_shared.web.errors import MESSAGES, error_body, status_for, unique_fields
from tests.faults import fault_proxy
from tests.http import serve
from tests.models import Account, Base, User, UserRepository

MakeDb = Callable[..., Awaitable[DatabaseManager]]
SessionDep = Depends(get_session)
WEB_LOGGER = "aegis_shared.web"
SECRET_KEY = "sk-hidden-7f3a9c"
VICTIM = "victim@example.com"
NETWORK = pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)

# Texts of the drivers that must never reach a client.
DRIVER_TEXT = ("Key (", "Failing row", "constraint", "UNIQUE", "Duplicate entry", "SQL")


class ClientBase(DeclarativeBase):
    """A registry of its own: field names are found beyond the library's Base too."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiClient(ClientBase):
    """A model with a column no response may show (``api_key``)."""

    __tablename__ = "api_clients"
    __table_args__ = (CheckConstraint("quota >= 0", name="quota_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The attribute and the column differ: the body must name the attribute.
    display_name: Mapped[str] = mapped_column("name", String(100), unique=True)
    quota: Mapped[int] = mapped_column(Integer, default=10)
    api_key: Mapped[str] = mapped_column(String(64))


class ClientPatch(BaseModel):
    display_name: str | None = "unchanged"
    quota: int | None = None


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == WEB_LOGGER)


def _assert_clean(response: httpx.Response, *secrets: str) -> None:
    for banned in (*DRIVER_TEXT, *secrets):
        assert banned not in response.text, (banned, response.text)


def _users_app(**options: Any) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, **options)

    @app.post("/users", status_code=201)
    async def create(email: str, session: AsyncSession = SessionDep) -> dict[str, Any]:
        user = await UserRepository(session).create({"email": email, "name": "N"})
        await session.commit()
        return {"id": user.id}

    return app


# -- unique violations ------------------------------------------------------------------------


async def test_duplicate_names_the_field_not_the_value_constraint_or_table(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=WEB_LOGGER)
    async with serve(_users_app()) as url, httpx.AsyncClient(base_url=url) as client:
        first = await client.post("/users", params={"email": VICTIM})
        second = await client.post("/users", params={"email": VICTIM})

    assert first.status_code == 201
    assert second.status_code == 409
    assert second.json() == {
        "error": "duplicate",
        "detail": "A record with the same value already exists; use a different value "
        "or change the existing record.",
        "fields": ["email"],
    }
    _assert_clean(second, VICTIM, "uq_users_email", "users")
    # The server log has what the client was not told, at INFO (a client's 4xx).
    records = [r for r in caplog.records if r.name == WEB_LOGGER]
    assert [r.levelno for r in records] == [logging.INFO]
    logged = records[0].getMessage()
    assert "POST /users answered 409 duplicate: DuplicateEntityError" in logged
    assert "INSERT INTO users" in logged
    assert "email" in logged


async def test_duplicate_fields_are_attribute_names_of_any_registry(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db = await make_db(Base.metadata, ClientBase.metadata)
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/clients")
    async def create(name: str) -> dict[str, Any]:
        async with db.session() as session:
            session.add(ApiClient(display_name=name, api_key=SECRET_KEY))
        return {}

    caplog.set_level(logging.INFO, logger=WEB_LOGGER)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/clients", params={"name": "acme"})).status_code == 200
        duplicate = await client.post("/clients", params={"name": "acme"})

    assert duplicate.status_code == 409
    assert duplicate.json()["error"] == "duplicate"
    assert duplicate.json()["fields"] == ["display_name"]  # the attribute, not column "name"
    _assert_clean(duplicate, "acme", SECRET_KEY, "api_clients", "uq_")
    assert "INSERT INTO api_clients" in _log_text(caplog)


# -- NOT NULL and CHECK violations do not echo the row -----------------------------------------


async def test_not_null_and_check_violations_do_not_echo_the_row(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db = await make_db(Base.metadata, ClientBase.metadata)
    async with db.session() as session:
        session.add(ApiClient(id=1, display_name="acme", quota=5, api_key=SECRET_KEY))
    app = FastAPI()
    install_error_handlers(app)

    @app.patch("/clients/{client_id}")
    async def patch(client_id: int, change: ClientPatch) -> dict[str, Any]:
        async with db.session() as session:
            client = await session.get_one(ApiClient, client_id)
            if change.display_name != "unchanged":
                client.display_name = change.display_name
            if change.quota is not None:
                client.quota = change.quota
            await session.flush()
            return {"quota": client.quota}

    caplog.set_level(logging.INFO, logger=WEB_LOGGER)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        negative = await client.patch("/clients/1", json={"quota": -5})
        unnamed = await client.patch("/clients/1", json={"display_name": None})

    assert negative.status_code == 409
    assert negative.json() == {
        "error": "invalid_value",
        "detail": "A value is outside what is allowed.",
    }
    assert unnamed.status_code == 409
    assert unnamed.json() == {
        "error": "missing_value",
        "detail": "A required value is missing.",
    }
    for response in (negative, unnamed):
        _assert_clean(response, SECRET_KEY, "acme", "api_clients", "quota", "api_key", "-5")
    logged = _log_text(caplog)
    assert "CheckViolationError" in logged
    assert "NotNullViolationError" in logged
    assert "UPDATE api_clients" in logged
    async with db.session() as session:
        row = await session.get_one(ApiClient, 1)
        assert (row.display_name, row.quota) == ("acme", 5)


# -- outages and refused logins -----------------------------------------------------------------


@NETWORK
async def test_outage_body_shows_neither_host_nor_port(
    db: DatabaseManager, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=WEB_LOGGER)
    async with fault_proxy(db_url) as proxy:
        manager = DatabaseManager(proxy.url(db_url), pool_size=1, command_timeout=2)
        app = FastAPI()
        install_error_handlers(app)

        @app.get("/users")
        async def users() -> dict[str, Any]:
            async with manager.session() as session:
                return {"n": len((await session.scalars(select(User))).all())}

        try:
            async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/users")).status_code == 200
                proxy.drop_all()
                await proxy.refuse()
                down = await client.get("/users")
        finally:
            await manager.close()

    assert down.status_code == 503
    assert down.headers["retry-after"] == "1"
    assert down.json() == {
        "error": "unavailable",
        "detail": "The service is temporarily unavailable; try again later.",
    }
    _assert_clean(down, "127.0.0.1", str(proxy.port), "localhost", "Errno")
    records = [r for r in caplog.records if r.name == WEB_LOGGER]
    assert [r.levelno for r in records] == [logging.ERROR]
    assert "GET /users answered 503 unavailable: DatabaseConnectionError" in records[0].getMessage()


@NETWORK
async def test_a_database_that_does_not_exist_is_a_503_and_the_log_says_what_to_fix(
    db: DatabaseManager, db_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    missing = "aegis_no_such_db_e7"
    manager = DatabaseManager(db_url.set(database=missing, password="pw-never-shown-91"))
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/users")
    async def users() -> dict[str, Any]:
        async with manager.session() as session:
            await session.execute(select(User))
        return {}

    caplog.set_level(logging.INFO, logger=WEB_LOGGER)
    try:
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
            refused = await client.get("/users")
    finally:
        await manager.close()

    assert refused.status_code == 503
    assert refused.json()["error"] == "unavailable"
    user = db_url.username or "root"
    _assert_clean(refused, missing, "pw-never-shown", "127.0.0.1", user, "DATABASE_URL")
    logged = _log_text(caplog)
    assert "503 unavailable: DatabaseLoginError" in logged
    assert "DATABASE_URL" in logged  # what to fix, for the operator
    assert "pw-never-shown" not in logged


# -- the middleware's commit-failure 500 -----------------------------------------------------


async def test_commit_failure_body_of_the_middleware_is_clean(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    async with db.session() as session:
        await UserRepository(session).create({"email": VICTIM, "name": "V"})
    app = FastAPI()
    app.add_middleware(DatabaseSessionMiddleware)

    @app.post("/users")
    async def create(session: AsyncSession = SessionDep) -> dict[str, Any]:
        # Not flushed: the INSERT, and its unique violation, happen at the middleware's commit.
        session.add(User(email=VICTIM, name="Again"))
        return {"saved": True}

    caplog.set_level(logging.INFO, logger=WEB_LOGGER)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/users")

    assert response.status_code == 500
    assert response.json() == {
        "error": "duplicate",
        "detail": "A record with the same value already exists; use a different value "
        "or change the existing record.",
        "fields": ["email"],
    }
    _assert_clean(response, VICTIM, "uq_users_email", "users", "saved")
    failures = [r for r in caplog.records if r.name == WEB_LOGGER]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    logged = failures[0].getMessage()
    assert "commit at the end of the request answered 500 duplicate" in logged
    assert "DuplicateEntityError" in logged and "[SQL: INSERT INTO users" in logged
    # No traceback: its SQLAlchemy error would repeat the statement's parameters.
    assert failures[0].exc_info is None
    async with db.session() as session:
        emails = (await session.scalars(select(User.email))).all()
    assert list(emails) == [VICTIM]


# -- statuses ---------------------------------------------------------------------------------


async def test_custom_statuses_merge_over_the_defaults_most_specific_wins(
    db: DatabaseManager,
) -> None:
    async with db.session() as session:
        await UserRepository(session).create({"email": VICTIM, "name": "V"})
    broad = _users_app(statuses={IntegrityViolationError: 422})
    narrow = _users_app(statuses={DuplicateEntityError: 422, CheckViolationError: 400})

    @narrow.get("/users/{user_id}")
    async def read(user_id: int, session: AsyncSession = SessionDep) -> dict[str, Any]:
        await UserRepository(session).get_one(user_id)
        return {}

    @narrow.post("/null-name")
    async def null_name(session: AsyncSession = SessionDep) -> dict[str, Any]:
        session.add(User(email="n@example.com", name=None))
        await session.flush()
        return {}

    async with serve(broad) as url, httpx.AsyncClient(base_url=url) as client:
        broad_duplicate = await client.post("/users", params={"email": VICTIM})
    async with serve(narrow) as url, httpx.AsyncClient(base_url=url) as client:
        narrow_duplicate = await client.post("/users", params={"email": VICTIM})
        not_null = await client.post("/null-name")
        missing = await client.get("/users/987654")

    assert (broad_duplicate.status_code, broad_duplicate.json()["error"]) == (422, "duplicate")
    assert (narrow_duplicate.status_code, narrow_duplicate.json()["error"]) == (422, "duplicate")
    # Not a duplicate nor a check: the default for integrity errors still holds.
    assert (not_null.status_code, not_null.json()["error"]) == (409, "missing_value")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "detail": "User with id 987654 not found"}


@pytest.mark.parametrize(
    ("statuses", "error", "says"),
    [
        ({ValueError: 422}, TypeError, "DatabaseError subclasses"),
        ({"DuplicateEntityError": 422}, TypeError, "DatabaseError subclasses"),
        ({DuplicateEntityError: "422"}, TypeError, "must be an int"),
        ({DuplicateEntityError: True}, TypeError, "must be an int"),
        ({DuplicateEntityError: 302}, ValueError, "from 400 to 599"),
        ({DuplicateEntityError: 600}, ValueError, "from 400 to 599"),
    ],
)
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_invalid_statuses_are_refused_at_install_time(
    backend: str, statuses: dict[Any, Any], error: type[Exception], says: str
) -> None:
    app = FastAPI()
    with pytest.raises(error, match=says):
        install_error_handlers(app, statuses=statuses)
    assert DatabaseError not in app.exception_handlers  # nothing half-installed


# -- conflicts: never retried is 409, retries ran out is 503 ---------------------------------------


@NETWORK
async def test_conflict_retries_that_ran_out_are_503_a_plain_conflict_409(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    async with db.session() as session:
        session.add(Account(id=1, balance=100))
    attempts = 0

    async def deposit(session: AsyncSession) -> int:
        nonlocal attempts
        attempts += 1
        locked = select(Account).where(Account.id == 1).with_for_update(nowait=True)
        account = (await session.scalars(locked)).one()
        account.balance += 5
        return account.balance

    @with_db_retry(max_attempts=3, base_delay=0.001, max_delay=0.01)
    async def deposit_with_retry() -> int:
        async with db.session() as session:
            return await deposit(session)

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/retried")
    async def retried() -> dict[str, int]:
        return {"balance": await deposit_with_retry()}

    @app.post("/once")
    async def once(session: AsyncSession = SessionDep) -> dict[str, int]:
        return {"balance": await deposit(session)}

    caplog.set_level(logging.INFO, logger=WEB_LOGGER)
    async with db.engine.connect() as blocker:
        # Another transaction holds the row lock for the whole test: every attempt collides.
        await blocker.execute(select(Account).where(Account.id == 1).with_for_update())
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
            exhausted = await client.post("/retried")
            retried_attempts, attempts = attempts, 0
            plain = await client.post("/once")

    assert retried_attempts == 3
    assert exhausted.status_code == 503
    assert exhausted.headers["retry-after"] == "1"
    assert exhausted.json() == {
        "error": "busy",
        "detail": "The server is too busy to complete the request; try again shortly.",
    }
    assert attempts == 1
    assert plain.status_code == 409
    assert plain.json()["error"] == "conflict"
    assert "retry-after" not in plain.headers
    for response in (exhausted, plain):
        _assert_clean(response, "accounts", "lock", "NOWAIT")
    logged = _log_text(caplog)
    assert "ConflictRetriesExhaustedError" in logged
    assert "Gave up after 3 attempts" in logged
    async with db.session() as session:
        assert (await session.get_one(Account, 1)).balance == 100


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_with_db_retry_marks_only_conflicts_it_retried(backend: str) -> None:
    calls = 0
    cause = RuntimeError("driver said: deadlock")

    async def collide() -> None:
        nonlocal calls
        calls += 1
        raise TransactionConflictError("Transaction conflict (40P01).", orig=cause)

    retried = with_db_retry(max_attempts=2, base_delay=0, max_delay=0)(collide)
    with pytest.raises(ConflictRetriesExhaustedError) as exhausted:
        await retried()
    assert calls == 2
    assert exhausted.value.attempts == 2
    assert exhausted.value.orig is cause
    assert isinstance(exhausted.value.__cause__, TransactionConflictError)
    assert isinstance(exhausted.value, TransactionConflictError)  # old handlers still match

    calls = 0
    single = with_db_retry(max_attempts=1)(collide)
    with pytest.raises(TransactionConflictError) as plain:
        await single()
    assert calls == 1
    assert type(plain.value) is TransactionConflictError


# -- development mode ---------------------------------------------------------------------------


async def test_expose_details_adds_the_exception_text_only_when_asked(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=WEB_LOGGER)
    app = _users_app(expose_details=True)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        await client.post("/users", params={"email": VICTIM})
        duplicate = await client.post("/users", params={"email": VICTIM})
    assert "expose_details=True" in _log_text(caplog)  # said once, at install time

    assert duplicate.status_code == 409
    body = duplicate.json()
    assert body["error"] == "duplicate"
    assert body["fields"] == ["email"]
    assert body["debug"]["exception"] == "DuplicateEntityError"
    assert body["debug"]["message"].startswith("Duplicate value")


# -- plain Starlette ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_plain_starlette_app_gets_the_same_bodies(backend: str) -> None:
    async def missing(request: Request) -> JSONResponse:
        raise EntityNotFoundError("Widget", request.path_params["widget_id"])

    app = Starlette(routes=[Route("/widgets/{widget_id:int}", missing)])
    install_error_handlers(app)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/widgets/7")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "Widget with id 7 not found"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_lookup_by_fields_names_the_fields_but_not_their_values(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The server adds filters of its own (the owner, a tenant): their values stay in the log.
    async def missing(request: Request) -> JSONResponse:
        raise EntityNotFoundError(
            "Widget", filters={"slug": request.path_params["slug"], "owner_id": 4711}
        )

    caplog.set_level(logging.INFO, logger=WEB_LOGGER)
    app = Starlette(routes=[Route("/widgets/{slug}", missing)])
    install_error_handlers(app)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/widgets/secret-plan")
    assert response.status_code == 404
    assert response.json() == {
        "error": "not_found",
        "detail": "Widget with this slug and owner_id not found",
    }
    assert "4711" not in response.text and "secret-plan" not in response.text


# -- OpenAPI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_openapi_documents_the_error_body_on_every_operation(backend: str) -> None:
    app = FastAPI()

    @app.get("/before")
    async def before() -> dict[str, Any]:
        return {}

    install_error_handlers(app, statuses={IntegrityViolationError: 422})

    @app.post("/after/{item_id}")  # added after install: covered too
    async def after(item_id: int) -> dict[str, Any]:
        return {}

    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        schema = (await client.get("/openapi.json")).json()

    body = schema["components"]["schemas"]["DatabaseErrorBody"]
    assert set(body["properties"]) == {"error", "detail", "fields", "debug"}
    assert body["required"] == ["error", "detail"]
    assert {"duplicate", "not_found", "busy", "unavailable", "internal"} <= set(
        body["properties"]["error"]["enum"]
    )
    ref = "#/components/schemas/DatabaseErrorBody"
    for path, method in (("/before", "get"), ("/after/{item_id}", "post")):
        responses = schema["paths"][path][method]["responses"]
        for status in ("404", "500", "503", "504"):
            assert responses[status]["content"]["application/json"]["schema"] == {"$ref": ref}
        assert "409" in responses  # the conflict that was never retried
        assert "busy" in responses["503"]["description"]
    # 422 on /after is also FastAPI's validation error: both bodies are documented.
    validation = schema["paths"]["/after/{item_id}"]["post"]["responses"]["422"]
    options = validation["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": ref} in options
    assert {"$ref": "#/components/schemas/HTTPValidationError"} in options
    unvalidated = schema["paths"]["/before"]["get"]["responses"]["422"]
    assert "duplicate" in unvalidated["description"]


# -- statement timeouts -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_statement_timeout_is_a_504_without_the_statement(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db = await make_db(statement_timeout=0.2)
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/slow")
    async def slow() -> dict[str, Any]:
        async with db.session() as session:
            await session.execute(text("SELECT pg_sleep(5)"))
        return {}

    caplog.set_level(logging.INFO, logger=WEB_LOGGER)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/slow")

    assert response.status_code == 504
    assert response.json() == {
        "error": "timeout",
        "detail": "The request took too long and was cancelled; try again later.",
    }
    _assert_clean(response, "pg_sleep", "statement_timeout", "DATABASE_")
    logged = _log_text(caplog)
    assert "504 timeout: QueryTimeoutError" in logged
    assert "[SQL: SELECT pg_sleep(5)]" in logged


# -- bodies of errors that need no server ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_bodies_of_errors_that_are_hard_to_provoke(backend: str) -> None:
    lost = CommitOutcomeUnknownError("Connection lost during COMMIT to db.internal:5432")
    assert error_body(lost) == {
        "error": "outcome_unknown",
        "detail": "The connection to the database was lost while saving; the changes may or "
        "may not have been saved. Check before sending the request again.",
    }
    assert status_for(lost) == 503
    assert error_body(PoolTimeoutError("all 5 pooled connections in use"))["error"] == "busy"

    class AppSpecificError(DatabaseError):
        """An app's own subclass: its nearest ancestor decides code and status."""

    assert error_body(AppSpecificError("secret state"))["detail"] == MESSAGES["internal"]
    assert status_for(AppSpecificError("x"), statuses={AppSpecificError: 418}) == 418
    assert error_body(RuntimeError("anything"))["error"] == "internal"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_fields_are_sent_only_when_known_for_sure(backend: str) -> None:
    def fields(**where: Any) -> list[str] | None:
        return unique_fields(DuplicateEntityError("duplicate", **where))

    assert fields(table="users", columns=("email",)) == ["email"]
    assert fields(constraint="uq_users_email") == ["email"]  # MariaDB names only the key
    assert fields(table="api_clients", columns=("name",)) == ["display_name"]
    # A key every table has, an expression index, an unknown table or column: no guess.
    assert fields(constraint="PRIMARY") is None
    assert fields(table="users", columns=("lower(email)",)) is None
    assert fields(table="no_such_table", columns=("email",)) is None
    assert fields(table="users", columns=("email", "nickname")) is None
    assert fields() is None
    # Through error_body: no "fields" key at all rather than an empty or guessed one.
    assert "fields" not in error_body(DuplicateEntityError("d", constraint="PRIMARY"))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_fields_of_a_table_that_several_models_map_must_agree(backend: str) -> None:
    class OtherBase(DeclarativeBase):
        pass

    class OtherUser(OtherBase):  # another app's "users", which calls the column "mail"
        __tablename__ = "users"

        id: Mapped[int] = mapped_column(primary_key=True)
        mail: Mapped[str] = mapped_column("email", String(255), unique=True)

    try:
        assert unique_fields(DuplicateEntityError("d", table="users", columns=("email",))) is None
        # It has no "name" column, so it is not the table that raised: tests.models' User is.
        only = DuplicateEntityError("d", table="users", columns=("name",))
        assert unique_fields(only) == ["name"]
    finally:
        del OtherUser, OtherBase
        gc.collect()  # the registry is weakly held: later tests see one "users" model again
