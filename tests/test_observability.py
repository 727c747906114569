"""What the library sends past SQLAlchemy's execution (fast reads, session-store reads, the
COPY of create_many) is visible as SQLAlchemy's own statements are: to ``echo`` logging and
to the engine's cursor events, so OpenTelemetry's SQLAlchemy instrumentation records a span
for each, on SQLite, PostgreSQL and MariaDB (COPY: PostgreSQL only).

Spans come from the real ``opentelemetry-instrumentation-sqlalchemy`` into an in-memory
exporter; log lines are captured with caplog; statements on the wire are counted at the
driver (asyncpg's query logger, SQLite's trace callback, MariaDB's session status).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy import MetaData, String, event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.util.concurrency import greenlet_spawn

from aegis_shared.database import BaseRepository, DatabaseManager, cursor_events, fast_path
from aegis_shared.errors.exceptions import DuplicateEntityError
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.models.mixins import IntegerIdMixin
from aegis_shared.sessions import ServerSessionMixin, SessionStore
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb


class ObsBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Item(IntegerIdMixin, ObsBase):
    __tablename__ = "obs_items"

    name: Mapped[str] = mapped_column(String(50))
    code: Mapped[str | None] = mapped_column(String(50), unique=True, nullable=True)


class ObsSession(ServerSessionMixin, ObsBase):
    __tablename__ = "obs_sessions"


class ItemRepository(BaseRepository[Item]):
    pass


ENGINE_LOGGER = "sqlalchemy.engine.Engine"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans of the engines a test instruments with :func:`instrument`."""
    spans = InMemorySpanExporter()
    yield spans
    SQLAlchemyInstrumentor().uninstrument()
    spans.clear()


def instrument(exporter: InMemorySpanExporter, *managers: DatabaseManager) -> None:
    """Instrument the managers' engines as an application does, into ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engines = []
    for manager in managers:
        engines += [manager.engine.sync_engine, manager.background_engine.sync_engine]
    SQLAlchemyInstrumentor().instrument(
        engines=list(dict.fromkeys(engines)),
        tracer_provider=provider,
        # It declares sqlalchemy < 2.1, and would otherwise do nothing on 2.1; the events
        # it listens to are the same in 2.0 and 2.1.
        skip_dep_check=True,
    )


def statement_of(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("db.statement", attributes.get("db.query.text")))


def statement_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The spans of statements; not the ones of ``Engine.connect()`` calls ("connect")."""
    return [span for span in exporter.get_finished_spans() if span.name != "connect"]


def statements(exporter: InMemorySpanExporter) -> list[str]:
    return [statement_of(span) for span in statement_spans(exporter)]


def plan_sql(db: DatabaseManager, kind: str, shape: Any) -> str:
    """The SQL text the fast path compiled for ``kind`` on ``db``'s dialect."""
    reader = fast_path.reader_for(Item.__mapper__, db.engine)
    assert reader is not None
    return reader.plan(kind, shape).sql


async def seed(db: DatabaseManager, count: int = 3) -> list[int]:
    async with db.session() as session:
        items = [Item(name=f"item {i}") for i in range(count)]
        session.add_all(items)
        await session.flush()
        return [item.id for item in items]


def idle(session: AsyncSession) -> bool:
    """No transaction (so no connection) held: the read took the fast path."""
    return not session.in_transaction()


async def read_item(db: DatabaseManager, item_id: int) -> None:
    """One fast read in a session of its own."""
    async with db.session() as session:
        assert (await ItemRepository(session).get_by_id(item_id)) is not None
        assert idle(session)


# -- the cheap check ---------------------------------------------------------------------------


async def test_an_engine_nobody_listens_to_is_unwatched_until_someone_does(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    """The library's own listeners (SQLite's lazy BEGIN, error translation) do not count;
    a cursor listener or INFO logging of the engine logger does, and only while there."""
    db = await make_db(ObsBase.metadata)
    engine = db.engine.sync_engine
    assert cursor_events.watched(engine) is False

    def before(*args: Any) -> None:
        pass

    for name in ("before_cursor_execute", "after_cursor_execute"):
        event.listen(engine, name, before)
        assert cursor_events.watched(engine) is True
        event.remove(engine, name, before)
        assert cursor_events.watched(engine) is False
    with caplog.at_level(logging.INFO, logger=ENGINE_LOGGER):
        assert cursor_events.watched(engine) is True
    assert cursor_events.watched(engine) is False


# -- spans ---------------------------------------------------------------------------------------


async def test_each_fast_read_is_one_span_with_its_statement(
    make_db: MakeDb, exporter: InMemorySpanExporter
) -> None:
    db = await make_db(ObsBase.metadata)
    ids = await seed(db)
    instrument(exporter, db)
    async with db.session() as session:
        repo = ItemRepository(session)
        with count_queries(db) as counter:
            assert (await repo.get_by_id(ids[0])) is not None
        assert idle(session)
        assert statements(exporter) == [plan_sql(db, "get", None)]
        assert counter.count == 1, "count_queries and OpenTelemetry each see it once"
        exporter.clear()

        assert len(await repo.list(order_by="name", limit=2)) == 2
        assert statements(exporter) == [plan_sql(db, "list", ((), ("name",)))]
        exporter.clear()

        assert await repo.count() == len(ids)
        assert statements(exporter) == [plan_sql(db, "count", ())]
        assert idle(session)
    (span,) = statement_spans(exporter)
    assert span.name.split()[0] == "SELECT"
    assert span.status.status_code is StatusCode.UNSET


async def test_a_session_store_read_is_one_span(
    make_db: MakeDb, exporter: InMemorySpanExporter
) -> None:
    db = await make_db(ObsBase.metadata)
    store = SessionStore(db, ObsSession)
    created = await store.create({"cart": [1, 2]})
    instrument(exporter, db)
    with count_queries(db) as counter:
        found = await store.get(created.id)
    assert found is not None and found.data == {"cart": [1, 2]}
    (sent,) = statements(exporter)
    assert sent.split()[0] == "SELECT" and "obs_sessions" in sent
    assert counter.statements == [sent]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_copy_is_one_span_with_its_statement(
    make_db: MakeDb, exporter: InMemorySpanExporter
) -> None:
    db = await make_db(ObsBase.metadata)
    instrument(exporter, db)
    async with db.session() as session:
        rows = [{"name": f"bulk {i}"} for i in range(50)]
        assert await ItemRepository(session).create_many(rows, returning=False) == 50
    copies = [s for s in statements(exporter) if s.startswith("COPY")]
    assert copies == ["COPY obs_items (name) FROM STDIN (FORMAT binary)"]
    async with db.session() as session:
        assert await ItemRepository(session).count() == 50


# -- errors reach handle_error -------------------------------------------------------------------


async def test_a_failed_fast_read_ends_its_span_as_an_error(
    make_db: MakeDb, exporter: InMemorySpanExporter
) -> None:
    """The table is gone: the fast read fails at the driver, which this library does not
    map, so the ORM path runs it again and raises what it raises. Two statements were
    sent, and both spans end with an error status (handle_error), none left open."""
    db = await make_db(ObsBase.metadata)
    (item_id, *_) = await seed(db, 1)
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE obs_items"))
    instrument(exporter, db)
    async with db.session() as session:
        with pytest.raises(Exception) as raised:
            await ItemRepository(session).get_by_id(item_id)
    assert "obs_items" in str(raised.value)
    spans = statement_spans(exporter)
    assert len(spans) == 2, statements(exporter)
    assert statement_of(spans[0]) == plan_sql(db, "get", None)
    assert [span.status.status_code for span in spans] == [StatusCode.ERROR] * 2


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_failed_copy_ends_its_span_as_an_error(
    make_db: MakeDb, exporter: InMemorySpanExporter
) -> None:
    db = await make_db(ObsBase.metadata)
    instrument(exporter, db)
    with pytest.raises(DuplicateEntityError):
        async with db.session() as session:
            rows = [{"name": "a", "code": "same"}, {"name": "b", "code": "same"}]
            await ItemRepository(session).create_many(rows, returning=False)
    (copy,) = [s for s in statement_spans(exporter) if statement_of(s).startswith("COPY")]
    assert copy.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_cancelled_fast_read_ends_its_span(
    make_db: MakeDb, exporter: InMemorySpanExporter
) -> None:
    """Cancelled while the server holds it on a lock: handle_error hears of it (as
    SQLAlchemy reports cancellations), so the span ends instead of staying open."""
    db = await make_db(ObsBase.metadata)
    (item_id, *_) = await seed(db, 1)
    await read_item(db, item_id)
    instrument(exporter, db)
    async with db.background_engine.connect() as locker:
        await locker.execute(text("LOCK TABLE obs_items IN ACCESS EXCLUSIVE MODE"))
        read = asyncio.create_task(read_item(db, item_id))
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'SELECT obs_items.%'"
        )
        async with db.background_engine.connect() as watcher:
            for _ in range(3000):  # polls the server: the read is blocked when it says so
                if await watcher.scalar(waiting):
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the fast read never waited on the lock")
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        await locker.rollback()
    get = plan_sql(db, "get", None)
    (span,) = [span for span in statement_spans(exporter) if statement_of(span) == get]
    assert span.status.status_code is StatusCode.ERROR
    exporter.clear()
    await read_item(db, item_id)  # and the next read is traced as usual
    assert statements(exporter) == [get]


async def test_handle_error_listeners_see_a_fast_read_fail_with_nobody_else_listening(
    make_db: MakeDb,
) -> None:
    """Error reporting that listens only to handle_error still hears of fast reads."""
    db = await make_db(ObsBase.metadata)
    (item_id, *_) = await seed(db, 1)
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE obs_items"))
    seen: list[tuple[str | None, Any]] = []

    def on_error(context: Any) -> None:
        seen.append((context.statement, context.connection.engine))

    engine = db.engine.sync_engine
    event.listen(engine, "handle_error", on_error)
    try:
        assert cursor_events.watched(engine) is False
        async with db.session() as session:
            with pytest.raises(Exception, match="obs_items"):
                await ItemRepository(session).get_by_id(item_id)
    finally:
        event.remove(engine, "handle_error", on_error)
    # The fast read, then the ORM path's run of the same read.
    assert len(seen) == 2
    assert seen[0] == (plan_sql(db, "get", None), engine)


# -- echo ----------------------------------------------------------------------------------------


def engine_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ENGINE_LOGGER]


async def test_echo_logs_fast_reads_as_sqlalchemy_logs_its_own(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db = await make_db(ObsBase.metadata, echo=True)
    orm = await make_db(default=False, echo=True, fast_path=False)
    (item_id, *_) = await seed(db, 1)
    caplog.set_level(logging.INFO, logger=ENGINE_LOGGER)
    caplog.clear()
    async with db.session() as session:
        await ItemRepository(session).get_by_id(item_id)
        assert idle(session)
    assert engine_lines(caplog) == [plan_sql(db, "get", None), f"[fast path] ({item_id},)"]
    caplog.clear()
    async with orm.session() as session:
        await ItemRepository(session).get_by_id(item_id)
    # The ORM path's SELECT: its parameters line differs only in the bracketed label.
    orm_parameters = [line for line in engine_lines(caplog) if line.endswith(f"] ({item_id},)")]
    assert len(orm_parameters) == 1, engine_lines(caplog)


async def test_hide_parameters_hides_them_on_the_fast_path(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db = await make_db(ObsBase.metadata, echo=True, engine_kwargs={"hide_parameters": True})
    store = SessionStore(db, ObsSession)
    created = await store.create({"a": 1})
    (item_id, *_) = await seed(db, 1)
    caplog.set_level(logging.INFO, logger=ENGINE_LOGGER)
    caplog.clear()
    async with db.session() as session:
        await ItemRepository(session).get_by_id(item_id)
    assert await store.get(created.id) is not None
    hidden = "[fast path] [SQL parameters hidden due to hide_parameters=True]"
    lines = engine_lines(caplog)
    assert lines == [plan_sql(db, "get", None), hidden, lines[2], hidden], lines
    assert "obs_sessions" in lines[2]
    assert not any(created.id in line for line in lines)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_echo_logs_copy(make_db: MakeDb, caplog: pytest.LogCaptureFixture) -> None:
    db = await make_db(ObsBase.metadata, echo=True)
    caplog.set_level(logging.INFO, logger=ENGINE_LOGGER)
    caplog.clear()
    async with db.session() as session:
        rows = [{"name": f"bulk {i}"} for i in range(3)]
        await ItemRepository(session).create_many(rows, returning=False)
    lines = engine_lines(caplog)
    at = lines.index("COPY obs_items (name) FROM STDIN (FORMAT binary)")
    assert lines[at + 1] == "[copy of 3 rows] ()"


# -- still one statement on the wire when someone listens ---------------------------------------


async def test_a_listener_may_rewrite_the_statement_sent(make_db: MakeDb) -> None:
    """A retval=True listener's statement is the one sent (as SQL-comment tracing does),
    and after_cursor_execute sees it with the rows read."""
    db = await make_db(ObsBase.metadata)
    (item_id, *_) = await seed(db, 1)
    engine = db.engine.sync_engine
    after: list[tuple[str, int]] = []

    def tag(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> Any:
        return statement + " /* traced */", parameters

    def done(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        after.append((statement, cursor.rowcount))

    event.listen(engine, "before_cursor_execute", tag, retval=True)
    event.listen(engine, "after_cursor_execute", done)
    try:
        async with db.session() as session:
            assert (await ItemRepository(session).get_by_id(item_id)) is not None
            assert idle(session)
    finally:
        event.remove(engine, "before_cursor_execute", tag)
        event.remove(engine, "after_cursor_execute", done)
    assert after == [(plan_sql(db, "get", None) + " /* traced */", 1)]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_watched_fast_read_is_still_one_statement_on_sqlite(
    make_db: MakeDb, exporter: InMemorySpanExporter
) -> None:
    db = await make_db(ObsBase.metadata, pool_size=1, max_overflow=0)
    (item_id, *_) = await seed(db, 1)
    await read_item(db, item_id)  # connection and caches warm
    instrument(exporter, db)
    traced: list[str] = []  # every statement SQLite runs, BEGIN and ROLLBACK included
    raw = await db.engine.raw_connection()
    await cast(Any, raw.driver_connection).set_trace_callback(traced.append)
    await greenlet_spawn(raw.close)
    try:
        await read_item(db, item_id)
    finally:
        raw = await db.engine.raw_connection()
        await cast(Any, raw.driver_connection).set_trace_callback(None)
        await greenlet_spawn(raw.close)
    assert len(traced) == 1 and traced[0].startswith("SELECT"), traced
    assert len(statements(exporter)) == 1


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_watched_fast_read_is_still_one_statement_on_postgresql(
    make_db: MakeDb, exporter: InMemorySpanExporter
) -> None:
    db = await make_db(ObsBase.metadata, pool_size=1, max_overflow=0)
    (item_id, *_) = await seed(db, 1)
    await read_item(db, item_id)  # connection and caches warm
    instrument(exporter, db)
    logged: list[str] = []

    def log(record: Any) -> None:
        logged.append(record.query)

    raw = await db.engine.raw_connection()
    cast(Any, raw.driver_connection).add_query_logger(log)
    await greenlet_spawn(raw.close)
    try:
        await read_item(db, item_id)
        for _ in range(3):  # asyncpg hands records to its loggers with call_soon
            await asyncio.sleep(0)
    finally:
        raw = await db.engine.raw_connection()
        cast(Any, raw.driver_connection).remove_query_logger(log)
        await greenlet_spawn(raw.close)
    # asyncpg logs what it runs itself: the fast read only, no BEGIN or ROLLBACK.
    assert logged == [plan_sql(db, "get", None)]
    assert statements(exporter) == logged


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
async def test_a_watched_fast_read_is_still_one_select_on_mariadb(
    make_db: MakeDb, exporter: InMemorySpanExporter
) -> None:
    db = await make_db(ObsBase.metadata, pool_size=1, max_overflow=0)
    (item_id, *_) = await seed(db, 1)
    names = ("Com_select", "Com_begin", "Com_commit")

    async def status() -> dict[str, int]:
        raw = await db.engine.raw_connection()  # the pool's only connection
        try:
            async with cast(Any, raw.driver_connection).cursor() as cursor:
                listed = ", ".join(f"'{name}'" for name in names)
                await cursor.execute(f"SHOW SESSION STATUS WHERE Variable_name IN ({listed})")
                return {name: int(value) for name, value in await cursor.fetchall()}
        finally:
            await greenlet_spawn(raw.close)

    await read_item(db, item_id)
    instrument(exporter, db)
    first = await status()
    second = await status()  # what looking costs
    await read_item(db, item_id)
    third = await status()
    sent = {name: (third[name] - second[name]) - (second[name] - first[name]) for name in names}
    assert sent == {"Com_select": 1, "Com_begin": 0, "Com_commit": 0}, sent
    assert statements(exporter) == [plan_sql(db, "get", None)]
