"""The server-side session store (``aegis_shared.sessions``) on SQLite, PostgreSQL and MariaDB.

Time comes from a clock the tests move, never from sleeping. What the store wrote is
checked from a fresh session against the table itself. Statements are counted with
``count_queries``, and where it matters at the driver (asyncpg's query logger, SQLite's
trace callback), so "one SELECT" means nothing else went over the wire.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import (
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.util.concurrency import greenlet_spawn

from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import DuplicateEntityError
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.sessions import (
    ServerSessionMixin,
    SessionChildMixin,
    SessionStats,
    SessionStore,
    StoredSession,
    is_session_id,
    new_session_id,
    session_key,
    session_table_args,
)
from aegis_shared.sessions.cleanup import postgresql_batch_statement
from aegis_shared.sessions.store import MAX_CLEANUP_BATCH
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb
from tests.models import User

# -- models of this file ----------------------------------------------------------------------
# Their own metadata, so the rest of the suite does not create these tables.


class SessionBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FridgeSession(ServerSessionMixin, SessionBase):
    __tablename__ = "ss_fridge_sessions"


class AccountSession(ServerSessionMixin, SessionBase):
    """A session model with a column and table arguments of its own."""

    __tablename__ = "ss_account_sessions"
    __table_args__ = session_table_args(__tablename__, Index("ix_ss_account_user", "user_id"))

    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class FridgeIngredient(SessionChildMixin, SessionBase):
    """Seed 002's per-session rows: one ingredient once per session."""

    __tablename__ = "ss_fridge_ingredients"
    __session_model__ = FridgeSession
    __table_args__ = (UniqueConstraint("session_id", "ingredient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ingredient_id: Mapped[int] = mapped_column(Integer)


class FridgeNote(SessionChildMixin, SessionBase):
    """A second child model of the same session model."""

    __tablename__ = "ss_fridge_notes"
    __session_model__ = FridgeSession

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


class EphemeralSession(ServerSessionMixin, SessionBase):
    """Sessions kept out of PostgreSQL's write-ahead log."""

    __tablename__ = "ss_ephemeral_sessions"
    __session_unlogged__ = True


class EphemeralNote(SessionChildMixin, SessionBase):
    __tablename__ = "ss_ephemeral_notes"
    __session_model__ = EphemeralSession

    id: Mapped[int] = mapped_column(primary_key=True)


IDLE = timedelta(hours=24)
ABSOLUTE = timedelta(days=7)
TOUCH = timedelta(minutes=5)
T0 = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


class Clock:
    """The store's time, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    return await make_db(SessionBase.metadata)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: DatabaseManager, clock: Clock) -> SessionStore:
    return SessionStore(
        db,
        FridgeSession,
        idle_timeout=IDLE,
        absolute_timeout=ABSOLUTE,
        touch_interval=TOUCH,
        clock=clock,
    )


# -- helpers ------------------------------------------------------------------------------------


async def stored(db: DatabaseManager) -> dict[str, dict[str, Any]]:
    """Every session row by its stored key, as a fresh session reads it."""
    table = FridgeSession.__table__
    async with db.session() as session:
        rows = (await session.execute(select(table))).mappings().all()
    return {row["session_id"]: dict(row) for row in rows}


async def row_of(db: DatabaseManager, session_id: str) -> dict[str, Any] | None:
    return (await stored(db)).get(session_key(session_id))


async def add_children(db: DatabaseManager, session_id: str, count: int) -> None:
    key = session_key(session_id)
    async with db.session() as session:
        session.add_all(FridgeIngredient(session_id=key, ingredient_id=i) for i in range(count))
        session.add(FridgeNote(session_id=key, body=f"note of {session_id[:6]}"))


async def children_by_key(db: DatabaseManager) -> dict[str, int]:
    """Child rows (both child models) per stored session key."""
    counts: dict[str, int] = {}
    async with db.session() as session:
        for model in (FridgeIngredient, FridgeNote):
            rows = await session.execute(
                select(model.session_id, func.count()).group_by(model.session_id)
            )
            for key, count in (tuple(row) for row in rows.all()):
                counts[key] = counts.get(key, 0) + int(count)
    return counts


async def extended_row(db: DatabaseManager, session_id: str) -> tuple[datetime, datetime]:
    """``last_accessed`` and ``expires_at`` as stored."""
    row = await row_of(db, session_id)
    assert row is not None
    return row["last_accessed"], row["expires_at"]


def verbs(statements: list[str]) -> list[str]:
    return [statement.split()[0].upper() for statement in statements]


# -- ids ---------------------------------------------------------------------------------------


def test_ids_are_long_random_and_stored_as_digests() -> None:
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000
    for session_id in ids:
        assert len(session_id) == 43 and is_session_id(session_id)
        key = session_key(session_id)
        assert len(key) == 64 and int(key, 16) >= 0 and key == key.lower()
    sample = next(iter(ids))
    assert session_key(sample) == session_key(sample)
    with pytest.raises(ValueError, match="new_session_id"):
        session_key("not an id")


MALFORMED: list[Any] = [
    "",
    "a",
    "a" * 42,
    "a" * 44,
    "a" * 4096,
    "a" * 42 + "=",
    "a" * 42 + "!",
    "a" * 42 + "\n",
    "a" * 41 + "\n",
    " " + "a" * 42,
    "é" * 43,
    "a" * 21 + "/" + "a" * 21,
    "a" * 21 + "+" + "a" * 21,
    None,
    12345,
    b"a" * 43,
    ["a" * 43],
]


def test_the_shape_check() -> None:
    assert is_session_id("A-_z09" + "x" * 37)
    for value in MALFORMED:
        assert not is_session_id(value), value


# -- creating and reading -----------------------------------------------------------------------


async def test_create_stores_only_the_digest(store: SessionStore, db: DatabaseManager) -> None:
    created = await store.create({"fridge": [1, 2], "name": "Zoë"})
    assert is_session_id(created.id)
    assert created.data == {"fridge": [1, 2], "name": "Zoë"}
    assert created.created_at == created.last_accessed == T0
    assert created.expires_at == T0 + IDLE
    rows = await stored(db)
    assert list(rows) == [session_key(created.id)]
    (row,) = rows.values()
    assert created.id not in repr(row), "the raw id must not be stored anywhere"
    assert row["data"] == {"fridge": [1, 2], "name": "Zoë"}
    assert (row["created_at"], row["expires_at"], row["last_accessed"]) == (
        T0,
        T0 + IDLE,
        T0,
    )
    second = await store.create()
    assert second.id != created.id and second.data == {}
    assert len(await stored(db)) == 2


async def test_get_returns_the_live_session(store: SessionStore) -> None:
    created = await store.create({"a": 1})
    found = await store.get(created.id)
    assert found == created
    assert isinstance(found, StoredSession)


@pytest.mark.parametrize("value", MALFORMED, ids=lambda v: repr(v)[:20])
async def test_malformed_ids_cost_no_query(
    store: SessionStore, db: DatabaseManager, value: Any
) -> None:
    await store.create()
    with count_queries(db) as counter:
        assert await store.get(value) is None
        assert await store.save(value, {"x": 1}) is False
        assert await store.extend(value) is False
        assert await store.rotate(value) is None
        assert await store.delete(value) is False
    assert counter.count == 0, counter.statements


async def test_an_id_never_issued_is_never_adopted(
    store: SessionStore, db: DatabaseManager
) -> None:
    live = await store.create({"mine": True})
    stranger = new_session_id()
    assert await store.get(stranger) is None
    assert await store.save(stranger, {"planted": True}) is False
    assert await store.extend(stranger) is False
    assert await store.rotate(stranger) is None
    assert await store.delete(stranger) is False
    assert await store.get(stranger) is None
    rows = await stored(db)
    assert list(rows) == [session_key(live.id)]
    assert rows[session_key(live.id)]["data"] == {"mine": True}


async def test_a_live_read_is_one_select_and_a_due_touch_one_update(
    store: SessionStore, db: DatabaseManager, clock: Clock
) -> None:
    created = await store.create({"a": 1})
    await store.get(created.id)  # connections and caches warm
    with count_queries(db) as counter:
        found = await store.get(created.id)
    assert found is not None and found.last_accessed == T0
    assert verbs(counter.statements) == ["SELECT"], counter.statements

    clock.advance(minutes=5)
    with count_queries(db) as counter:
        found = await store.get(created.id)
    assert verbs(counter.statements) == ["SELECT", "UPDATE"], counter.statements
    assert found is not None and found.last_accessed == clock.now

    clock.advance(minutes=1)
    with count_queries(db) as counter:
        assert await store.get(created.id) is not None
    assert counter.count == 1, counter.statements


async def test_the_touch_is_throttled_and_slides_the_expiry(
    store: SessionStore, db: DatabaseManager, clock: Clock
) -> None:
    created = await store.create()
    clock.advance(minutes=4, seconds=59)
    found = await store.get(created.id)
    assert found is not None and found.expires_at == T0 + IDLE
    row = await row_of(db, created.id)
    assert row is not None
    assert (row["last_accessed"], row["expires_at"]) == (T0, T0 + IDLE), "written too early"

    touched_at = clock.advance(seconds=1)
    found = await store.get(created.id)
    assert found is not None
    assert (found.last_accessed, found.expires_at) == (touched_at, touched_at + IDLE)
    row = await row_of(db, created.id)
    assert row is not None
    assert (row["last_accessed"], row["expires_at"]) == (touched_at, touched_at + IDLE)
    assert row["created_at"] == T0


async def test_idle_expiry(store: SessionStore, db: DatabaseManager, clock: Clock) -> None:
    created = await store.create()
    used_at = clock.advance(hours=23, minutes=59)
    assert await store.get(created.id) is not None  # used: slides to used_at + 24 h
    clock.advance(minutes=4)
    assert await store.get(created.id) is not None  # within the touch interval: no write
    clock.now = used_at + IDLE - timedelta(microseconds=1)
    assert await extended_row(db, created.id) == (used_at, used_at + IDLE)
    clock.now = used_at + IDLE  # exactly the expiry
    with count_queries(db) as counter:
        assert await store.get(created.id) is None
    assert verbs(counter.statements) == ["SELECT"], "an expired session is never written"
    assert await store.extend(created.id) is False
    assert await row_of(db, created.id) is not None, "left for cleanup_expired"


async def test_the_absolute_lifetime_caps_the_sliding_expiry(
    store: SessionStore, db: DatabaseManager, clock: Clock
) -> None:
    created = await store.create()
    found: StoredSession | None = created
    for _ in range(13):  # used every 12 hours for six and a half days
        clock.advance(hours=12)
        found = await store.get(created.id)
        assert found is not None
        assert found.expires_at == min(clock.now + IDLE, T0 + ABSOLUTE)
    assert found is not None
    assert found.expires_at == T0 + ABSOLUTE  # capped: the last touch was at 6.5 days
    assert await store.extend(created.id) is True
    row = await row_of(db, created.id)
    assert row is not None and row["expires_at"] == T0 + ABSOLUTE
    clock.now = T0 + ABSOLUTE - timedelta(microseconds=1)
    assert await store.get(created.id) is not None
    clock.now = T0 + ABSOLUTE
    assert await store.get(created.id) is None
    assert await store.save(created.id, {"late": True}) is False
    assert await store.rotate(created.id) is None


async def test_extend_writes_at_once(
    store: SessionStore, db: DatabaseManager, clock: Clock
) -> None:
    created = await store.create()
    at = clock.advance(seconds=30)  # well inside the touch interval
    with count_queries(db) as counter:
        assert await store.extend(created.id) is True
    assert verbs(counter.statements) == ["SELECT", "UPDATE"], counter.statements
    row = await row_of(db, created.id)
    assert row is not None
    assert (row["last_accessed"], row["expires_at"]) == (at, at + IDLE)


# -- writing ------------------------------------------------------------------------------------


async def test_save_replaces_the_data_of_a_live_session(
    store: SessionStore, db: DatabaseManager
) -> None:
    created = await store.create({"a": 1})
    other = await store.create({"b": 2})
    data = {**created.data, "fridge": [3, 4], "nested": {"x": None, "ok": True}}
    assert await store.save(created.id, data) is True
    assert await store.save(created.id, data) is True, "unchanged data still counts as saved"
    found = await store.get(created.id)
    assert found is not None and found.data == data
    untouched = await store.get(other.id)
    assert untouched is not None and untouched.data == {"b": 2}
    with pytest.raises(TypeError, match="mapping"):
        await store.save(created.id, cast(Any, [1, 2]))


async def test_save_after_logout_or_rotation_brings_nothing_back(
    store: SessionStore, db: DatabaseManager, clock: Clock
) -> None:
    # A request that read the session, then finished after the logout.
    logged_out = await store.create({"user": 1})
    assert await store.delete(logged_out.id) is True
    assert await store.save(logged_out.id, {"user": 1, "late": True}) is False
    assert await store.extend(logged_out.id) is False
    assert await store.get(logged_out.id) is None
    assert await stored(db) == {}

    # A request that still holds the id from before a rotation.
    rotated = await store.create({"user": 2})
    fresh = await store.rotate(rotated.id)
    assert fresh is not None
    assert await store.save(rotated.id, {"user": 2, "late": True}) is False
    assert list(await stored(db)) == [session_key(fresh.id)]
    found = await store.get(fresh.id)
    assert found is not None and found.data == {"user": 2}

    # A request that finished after its session expired.
    expired = await store.create({"user": 3})
    clock.advance(hours=25)
    assert await store.save(expired.id, {"user": 3, "late": True}) is False
    row = await row_of(db, expired.id)
    assert row is not None and row["data"] == {"user": 3}


class InterruptedStore(SessionStore):
    """A store whose reads are followed, before anything else, by ``between()``: the
    logout or rotation of another request landing between a read and its touch."""

    between: Callable[[], Any]

    async def _load(self, key: str) -> Any:
        record = await super()._load(key)
        await self.between()
        return record


@pytest.mark.parametrize("interruption", ["delete", "rotate"])
async def test_a_touch_after_a_logout_or_rotation_does_not_revive_the_old_id(
    db: DatabaseManager, clock: Clock, interruption: str
) -> None:
    plain = SessionStore(db, FridgeSession, clock=clock)
    racing = InterruptedStore(db, FridgeSession, clock=clock)
    created = await plain.create({"a": 1})
    rotated: list[StoredSession | None] = []

    async def logout_or_rotate() -> None:
        if interruption == "delete":
            assert await plain.delete(created.id) is True
        else:
            rotated.append(await plain.rotate(created.id))

    racing.between = logout_or_rotate
    clock.advance(minutes=10)  # a touch is due
    assert await racing.get(created.id) is None
    assert session_key(created.id) not in await stored(db)
    if rotated:
        (fresh,) = rotated
        assert fresh is not None and list(await stored(db)) == [session_key(fresh.id)]


async def test_rotate_keeps_data_and_children_and_kills_the_old_id(
    store: SessionStore, db: DatabaseManager, clock: Clock
) -> None:
    created = await store.create({"cart": [1, 2]})
    bystander = await store.create({"other": True})
    await add_children(db, created.id, 3)
    await add_children(db, bystander.id, 2)
    clock.advance(hours=1)

    fresh = await store.rotate(created.id)
    assert fresh is not None
    assert fresh.id != created.id and is_session_id(fresh.id)
    assert fresh.data == {"cart": [1, 2]}
    assert fresh.created_at == T0, "the absolute lifetime still counts from creation"
    assert fresh.expires_at == created.expires_at

    assert await store.get(created.id) is None
    assert await store.rotate(created.id) is None
    found = await store.get(fresh.id)
    assert found is not None and found.data == {"cart": [1, 2]}
    children = await children_by_key(db)
    assert children == {session_key(fresh.id): 4, session_key(bystander.id): 3}
    assert session_key(created.id) not in await stored(db)


async def test_delete_cascades_to_the_child_rows(store: SessionStore, db: DatabaseManager) -> None:
    gone = await store.create()
    kept = await store.create()
    await add_children(db, gone.id, 5)
    await add_children(db, kept.id, 2)
    assert await store.delete(gone.id) is True
    assert await store.delete(gone.id) is False
    assert await children_by_key(db) == {session_key(kept.id): 3}
    assert list(await stored(db)) == [session_key(kept.id)]


async def test_child_rows_keep_their_unique_constraint(
    store: SessionStore, db: DatabaseManager
) -> None:
    created = await store.create()
    await add_children(db, created.id, 1)
    with pytest.raises(DuplicateEntityError):
        async with db.session() as session:
            session.add(FridgeIngredient(session_id=session_key(created.id), ingredient_id=0))


async def test_data_changes_in_place_are_tracked_by_the_orm(
    store: SessionStore, db: DatabaseManager
) -> None:
    created = await store.create({"fridge": []})
    async with db.session() as session:
        row = await session.get(FridgeSession, session_key(created.id))
        assert row is not None
        row.data["fridge"] = [7]
        assert inspect(row).modified
    found = await store.get(created.id)
    assert found is not None and found.data == {"fridge": [7]}


async def test_concurrent_reads_with_a_touch_due(
    store: SessionStore, db: DatabaseManager, clock: Clock
) -> None:
    created = await store.create()
    clock.advance(minutes=30)
    found = await asyncio.gather(*(store.get(created.id) for _ in range(8)))
    assert all(item is not None and item.id == created.id for item in found)
    row = await row_of(db, created.id)
    assert row is not None and row["last_accessed"] == clock.now


# -- cleanup and statistics -----------------------------------------------------------------------


async def test_cleanup_deletes_exactly_the_expired_sessions_in_batches(
    store: SessionStore, db: DatabaseManager, clock: Clock
) -> None:
    # Rows big enough for several PostgreSQL pages, and live ones between expired ones.
    padding = secrets.token_hex(600)
    sessions = [await store.create({"pad": padding, "n": n}) for n in range(30)]
    for created in sessions[:6]:
        await add_children(db, created.id, 2)
    clock.advance(hours=12)
    live = sessions[1::3]
    for created in live:
        assert await store.extend(created.id) is True
    clock.advance(hours=13)  # the others are 25 hours idle
    expired = [created for created in sessions if created not in live]

    commits: list[object] = []

    def committed(connection: object) -> None:
        commits.append(connection)

    background = db.background_engine.sync_engine
    event.listen(background, "commit", committed)
    try:
        with count_queries(db) as counter:
            deleted = await store.cleanup_expired(batch_size=4)
    finally:
        event.remove(background, "commit", committed)
    assert deleted == len(expired) == 20
    batches = verbs(counter.statements).count("DELETE")
    assert batches >= 3, counter.statements
    assert len(commits) >= batches, "each batch is its own transaction"

    assert set(await stored(db)) == {session_key(created.id) for created in live}
    assert await children_by_key(db) == {
        session_key(created.id): 3 for created in sessions[:6] if created in live
    }
    for created in live:
        assert await store.get(created.id) is not None
    assert await store.cleanup_expired(batch_size=4) == 0


async def test_cleanup_with_nothing_to_do(store: SessionStore) -> None:
    assert await store.cleanup_expired() == 0
    created = await store.create()
    assert await store.cleanup_expired(batch_size=1) == 0
    assert await store.get(created.id) is not None


async def test_stats(store: SessionStore, db: DatabaseManager, clock: Clock) -> None:
    assert await store.stats() == SessionStats(
        active=0, child_rows=0, expired_waiting=0, oldest_created_at=None
    )
    old = await store.create()
    await add_children(db, old.id, 2)
    clock.advance(hours=1)
    middle = await store.create()
    await add_children(db, middle.id, 1)
    clock.advance(hours=1)
    young = await store.create()
    clock.advance(hours=22, minutes=30)  # old is idle for 24.5 hours
    assert await store.extend(middle.id) is True
    assert await store.extend(young.id) is True
    stats = await store.stats()
    assert stats == SessionStats(
        active=2,
        child_rows=5,
        expired_waiting=1,
        oldest_created_at=T0 + timedelta(hours=1),
    )
    assert await store.cleanup_expired() == 1
    after = await store.stats()
    assert (after.active, after.expired_waiting, after.child_rows) == (2, 0, 2)


# -- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [FridgeSession, AccountSession], ids=lambda m: m.__name__)
async def test_indexes_fit_each_backend(db: DatabaseManager, model: type[Any]) -> None:
    def indexed_columns(connection: Any) -> set[str]:
        indexes = inspect(connection).get_indexes(model.__tablename__)
        return {name for index in indexes for name in index["column_names"] if name}

    async with db.engine.connect() as connection:
        columns = await connection.run_sync(indexed_columns)
        child_indexes = await connection.run_sync(
            lambda sync: inspect(sync).get_indexes(FridgeIngredient.__tablename__)
        )
    assert "created_at" in columns
    assert "last_accessed" not in columns
    if db.dialect_name == "postgresql":
        assert "expires_at" not in columns, "a touch would no longer be a HOT update"
    else:
        assert "expires_at" in columns, "cleanup selects expired keys through it"
    if model is AccountSession:
        assert "user_id" in columns
    assert any(index["column_names"] == ["session_id"] for index in child_indexes)


async def test_a_session_model_with_columns_of_its_own(db: DatabaseManager, clock: Clock) -> None:
    store = SessionStore(db, AccountSession, clock=clock)
    created = await store.create({"a": 1})
    async with db.session() as session:
        row = await session.get(AccountSession, session_key(created.id))
        assert row is not None and row.user_id is None
        row.user_id = 7
    with count_queries(db) as counter:
        assert await store.get(created.id) == created
    assert counter.count == 1
    fresh = await store.rotate(created.id)
    assert fresh is not None and fresh.data == {"a": 1}
    assert await store.stats() == SessionStats(
        active=1, child_rows=0, expired_waiting=0, oldest_created_at=T0
    )


def test_a_child_model_must_name_its_session_model() -> None:
    class Elsewhere(DeclarativeBase):
        pass

    with pytest.raises(TypeError, match="__session_model__ = YourSessionModel"):

        class Orphan(SessionChildMixin, Elsewhere):
            __tablename__ = "ss_orphans"
            id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(TypeError, match="ServerSessionMixin"):

        class Misled(SessionChildMixin, Elsewhere):
            __tablename__ = "ss_misled"
            __session_model__ = User  # type: ignore[assignment]
            id: Mapped[int] = mapped_column(primary_key=True)


def test_the_child_foreign_key_cascades() -> None:
    (fk,) = FridgeIngredient.__table__.c.session_id.foreign_keys
    assert fk.column is FridgeSession.__table__.c.session_id
    assert (fk.ondelete, fk.onupdate) == ("CASCADE", "CASCADE")
    assert FridgeIngredient.__table__.c.session_id.nullable is False


# -- PostgreSQL specifics ----------------------------------------------------------------------


async def flushed_update_counts(db: DatabaseManager) -> tuple[int, int]:
    """``n_tup_upd`` and ``n_tup_hot_upd`` of the session table, after making the pool's one
    connection (the one the store wrote on) flush its pending statistics.

    pg_stat_force_next_flush() (PostgreSQL 15+) makes the backend flush when it next goes
    idle, which it does before it answers the COMMIT; a new transaction then reads them.
    """
    async with db.engine.connect() as connection:
        await connection.execute(text("SELECT pg_stat_force_next_flush()"))
        await connection.commit()
        await connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = (
            await connection.execute(
                text(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                    " WHERE relid = CAST(:name AS regclass)"
                ),
                {"name": FridgeSession.__tablename__},
            )
        ).one()
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_touches_are_hot_updates_on_postgresql(make_db: MakeDb, clock: Clock) -> None:
    db = await make_db(SessionBase.metadata, pool_size=1, max_overflow=0)
    store = SessionStore(db, FridgeSession, clock=clock)
    sessions = [await store.create({"n": n}) for n in range(5)]
    before = await flushed_update_counts(db)
    clock.advance(minutes=10)
    for created in sessions:
        assert await store.get(created.id) is not None  # due: one UPDATE each
        assert await store.extend(created.id) is True  # one more each
    updates, hot = await flushed_update_counts(db)
    assert (updates - before[0], hot - before[1]) == (10, 10)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("plans", ["auto", "force_generic_plan"])
async def test_cleanup_batches_are_tid_range_scans(
    store: SessionStore, db: DatabaseManager, plans: str
) -> None:
    padding = secrets.token_hex(300)
    for n in range(200):
        await store.create({"pad": padding, "n": n})
    statement = postgresql_batch_statement(store.table)
    async with db.engine.connect() as connection:
        await connection.execute(text("ANALYZE ss_fridge_sessions"))
        await connection.execute(text(f"SET LOCAL plan_cache_mode = {plans}"))
        compiled = statement.compile(dialect=connection.dialect)
        values = {"p_lo": "(2,0)", "p_hi": "(5,0)", "p_now": T0}
        params = tuple(values[name] for name in compiled.positiontup or ())
        plan = await connection.exec_driver_sql(f"EXPLAIN {compiled.string}", params)
        lines = [line for (line,) in plan.all()]
    assert any("Tid Range Scan" in line for line in lines), lines


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_live_read_is_one_round_trip_on_postgresql(make_db: MakeDb, clock: Clock) -> None:
    db = await make_db(SessionBase.metadata, pool_size=1, max_overflow=0)
    store = SessionStore(db, FridgeSession, clock=clock)
    created = await store.create({"a": 1})
    await store.get(created.id)
    logged: list[str] = []

    def log(record: Any) -> None:
        logged.append(record.query)

    prepared: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        prepared.append(statement)

    raw = await db.engine.raw_connection()
    cast(Any, raw.driver_connection).add_query_logger(log)
    await greenlet_spawn(raw.close)
    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        assert await store.get(created.id) is not None
        for _ in range(3):  # asyncpg hands records to its loggers with call_soon
            await asyncio.sleep(0)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
        raw = await db.engine.raw_connection()
        cast(Any, raw.driver_connection).remove_query_logger(log)
        await greenlet_spawn(raw.close)
    # asyncpg logs what it runs itself (fetch, BEGIN, COMMIT, ROLLBACK): the fast read
    # only. The cursor event sees that same read (fast reads are announced to it) and
    # would see any statement of SQLAlchemy's too: there is none.
    assert verbs(logged) == ["SELECT"], logged
    assert prepared == logged


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_live_read_is_one_statement_on_sqlite(make_db: MakeDb, clock: Clock) -> None:
    db = await make_db(SessionBase.metadata, pool_size=1, max_overflow=0)
    store = SessionStore(db, FridgeSession, clock=clock)
    created = await store.create({"a": 1})
    await store.get(created.id)
    traced: list[str] = []  # every statement SQLite runs, BEGIN and ROLLBACK included
    raw = await db.engine.raw_connection()
    await cast(Any, raw.driver_connection).set_trace_callback(traced.append)
    await greenlet_spawn(raw.close)
    try:
        assert await store.get(created.id) is not None
    finally:
        raw = await db.engine.raw_connection()
        await cast(Any, raw.driver_connection).set_trace_callback(None)
        await greenlet_spawn(raw.close)
    assert verbs(traced) == ["SELECT"], traced


async def test_without_the_fast_path_reads_still_work(make_db: MakeDb, clock: Clock) -> None:
    db = await make_db(SessionBase.metadata, fast_path=False)
    store = SessionStore(db, FridgeSession, clock=clock)
    created = await store.create({"a": 1})
    with count_queries(db) as counter:
        assert await store.get(created.id) == created
    assert verbs(counter.statements) == ["SELECT"], counter.statements
    clock.advance(hours=1)
    found = await store.get(created.id)
    assert found is not None and found.last_accessed == clock.now


# -- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"idle_timeout": timedelta(0)}, "idle_timeout"),
        ({"idle_timeout": timedelta(hours=-1)}, "idle_timeout"),
        ({"idle_timeout": 3600}, "pass a timedelta"),
        ({"absolute_timeout": timedelta(0)}, "absolute_timeout"),
        ({"absolute_timeout": None}, "absolute_timeout"),
        ({"touch_interval": timedelta(seconds=-1)}, "touch_interval"),
        ({"touch_interval": timedelta(hours=24)}, "shorter than idle_timeout"),
        ({"touch_interval": timedelta(hours=2), "idle_timeout": timedelta(hours=1)}, "Lower"),
    ],
)
async def test_constructor_arguments_are_checked(
    db: DatabaseManager, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SessionStore(db, FridgeSession, **arguments)


async def test_constructor_types_are_checked(db: DatabaseManager) -> None:
    with pytest.raises(TypeError, match="ServerSessionMixin"):
        SessionStore(db, cast(Any, User))
    with pytest.raises(TypeError, match="ServerSessionMixin"):
        SessionStore(db, cast(Any, ServerSessionMixin))
    with pytest.raises(TypeError, match="DatabaseManager"):
        SessionStore(cast(Any, "sqlite://"), FridgeSession)
    with pytest.raises(TypeError, match="callable"):
        SessionStore(db, FridgeSession, clock=cast(Any, T0))
    zero = SessionStore(db, FridgeSession, touch_interval=timedelta(0))
    assert zero.touch_interval == timedelta(0)


async def test_cleanup_batch_size_is_checked(store: SessionStore) -> None:
    for bad in (0, -1, True, 1.5, "10", MAX_CLEANUP_BATCH + 1):
        with pytest.raises(ValueError, match="batch_size"):
            await store.cleanup_expired(batch_size=cast(Any, bad))


async def test_a_naive_clock_is_refused(db: DatabaseManager) -> None:
    store = SessionStore(db, FridgeSession, clock=lambda: datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="aware datetime"):
        await store.create()


# -- UNLOGGED tables --------------------------------------------------------------------------


async def test_unlogged_session_tables(db: DatabaseManager) -> None:
    """``__session_unlogged__`` makes the session table and its children UNLOGGED on
    PostgreSQL (a logged child could not refer to it) and changes nothing elsewhere."""
    if db.dialect_name == "postgresql":
        async with db.session() as session:
            rows = await session.execute(
                text(
                    "SELECT relname, relpersistence::text FROM pg_class WHERE relname IN "
                    "('ss_ephemeral_sessions', 'ss_ephemeral_notes', 'ss_fridge_sessions', "
                    "'ss_fridge_ingredients')"
                )
            )
            persistence = {str(name): str(kind) for name, kind in rows.all()}
        assert persistence == {
            "ss_ephemeral_sessions": "u",
            "ss_ephemeral_notes": "u",  # a logged table could not refer to an unlogged one
            "ss_fridge_sessions": "p",
            "ss_fridge_ingredients": "p",
        }
    store = SessionStore(db, EphemeralSession)
    created = await store.create({"k": 1})
    async with db.session() as session:
        session.add(EphemeralNote(session_id=session_key(created.id)))
    found = await store.get(created.id)
    assert found is not None and found.data == {"k": 1}
    assert (await store.stats()).child_rows == 1
    assert await store.delete(created.id)
    assert (await store.stats()).child_rows == 0
