"""The fast path of ``get_by_id``, ``list`` and ``count`` on SQLite, PostgreSQL and MariaDB.

The fast path (:mod:`aegis_shared.database.fast_path`) must be invisible except for what it
saves: every answer equals the ORM path's (a ``fast_path=False`` manager on the same
database), the objects behave like ORM-loaded ones, writes in a unit of work are seen by
its later reads, and errors, pool use and cancellation leave nothing behind. Round trips
are counted at the driver (asyncpg's query logger, SQLite's trace callback, MariaDB's
session status), never timed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.exc import InvalidRequestError, StatementError
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    reconstructor,
    relationship,
    selectinload,
)
from sqlalchemy.util.concurrency import greenlet_spawn

from aegis_shared.database import BaseRepository, DatabaseManager, UnitOfWork
from aegis_shared.errors.exceptions import (
    EntityNotFoundError,
    PoolTimeoutError,
    QueryTimeoutError,
    RelationshipNotLoadedError,
    TransactionConflictError,
)
from aegis_shared.models import NAMING_CONVENTION, UTCDateTime
from aegis_shared.models.mixins import IntegerIdMixin, TimestampMixin
from aegis_shared.testing import count_queries, isolated_session
from tests.conftest import MakeDb
from tests.models import Base, Post, PostRepository, User, UserRepository

# -- models of this file ----------------------------------------------------------------------
# Their own metadata, so the rest of the suite does not create these tables.


class FastBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Gadget(IntegerIdMixin, TimestampMixin, FastBase):
    """One column of most types, nullable ones, and attribute keys that differ from the
    column names (one of them a reserved word)."""

    __tablename__ = "fp_gadgets"

    name: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean)
    color: Mapped[Color] = mapped_column(SAEnum(Color, name="fp_color"))
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[Any] = mapped_column(JSON, nullable=True)
    released: Mapped[date | None] = mapped_column(Date, nullable=True)
    seen_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # naive
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    label: Mapped[str | None] = mapped_column("label_text", String(50), nullable=True)
    rank: Mapped[int | None] = mapped_column("order", Integer, nullable=True)


class Priced(IntegerIdMixin, FastBase):
    """Numeric and Float columns."""

    __tablename__ = "fp_priced"

    price: Mapped[Decimal | None] = mapped_column(Numeric(10, 2), nullable=True)
    ratio: Mapped[float | None] = mapped_column(Float, nullable=True)


class Shelf(IntegerIdMixin, FastBase):
    """A relationship loaded eagerly on every read: only the ORM path loads it."""

    __tablename__ = "fp_shelves"

    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list[Book]] = relationship(lazy="selectin", order_by="Book.id")


class Book(IntegerIdMixin, FastBase):
    __tablename__ = "fp_books"

    shelf_id: Mapped[int] = mapped_column(ForeignKey("fp_shelves.id"))
    title: Mapped[str] = mapped_column(String(50))


class GadgetRepository(BaseRepository[Gadget]):
    pass


class PricedRepository(BaseRepository[Priced]):
    pass


class ShelfRepository(BaseRepository[Shelf]):
    pass


class FastUnitOfWork(UnitOfWork):
    gadgets: GadgetRepository
    users: UserRepository
    posts: PostRepository
    shelves: ShelfRepository


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    """The default manager (fast path on) with the suite's tables and this file's."""
    return await make_db(Base.metadata, FastBase.metadata)


@pytest.fixture
async def slow(db: DatabaseManager, make_db: MakeDb) -> DatabaseManager:
    """A manager on the same database with the fast path off: the ORM path."""
    return await make_db(fast_path=False, default=False)


T0 = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)

GADGETS: list[dict[str, Any]] = [
    {
        "name": "anvil",
        "active": True,
        "color": Color.RED,
        "notes": "heavy",
        "data": {"k": [1, 2, {"x": None}], "ü": "ß"},
        "released": date(2020, 1, 31),
        "seen_at": datetime(2021, 5, 6, 7, 8, 9),
        "checked_at": T0,
        "label": "L1",
        "rank": 3,
    },
    {
        "name": "Zoë 🚀",
        "active": False,
        "color": Color.BLUE,
        "notes": None,
        "data": None,
        "released": None,
        "seen_at": None,
        "checked_at": None,
        "label": None,
        "rank": None,
    },
    {
        "name": "日本語",
        "active": True,
        "color": Color.GREEN,
        "notes": "",
        "data": [],
        "released": date(1999, 12, 31),
        "seen_at": datetime(2000, 1, 1),
        "checked_at": T0 + timedelta(days=400, microseconds=1),
        "label": "L1",
        "rank": 0,
    },
    {
        "name": "bolt",
        "active": False,
        "color": Color.RED,
        "notes": "x" * 5000,
        "data": {"n": 1.5},
        "released": date(2020, 1, 31),
        "seen_at": None,
        "checked_at": T0 - timedelta(hours=5),
        "label": "L2",
        "rank": -7,
    },
    {
        "name": "crate",
        "active": True,
        "color": Color.BLUE,
        "notes": None,
        "data": "just a string",
        "released": None,
        "seen_at": datetime(2030, 12, 31, 23, 59, 59),
        "checked_at": None,
        "label": "L2",
        "rank": 3,
    },
    {
        "name": "drill",
        "active": True,
        "color": Color.GREEN,
        "notes": "d",
        "data": {"deep": {"er": [True, False]}},
        "released": date(2024, 2, 29),
        "seen_at": None,
        "checked_at": T0,
        "label": None,
        "rank": 1,
    },
]


def columns_of(obj: Any) -> dict[str, tuple[type, Any]]:
    """Every column attribute of ``obj`` with its value's type (True is not 1)."""
    values = {attr.key: getattr(obj, attr.key) for attr in inspect(type(obj)).column_attrs}
    return {key: (type(value), value) for key, value in values.items()}


async def seed_gadgets(db: DatabaseManager) -> list[int]:
    async with db.session() as session:
        gadgets = [Gadget(**values) for values in GADGETS]
        session.add_all(gadgets)
        await session.flush()
        return [gadget.id for gadget in gadgets]


def idle(session: AsyncSession) -> bool:
    """True when ``session`` holds no transaction (so no connection): after a fast read it
    still does not; after an ORM read it does."""
    return not session.in_transaction()


def checked_out(db: DatabaseManager) -> int:
    return db.pool_status()["main"]["checked_out"]


async def read_with(
    manager: DatabaseManager, call: Callable[[GadgetRepository], Awaitable[Any]]
) -> tuple[Any, bool]:
    """``call`` on a repository of a fresh session of ``manager``; its outcome (values of
    the objects, or the exception type) and whether the session stayed idle."""
    async with manager.session() as session:
        try:
            result = await call(GadgetRepository(session))
        except Exception as exc:  # compared between the paths
            return ("raised", type(exc)), idle(session)
        stayed_idle = idle(session)
        if isinstance(result, list):
            return [columns_of(item) for item in result], stayed_idle
        if isinstance(result, Gadget):
            return columns_of(result), stayed_idle
        return result, stayed_idle


# -- 1. same answers as the ORM path ----------------------------------------------------------

FILTERS: list[dict[str, Any] | None] = [
    None,
    {},
    {"active": True},
    {"active": False},
    {"color": Color.RED},
    {"notes": None},
    {"label": None},
    {"label": "L1"},
    {"rank": 3},
    {"released": date(2020, 1, 31)},
    {"checked_at": T0},
    {"name": "Zoë 🚀"},
    {"name": ["anvil", "日本語", "nope"]},
    {"color": [Color.RED, Color.BLUE]},
    {"color": (Color.GREEN,)},
    {"active": True, "label": "L2"},
    {"active": True, "notes": None, "color": Color.BLUE},
    {"rank": [3, 0], "released": None},
    # IN lists of values the column type converts on the way in
    {"active": [True]},
    {"released": [date(2020, 1, 31), date(1999, 12, 31)]},
    {"checked_at": [T0]},
    {"checked_at": [T0, T0 - timedelta(hours=5)]},
]
ORDERINGS: list[Any] = [None, "name", "-name", ["name", "-id"], "-rank", ["label", "-id"], "+id"]
PAGES = [(0, None), (1, 2), (3, 100), (5, 1), (100, 5), (0, 0)]


async def test_get_by_id_and_get_one_match_the_orm_path(
    db: DatabaseManager, slow: DatabaseManager
) -> None:
    ids = await seed_gadgets(db)
    for gadget_id in [*ids, 999_999, -1, 0]:
        fast, fast_idle = await read_with(db, lambda repo, i=gadget_id: repo.get_by_id(i))
        orm, orm_idle = await read_with(slow, lambda repo, i=gadget_id: repo.get_by_id(i))
        assert fast == orm, gadget_id
        assert fast_idle and not orm_idle, "fast path ran on one side only"
    for manager in (db, slow):
        outcome, _ = await read_with(manager, lambda repo: repo.get_one(999_999))
        assert outcome == ("raised", EntityNotFoundError)
        found, _ = await read_with(manager, lambda repo: repo.get_one(ids[1]))
        assert found["name"] == (str, "Zoë 🚀")


async def test_values_round_trip_with_their_python_types(db: DatabaseManager) -> None:
    ids = await seed_gadgets(db)
    async with db.session() as session:
        gadgets = await GadgetRepository(session).list()
        assert idle(session)
    assert [g.id for g in gadgets] == ids
    for gadget, expected in zip(gadgets, GADGETS, strict=True):
        got = columns_of(gadget)
        for key, value in expected.items():
            assert got[key] == (type(value), value), key
        assert got["created_at"][1].tzinfo is not None
        assert got["created_at"][1].utcoffset() == timedelta(0)


async def test_bulk_load_stores_what_the_orm_stores(db: DatabaseManager) -> None:
    """create_many(returning=False) (COPY on PostgreSQL) converts values exactly as the ORM
    does, including the ones it lets skip a converter (a bool for a boolean column) and
    the ones it may not (1 and 0 for a boolean become True and False)."""
    rows = [dict(values) for values in GADGETS]
    rows[0]["active"], rows[1]["active"] = 1, 0
    orm_ids = await seed_gadgets(db)
    async with db.session() as session:
        assert await GadgetRepository(session).create_many(rows, returning=False) == len(rows)
    async with db.session() as session:
        stored = await GadgetRepository(session).list(limit=2 * len(rows))
    by_orm, by_bulk = stored[: len(orm_ids)], stored[len(orm_ids) :]
    for orm_row, bulk_row in zip(by_orm, by_bulk, strict=True):
        orm_values, bulk_values = columns_of(orm_row), columns_of(bulk_row)
        for key in ("id", "created_at", "updated_at"):
            orm_values.pop(key), bulk_values.pop(key)
        assert bulk_values == orm_values
    # The ORM path wraps the type's error in StatementError; COPY raises it as it is.
    with pytest.raises((TypeError, StatementError), match="Not a boolean value"):
        async with db.session() as session:
            await GadgetRepository(session).create_many(
                [{**GADGETS[0], "active": "yes"}], returning=False
            )


@pytest.mark.parametrize("filters", FILTERS, ids=repr)
async def test_list_and_count_match_the_orm_path(
    db: DatabaseManager,
    slow: DatabaseManager,
    filters: dict[str, Any] | None,
) -> None:
    await seed_gadgets(db)
    for order_by in ORDERINGS:
        fast, fast_idle = await read_with(
            db, lambda repo, o=order_by: repo.list(filters=filters, order_by=o)
        )
        orm, orm_idle = await read_with(
            slow, lambda repo, o=order_by: repo.list(filters=filters, order_by=o)
        )
        assert fast == orm, order_by
        assert fast_idle and not orm_idle
    fast_count, fast_idle = await read_with(db, lambda repo: repo.count(filters))
    orm_count, orm_idle = await read_with(slow, lambda repo: repo.count(filters))
    assert fast_count == orm_count
    assert isinstance(fast_count, int)
    assert fast_idle and not orm_idle


@pytest.mark.parametrize("order_by", ORDERINGS, ids=repr)
async def test_paging_matches_the_orm_path(
    db: DatabaseManager, slow: DatabaseManager, order_by: Any
) -> None:
    await seed_gadgets(db)
    for skip, limit in PAGES:
        fast, _ = await read_with(
            db, lambda repo, s=skip, n=limit: repo.list(skip=s, limit=n, order_by=order_by)
        )
        orm, _ = await read_with(
            slow, lambda repo, s=skip, n=limit: repo.list(skip=s, limit=n, order_by=order_by)
        )
        assert fast == orm, (skip, limit)
    for page in (1, 2, 3, 4):
        fast_page, _ = await read_with(db, lambda repo, p=page: repo.paginate(p, 4))
        orm_page, _ = await read_with(slow, lambda repo, p=page: repo.paginate(p, 4))
        assert (fast_page.total, fast_page.page, fast_page.page_size) == (
            orm_page.total,
            orm_page.page,
            orm_page.page_size,
        )
        assert [columns_of(g) for g in fast_page.items] == [columns_of(g) for g in orm_page.items]


@pytest.mark.parametrize(
    "call",
    [
        lambda repo: repo.list(filters={"id": []}),  # empty IN
        lambda repo: repo.list(filters={"id": list(range(1, 40))}),  # long IN
        lambda repo: repo.count({"id": []}),
        lambda repo: repo.count({"id": list(range(1, 40))}),
        lambda repo: repo.list(order_by=Gadget.name.desc()),  # a column, not a name
        lambda repo: repo.list(order_by=[Gadget.label, "-id"]),
        lambda repo: repo.get_by_id(None),
    ],
    ids=["empty-in", "long-in", "count-empty-in", "count-long-in", "column", "mixed", "none-id"],
)
async def test_shapes_the_fast_path_leaves_to_the_orm_give_the_same_answers(
    db: DatabaseManager, slow: DatabaseManager, call: Callable[[GadgetRepository], Any]
) -> None:
    await seed_gadgets(db)
    fast, _ = await read_with(db, call)
    orm, _ = await read_with(slow, call)
    assert fast == orm


async def test_numeric_and_float_columns_match_the_orm_path(
    db: DatabaseManager, slow: DatabaseManager
) -> None:
    async with db.session() as session:
        session.add_all(
            [
                Priced(price=Decimal("12.34"), ratio=0.5),
                Priced(price=None, ratio=None),
                Priced(price=Decimal("-0.01"), ratio=-1e10),
            ]
        )

    async def outcome(manager: DatabaseManager, call: Callable[[PricedRepository], Any]) -> Any:
        async with manager.session() as session:
            result = await call(PricedRepository(session))
            return [columns_of(p) for p in result] if isinstance(result, list) else result

    for call in (
        lambda repo: repo.list(),
        lambda repo: repo.list(filters={"price": Decimal("12.34")}),
        lambda repo: repo.list(order_by="-ratio"),
        lambda repo: repo.count({"price": None}),
    ):
        assert await outcome(db, call) == await outcome(slow, call)
    async with db.session() as session:
        (first,) = await PricedRepository(session).list(limit=1)
        assert first.price == Decimal("12.34") and isinstance(first.price, Decimal)


# -- 2. a unit of work reads its own writes ----------------------------------------------------


async def test_a_unit_of_work_reads_what_it_wrote_and_forgets_it_on_rollback(
    db: DatabaseManager,
) -> None:
    ids = await seed_gadgets(db)
    kept, doomed = ids[0], ids[1]
    async with FastUnitOfWork(db) as uow:
        created = await uow.gadgets.create({"name": "new", "active": True, "color": Color.RED})
        assert await uow.gadgets.get_by_id(created.id) is created
        assert await uow.gadgets.list(filters={"name": "new"}) == [created]
        assert created in await uow.gadgets.list(order_by="-id", limit=1)
        assert await uow.gadgets.count() == len(ids) + 1
        assert await uow.gadgets.count({"name": ["new", "anvil"]}) == 2

        await uow.gadgets.delete(doomed)
        assert await uow.gadgets.get_by_id(doomed) is None
        assert doomed not in [g.id for g in await uow.gadgets.list()]
        assert await uow.gadgets.count() == len(ids)

        await uow.rollback()
        assert await uow.gadgets.get_by_id(created.id) is None
        assert await uow.gadgets.count({"name": "new"}) == 0
        assert await uow.gadgets.count() == len(ids)
        restored = await uow.gadgets.get_by_id(doomed)
        assert restored is not None and restored.name == GADGETS[1]["name"]
        assert (await uow.gadgets.get_one(kept)).name == GADGETS[0]["name"]
        assert idle(uow.session), "after the rollback the reads are fast again"
    async with db.session() as session:
        assert await GadgetRepository(session).count() == len(ids)


async def test_unflushed_changes_are_seen_by_later_reads(db: DatabaseManager) -> None:
    ids = await seed_gadgets(db)
    async with FastUnitOfWork(db) as uow:
        gadget = await uow.gadgets.get_one(ids[0])
        assert idle(uow.session)
        gadget.name = "renamed"  # no flush: autoflush sends it before the next read
        assert await uow.gadgets.list(filters={"name": "renamed"}) == [gadget]
        assert await uow.gadgets.count({"name": "renamed"}) == 1
        assert await uow.gadgets.count({"name": "anvil"}) == 0
        await uow.commit()
        assert idle(uow.session)
        assert await uow.gadgets.count({"name": "renamed"}) == 1

    async with FastUnitOfWork(db) as uow:
        pending = Gadget(name="pending", active=False, color=Color.BLUE)
        uow.session.add(pending)  # pending, not flushed
        assert await uow.gadgets.count({"name": "pending"}) == 1
        assert await uow.gadgets.list(filters={"name": "pending"}) == [pending]
        assert await uow.gadgets.get_by_id(pending.id) is pending
        # No commit: the block ends, and the pending row is gone.

    async with db.session() as session:
        repo = GadgetRepository(session)
        assert await repo.count({"name": "pending"}) == 0
        assert (await repo.get_one(ids[0])).name == "renamed"


# -- 3. the objects are the session's own --------------------------------------------------------


async def test_one_object_per_row_in_a_unit_of_work(db: DatabaseManager) -> None:
    ids = await seed_gadgets(db)
    async with FastUnitOfWork(db) as uow:
        first = await uow.gadgets.get_by_id(ids[0])
        with count_queries(db) as counter:
            again = await uow.gadgets.get_by_id(ids[0])
        assert again is first and counter.count == 0
        listed = await uow.gadgets.list()
        assert listed[0] is first
        assert (await uow.gadgets.list(filters={"id": [ids[0]]}))[0] is first
        by_name = {g.name: g for g in await uow.gadgets.list(order_by="-name")}
        assert by_name["anvil"] is first
        assert [await uow.gadgets.get_by_id(i) for i in ids] == listed
        assert all(g in uow.session for g in listed)
        assert len(uow.session.identity_map) == len(ids)

        state = inspect(first)
        assert state.persistent and not state.modified and state.key is not None
        assert not uow.session.sync_session.dirty and not uow.session.sync_session.new

        first.name = "local"
        with uow.session.no_autoflush:
            assert await uow.gadgets.list(filters={"id": [ids[0]]}) == [first]
        assert first.name == "local", "a read must not overwrite a change not yet flushed"


async def test_a_held_object_is_not_overwritten_but_an_expired_one_is_refreshed(
    db: DatabaseManager, slow: DatabaseManager, backend: str
) -> None:
    ids = await seed_gadgets(db)
    for manager in (db, slow):
        async with FastUnitOfWork(manager) as uow:
            held = await uow.gadgets.get_one(ids[0])
            async with db.session() as other:
                (await GadgetRepository(other).get_one(ids[0])).rank = 100
            assert (await uow.gadgets.list(filters={"id": [ids[0]]}))[0] is held
            assert held.rank == GADGETS[0]["rank"], "the identity map wins, as on a plain ORM read"
            uow.session.expire(held)
            assert await uow.gadgets.get_by_id(ids[0]) is held
            # The fast path has no transaction yet, so it reads the latest committed row;
            # the ORM path reads in the transaction its first read began, which on SQLite
            # and MariaDB (REPEATABLE READ) keeps the snapshot of that first read.
            snapshot = manager is slow and backend != "postgresql"
            assert held.rank == (GADGETS[0]["rank"] if snapshot else 100)
        async with db.session() as other:
            (await GadgetRepository(other).get_one(ids[0])).rank = GADGETS[0]["rank"]


async def test_fast_loaded_objects_can_be_changed_and_committed(db: DatabaseManager) -> None:
    ids = await seed_gadgets(db)
    async with FastUnitOfWork(db) as uow:
        gadget = await uow.gadgets.get_one(ids[2])
        others = await uow.gadgets.list(filters={"id": [ids[3], ids[4]]})
        before = gadget.updated_at
        gadget.rank = 42
        gadget.data = {"changed": True}
        await uow.session.delete(others[0])
        others[1].active = False
        await uow.commit()
        assert gadget.updated_at > before

    async with db.session() as session:
        repo = GadgetRepository(session)
        stored = await repo.get_one(ids[2])
        assert (stored.rank, stored.data) == (42, {"changed": True})
        assert await repo.get_by_id(ids[3]) is None
        assert (await repo.get_one(ids[4])).active is False


async def test_objects_stay_readable_after_the_block(db: DatabaseManager) -> None:
    ids = await seed_gadgets(db)
    async with FastUnitOfWork(db) as uow:
        one = await uow.gadgets.get_one(ids[0])
        many = await uow.gadgets.list()
        inside = [columns_of(g) for g in many]
    assert inspect(one).detached
    assert columns_of(one) == inside[0]
    assert [columns_of(g) for g in many] == inside
    assert one.name == "anvil" and one.checked_at == T0


async def test_relationships_of_fast_loaded_objects_behave_as_after_an_orm_read(
    db: DatabaseManager, slow: DatabaseManager
) -> None:
    async with db.session() as session:
        user = await UserRepository(session).create({"email": "u@example.com", "name": "U"})
        post = await PostRepository(session).create({"user_id": user.id, "title": "t"})
    for manager in (db, slow):
        async with FastUnitOfWork(manager) as uow:
            loaded = await uow.posts.get_one(post.id)
            assert idle(uow.session) is (manager is db)
            with pytest.raises(RelationshipNotLoadedError, match=r"Post\.author"):
                _ = loaded.author
            with pytest.raises(RelationshipNotLoadedError, match=r"Post\.comments"):
                _ = loaded.comments
            author = await loaded.awaitable_attrs.author
            assert isinstance(author, User) and author.id == user.id
            assert await loaded.awaitable_attrs.comments == []
            assert loaded.author is author
            assert await uow.users.get_by_id(user.id) is author


# -- 4. round trips ----------------------------------------------------------------------------


async def read_one_in_a_unit_of_work(manager: DatabaseManager, gadget_id: int) -> None:
    async with FastUnitOfWork(manager) as uow:
        gadget = await uow.gadgets.get_by_id(gadget_id)
        assert gadget is not None and gadget.id == gadget_id


class SeenBySQLAlchemy:
    """Statements announced to ``manager``'s cursor events: SQLAlchemy's and fast reads."""

    def __init__(self, manager: DatabaseManager) -> None:
        self.engine = manager.engine.sync_engine
        self.statements: list[str] = []

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def __enter__(self) -> list[str]:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self.statements

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)


def verbs(statements: list[str]) -> list[str]:
    return [s.split()[0].upper().rstrip(";") for s in statements]


async def one_connection_managers(make_db: MakeDb) -> tuple[DatabaseManager, DatabaseManager]:
    fast = await make_db(Base.metadata, FastBase.metadata, pool_size=1, max_overflow=0)
    orm = await make_db(fast_path=False, default=False, pool_size=1, max_overflow=0)
    return fast, orm


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_round_trips_on_postgresql(make_db: MakeDb) -> None:
    fast, orm = await one_connection_managers(make_db)
    (gadget_id, *_) = await seed_gadgets(fast)

    async def statements(manager: DatabaseManager) -> tuple[list[str], list[str]]:
        await read_one_in_a_unit_of_work(manager, gadget_id)  # connection and caches warm
        logged: list[str] = []

        def log(record: Any) -> None:
            logged.append(record.query)

        raw = await manager.engine.raw_connection()
        raw.driver_connection.add_query_logger(log)
        await greenlet_spawn(raw.close)
        try:
            with SeenBySQLAlchemy(manager) as prepared:
                await read_one_in_a_unit_of_work(manager, gadget_id)
            for _ in range(3):  # asyncpg hands records to the loggers with call_soon
                await asyncio.sleep(0)
        finally:
            raw = await manager.engine.raw_connection()
            raw.driver_connection.remove_query_logger(log)
            await greenlet_spawn(raw.close)
        # asyncpg logs what it runs unprepared (fetch and its own BEGIN / COMMIT / ROLLBACK);
        # SQLAlchemy's adapter runs its statements as prepared ones, which only the
        # cursor event sees. Between them: every statement sent.
        return logged, prepared

    # The fast read is the one statement asyncpg ran; the cursor event sees that same one
    # (fast reads are announced to it) and no statement of SQLAlchemy's.
    fast_logged, fast_prepared = await statements(fast)
    assert verbs(fast_logged) == ["SELECT"], fast_logged
    assert fast_prepared == fast_logged
    orm_logged, orm_prepared = await statements(orm)
    orm_sent = orm_logged + orm_prepared
    assert sorted(verbs(orm_sent)) == ["BEGIN", "ROLLBACK", "SELECT"], orm_sent


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_round_trips_on_sqlite(make_db: MakeDb) -> None:
    fast, orm = await one_connection_managers(make_db)
    (gadget_id, *_) = await seed_gadgets(fast)

    async def statements(manager: DatabaseManager) -> list[str]:
        await read_one_in_a_unit_of_work(manager, gadget_id)
        traced: list[str] = []  # every statement SQLite runs, BEGIN and ROLLBACK included
        raw = await manager.engine.raw_connection()
        await raw.driver_connection.set_trace_callback(traced.append)
        await greenlet_spawn(raw.close)
        try:
            await read_one_in_a_unit_of_work(manager, gadget_id)
        finally:
            raw = await manager.engine.raw_connection()
            await raw.driver_connection.set_trace_callback(None)
            await greenlet_spawn(raw.close)
        return traced

    fast_sent = await statements(fast)
    assert verbs(fast_sent) == ["SELECT"], fast_sent
    orm_sent = await statements(orm)
    assert verbs(orm_sent) == ["BEGIN", "SELECT", "ROLLBACK"], orm_sent


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
async def test_round_trips_on_mariadb(make_db: MakeDb) -> None:
    fast, orm = await one_connection_managers(make_db)
    (gadget_id, *_) = await seed_gadgets(fast)
    names = ("Questions", "Com_select", "Com_begin", "Com_commit", "Com_rollback")

    async def status(manager: DatabaseManager) -> dict[str, int]:
        raw = await manager.engine.raw_connection()  # the pool's only connection
        try:
            async with raw.driver_connection.cursor() as cursor:
                listed = ", ".join(f"'{name}'" for name in names)
                await cursor.execute(f"SHOW SESSION STATUS WHERE Variable_name IN ({listed})")
                return {name: int(value) for name, value in await cursor.fetchall()}
        finally:
            await greenlet_spawn(raw.close)

    async def sent(manager: DatabaseManager) -> dict[str, int]:
        await read_one_in_a_unit_of_work(manager, gadget_id)
        first = await status(manager)
        second = await status(manager)  # what looking costs
        await read_one_in_a_unit_of_work(manager, gadget_id)
        third = await status(manager)
        return {name: (third[name] - second[name]) - (second[name] - first[name]) for name in names}

    fast_sent = await sent(fast)
    orm_sent = await sent(orm)
    # Observed on MariaDB 10.11: the fast path sends 2 statements, the SELECT and the
    # pool's reset ROLLBACK (with autocommit off, InnoDB opened a read view for the
    # SELECT); the ORM path 3: SELECT, the session's ROLLBACK and the pool's. Neither
    # sends BEGIN (the transaction starts implicitly).
    assert fast_sent["Com_select"] == 1 and fast_sent["Com_begin"] == 0, fast_sent
    assert fast_sent["Com_commit"] == 0, fast_sent
    assert fast_sent["Questions"] <= orm_sent["Questions"], (fast_sent, orm_sent)
    assert fast_sent == {
        "Questions": 2,
        "Com_select": 1,
        "Com_begin": 0,
        "Com_commit": 0,
        "Com_rollback": 1,
    }, fast_sent
    assert orm_sent["Com_select"] == 1 and orm_sent["Com_begin"] == 0, orm_sent


async def test_a_connection_past_its_recycle_age_is_replaced_on_a_fast_read(
    make_db: MakeDb,
) -> None:
    """The fast path takes an idle pooled connection without a greenlet; when that
    connection must be replaced first (pool_recycle), it falls back to the usual check-out,
    which opens the new connection, and the read is still one statement."""
    db = await make_db(Base.metadata, FastBase.metadata, pool_size=1, max_overflow=0)
    fresh = await make_db(default=False, pool_size=1, max_overflow=0, pool_recycle=1)
    (gadget_id, *_) = await seed_gadgets(db)
    async with fresh.session() as session:
        assert (await GadgetRepository(session).get_one(gadget_id)).name == "anvil"
    first = fresh.pool_status()["main"]
    await asyncio.sleep(1.2)  # the pool's one connection is now past its recycle age
    with count_queries(fresh) as counter:
        async with fresh.session() as session:
            assert (await GadgetRepository(session).get_one(gadget_id)).name == "anvil"
            assert idle(session)
    assert counter.count == 1
    assert fresh.pool_status()["main"] == first  # one connection, checked back in
    async with fresh.session() as session:  # and the replacement works for the ORM too
        assert await session.scalar("SELECT 1") == 1


async def test_statements_per_call(db: DatabaseManager) -> None:
    ids = await seed_gadgets(db)
    async with FastUnitOfWork(db) as uow:
        repo = uow.gadgets
        with count_queries(db) as counter:
            held = await repo.get_by_id(ids[0])
        assert counter.count == 1 and "fp_gadgets" in counter.statements[0]
        with count_queries(db) as counter:
            assert await repo.get_by_id(ids[0]) is held
        assert counter.count == 0, "held by the session: no statement"
        with count_queries(db) as counter:
            await repo.get_by_id(999_999)
        assert counter.count == 1
        with count_queries(db) as counter:
            await repo.list(filters={"active": True}, order_by="-name")
        assert counter.count == 1
        with count_queries(db) as counter:
            await repo.count({"color": Color.RED})
        assert counter.count == 1 and "count" in counter.statements[0].lower()
        with count_queries(db) as counter:
            page = await repo.paginate(2, 2)
        assert counter.count == 2 and page.total == len(ids)
        all_sent = " ".join(counter.statements).upper()
        assert "BEGIN" not in all_sent and "ROLLBACK" not in all_sent
        assert idle(uow.session)


# -- 5. fast reads are checked again when the transaction begins ---------------------------------


def strict_kwargs(backend: str) -> dict[str, Any]:
    """Isolation above READ COMMITTED: SQLite always, MariaDB by default (REPEATABLE READ),
    PostgreSQL when configured."""
    if backend == "postgresql":
        return {"engine_kwargs": {"isolation_level": "REPEATABLE READ"}}
    return {}


async def read_then_write(
    manager: DatabaseManager,
    gadget_id: int,
    read: str,
    meanwhile: Callable[[], Awaitable[None]] | None,
) -> None:
    """A unit of work reads (fast), ``meanwhile`` commits elsewhere, then it writes."""
    async with FastUnitOfWork(manager) as uow:
        target = await uow.gadgets.get_one(gadget_id)
        if read == "list":
            assert target in await uow.gadgets.list()
        elif read == "count":
            assert await uow.gadgets.count() > 0
        if meanwhile is not None:
            await meanwhile()
        target.name = "mine"
        await uow.commit()


@pytest.mark.parametrize("read", ["get", "list", "count"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"], indirect=True)
async def test_a_change_to_what_was_read_fast_is_a_conflict_under_strict_isolation(
    make_db: MakeDb, backend: str, read: str
) -> None:
    db = await make_db(Base.metadata, FastBase.metadata, **strict_kwargs(backend))
    other = await make_db(default=False)
    ids = await seed_gadgets(db)

    async def change_it() -> None:
        async with other.session() as session:
            repo = GadgetRepository(session)
            if read == "count":  # a new row changes only the count
                await repo.create({"name": "extra", "active": True, "color": Color.RED})
            else:
                (await repo.get_one(ids[0])).name = "theirs"

    with pytest.raises(TransactionConflictError):
        await read_then_write(db, ids[0], read, change_it)
    async with other.session() as session:
        assert (await GadgetRepository(session).get_one(ids[0])).name == (
            "anvil" if read == "count" else "theirs"
        ), "the conflicting unit of work wrote nothing"
        assert checked_out(db) == 0

    await read_then_write(db, ids[1], read, None)  # nobody else wrote: commits
    async with other.session() as session:
        assert (await GadgetRepository(session).get_one(ids[1])).name == "mine"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_read_committed_lets_the_last_writer_win_on_both_paths(
    db: DatabaseManager, slow: DatabaseManager
) -> None:
    ids = await seed_gadgets(db)
    for manager, gadget_id in ((db, ids[0]), (slow, ids[1])):

        async def change_it(gadget_id: int = gadget_id) -> None:
            async with db.session() as session:
                (await GadgetRepository(session).get_one(gadget_id)).rank = 99

        # READ COMMITTED promises no snapshot across statements, on either path: the
        # unit of work's write lands on top of the other one's, without an error.
        await read_then_write(manager, gadget_id, "get", change_it)
        async with db.session() as session:
            stored = await GadgetRepository(session).get_one(gadget_id)
            assert (stored.name, stored.rank) == ("mine", 99)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_the_orm_path_reports_the_same_conflict(make_db: MakeDb, backend: str) -> None:
    await make_db(Base.metadata, FastBase.metadata, **strict_kwargs(backend))
    orm = await make_db(fast_path=False, default=False, **strict_kwargs(backend))
    ids = await seed_gadgets(orm)

    async def change_it() -> None:
        async with orm.session() as session:
            (await GadgetRepository(session).get_one(ids[0])).name = "theirs"

    with pytest.raises(TransactionConflictError):
        await read_then_write(orm, ids[0], "get", change_it)


# -- 6. where the ORM path runs instead --------------------------------------------------------


async def test_options_take_the_orm_path_and_load_the_relationship(db: DatabaseManager) -> None:
    async with db.session() as session:
        user = await UserRepository(session).create({"email": "o@example.com", "name": "O"})
        post = await PostRepository(session).create({"user_id": user.id, "title": "t"})
    async with FastUnitOfWork(db) as uow:
        loaded = await uow.posts.get_one(post.id, options=[selectinload(Post.author)])
        assert not idle(uow.session)
        assert loaded.author.id == user.id
    async with FastUnitOfWork(db) as uow:
        (listed,) = await uow.posts.list(options=[selectinload(Post.comments)])
        assert not idle(uow.session)
        assert listed.comments == []
    async with FastUnitOfWork(db) as uow:
        page = await uow.posts.paginate(options=[selectinload(Post.author)])
        assert page.items[0].author.email == "o@example.com"


async def test_a_model_with_an_eager_relationship_takes_the_orm_path(db: DatabaseManager) -> None:
    async with db.session() as session:
        shelf = Shelf(name="s")
        session.add(shelf)
        await session.flush()
        session.add_all([Book(shelf_id=shelf.id, title="a"), Book(shelf_id=shelf.id, title="b")])
    async with FastUnitOfWork(db) as uow:
        loaded = await uow.shelves.get_one(shelf.id)
        assert not idle(uow.session)
        assert [book.title for book in loaded.books] == ["a", "b"]
    async with FastUnitOfWork(db) as uow:
        (listed,) = await uow.shelves.list()
        assert [book.title for book in listed.books] == ["a", "b"]
        assert await uow.shelves.count() == 1


async def test_sessions_the_fast_path_does_not_serve(
    db: DatabaseManager, slow: DatabaseManager
) -> None:
    ids = await seed_gadgets(db)

    async def reads(session: AsyncSession) -> None:
        repo = GadgetRepository(session)
        assert (await repo.get_one(ids[0])).name == "anvil"
        assert len(await repo.list()) == len(ids)
        assert await repo.count({"active": True}) == 4
        assert not idle(session), "the ORM path ran"

    async with slow.session() as session:  # fast_path=False
        await reads(session)
    async with AsyncSession(db.engine) as session:  # not one of the manager's sessions
        await reads(session)
    async with isolated_session(db.engine) as session:
        await reads(session)
    async with db.session() as session, session.begin():  # an explicit begin()
        await reads(session)
    async with db.session() as session:  # a session already in its transaction
        await session.execute(text("SELECT 1"))
        await reads(session)


async def test_a_session_with_a_statement_hook_takes_the_orm_path(db: DatabaseManager) -> None:
    """A do_orm_execute hook (tenancy, soft-delete filters) must see every read."""
    ids = await seed_gadgets(db)
    seen: list[Any] = []
    async with db.session() as session:
        event.listen(session.sync_session, "do_orm_execute", seen.append)
        repo = GadgetRepository(session)
        await repo.get_by_id(ids[0])
        await repo.list()
        await repo.count()
    assert len(seen) == 3


async def test_a_closed_unit_of_work_refuses_reads(db: DatabaseManager) -> None:
    ids = await seed_gadgets(db)
    async with FastUnitOfWork(db) as uow:
        repo = uow.gadgets
        await repo.get_by_id(ids[0])
    for call in (
        lambda: repo.get_by_id(ids[1]),
        lambda: repo.get_one(ids[1]),
        lambda: repo.list(),
        lambda: repo.count(),
        lambda: repo.paginate(),
    ):
        with pytest.raises(InvalidRequestError, match="closed"):
            await call()
    assert checked_out(db) == 0


async def test_a_background_unit_of_work_reads_on_the_background_pool(
    make_db: MakeDb,
) -> None:
    from aegis_shared.database import BackgroundUnitOfWork

    class Background(BackgroundUnitOfWork):
        gadgets: GadgetRepository

    db = await make_db(
        Base.metadata, FastBase.metadata, pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    ids = await seed_gadgets(db)
    async with db.engine.connect() as held:  # the main pool's only connection
        await held.execute(text("SELECT 1"))
        async with Background(db) as uow:
            assert (await uow.gadgets.get_one(ids[0])).name == "anvil"
            assert await uow.gadgets.count() == len(ids)
            assert idle(uow.session)
        with pytest.raises(PoolTimeoutError):
            async with FastUnitOfWork(db) as uow:
                await uow.gadgets.get_by_id(ids[0])
    assert checked_out(db) == 0
    assert db.pool_status()["background"]["checked_out"] == 0


# -- 7. errors ---------------------------------------------------------------------------------


async def outcome_of(manager: DatabaseManager, call: Callable[[GadgetRepository], Any]) -> Any:
    """The result of ``call`` in a fresh unit of work, or the type of what it raised."""
    try:
        async with FastUnitOfWork(manager) as uow:
            result = await call(uow.gadgets)
    except Exception as exc:  # compared between the paths
        return type(exc)
    if isinstance(result, list):
        return [columns_of(item) for item in result]
    return columns_of(result) if isinstance(result, Gadget) else result


async def test_a_missing_table_raises_the_same_error_on_both_paths(
    db: DatabaseManager, slow: DatabaseManager
) -> None:
    ids = await seed_gadgets(db)
    calls: list[Callable[[GadgetRepository], Any]] = [
        lambda repo: repo.get_by_id(ids[0]),
        lambda repo: repo.list(filters={"active": True}),
        lambda repo: repo.count(),
    ]
    for call in calls:  # the plans are compiled and, on PostgreSQL, prepared
        assert not isinstance(await outcome_of(db, call), type)
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE fp_gadgets"))
    for call in calls:
        fast = await outcome_of(db, call)
        orm = await outcome_of(slow, call)
        assert isinstance(fast, type) and issubclass(fast, Exception)
        assert fast is orm
        assert checked_out(db) == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_changed_column_type_does_not_break_prepared_fast_reads(
    db: DatabaseManager,
) -> None:
    ids = await seed_gadgets(db)
    assert (await outcome_of(db, lambda repo: repo.get_by_id(ids[0])))["notes"] == (str, "heavy")
    async with db.engine.begin() as conn:  # the prepared statement's result type changes
        await conn.execute(text("ALTER TABLE fp_gadgets ALTER COLUMN notes TYPE VARCHAR(9000)"))
    assert (await outcome_of(db, lambda repo: repo.get_by_id(ids[0])))["notes"] == (str, "heavy")
    assert checked_out(db) == 0


async def test_a_wrongly_typed_id_behaves_as_on_the_orm_path(
    db: DatabaseManager, slow: DatabaseManager
) -> None:
    await seed_gadgets(db)
    for bad in ("abc", "1", 1.0, b"1"):
        fast = await outcome_of(db, lambda repo, bad=bad: repo.get_by_id(bad))
        orm = await outcome_of(slow, lambda repo, bad=bad: repo.get_by_id(bad))
        assert fast == orm, bad
        fast = await outcome_of(db, lambda repo, bad=bad: repo.list(filters={"id": bad}))
        orm = await outcome_of(slow, lambda repo, bad=bad: repo.list(filters={"id": bad}))
        assert fast == orm, bad
        assert checked_out(db) == 0


async def test_a_full_pool_raises_pool_timeout_on_both_paths(make_db: MakeDb) -> None:
    settings = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    fast = await make_db(Base.metadata, FastBase.metadata, **settings)
    orm = await make_db(fast_path=False, default=False, **settings)
    ids = await seed_gadgets(fast)
    for manager in (fast, orm):
        await outcome_of(manager, lambda repo: repo.get_by_id(ids[0]))  # warm
        held = await manager.engine.connect()
        await held.execute(text("SELECT 1"))
        try:
            for call in (
                lambda repo: repo.get_by_id(ids[0]),
                lambda repo: repo.list(),
                lambda repo: repo.count(),
            ):
                assert await outcome_of(manager, call) is PoolTimeoutError
        finally:
            await held.close()
        assert checked_out(manager) == 0
        assert (await outcome_of(manager, lambda repo: repo.get_one(ids[0])))["name"][1] == "anvil"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_statement_timeout_on_the_fast_path(make_db: MakeDb) -> None:
    fast = await make_db(Base.metadata, FastBase.metadata, statement_timeout=0.3)
    orm = await make_db(fast_path=False, default=False, statement_timeout=0.3)
    locker = await make_db(default=False)
    ids = await seed_gadgets(fast)
    await outcome_of(fast, lambda repo: repo.get_by_id(ids[0]))  # warm
    async with locker.engine.connect() as conn:
        await conn.execute(text("LOCK TABLE fp_gadgets IN ACCESS EXCLUSIVE MODE"))
        for manager in (fast, orm):
            for call in (
                lambda repo: repo.get_by_id(ids[1]),
                lambda repo: repo.list(),
                lambda repo: repo.count(),
            ):
                assert await outcome_of(manager, call) is QueryTimeoutError
            assert checked_out(manager) == 0
        await conn.rollback()
    assert (await outcome_of(fast, lambda repo: repo.get_one(ids[1])))["name"][1] == "Zoë 🚀"
    assert fast.pool_status()["main"]["size"] >= 1


def count_connects(manager: DatabaseManager) -> Callable[[], int]:
    """How many new connections ``manager``'s main pool makes from now on."""
    made: list[object] = []
    event.listen(manager.engine.sync_engine, "connect", lambda *_: made.append(1))
    return lambda: len(made)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_a_connection_killed_by_the_server(make_db: MakeDb, backend: str) -> None:
    fast = await make_db(Base.metadata, FastBase.metadata, pool_size=1, max_overflow=0)
    orm = await make_db(fast_path=False, default=False, pool_size=1, max_overflow=0)
    admin = await make_db(default=False)
    ids = await seed_gadgets(fast)

    async def kill_pooled_connection(manager: DatabaseManager) -> None:
        raw = await manager.engine.raw_connection()
        try:
            if backend == "postgresql":
                pid = raw.driver_connection.get_server_pid()
            else:
                async with raw.driver_connection.cursor() as cursor:
                    await cursor.execute("SELECT CONNECTION_ID()")
                    ((pid,),) = await cursor.fetchall()
        finally:
            await greenlet_spawn(raw.close)
        async with admin.engine.connect() as conn:
            if backend == "postgresql":
                await conn.execute(text(f"SELECT pg_terminate_backend({int(pid)})"))
            else:
                await conn.execute(text(f"KILL CONNECTION {int(pid)}"))
        await asyncio.sleep(0.2)

    for manager in (fast, orm):
        await outcome_of(manager, lambda repo: repo.get_by_id(ids[0]))  # warm
        connects = count_connects(manager)
        await kill_pooled_connection(manager)
        # The server closed the idle pooled connection; the check-out notices (no round
        # trip) and connects anew, so the read succeeds instead of failing.
        assert (await outcome_of(manager, lambda repo: repo.get_by_id(ids[1])))["id"][1] == ids[1]
        assert checked_out(manager) == 0
        assert connects() == 1


# -- 8. prepared statements ---------------------------------------------------------------------


@pytest.mark.parametrize("prepared", [True, False])
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_prepared_statements_can_be_turned_off(make_db: MakeDb, prepared: bool) -> None:
    db = await make_db(
        Base.metadata,
        FastBase.metadata,
        pool_size=1,
        max_overflow=0,
        prepared_statements=prepared,
    )
    ids = await seed_gadgets(db)
    for _ in range(3):
        async with FastUnitOfWork(db) as uow:
            await uow.gadgets.get_by_id(ids[0])
            await uow.gadgets.list(filters={"color": Color.RED}, order_by="-name")
            await uow.gadgets.count({"active": True})
            assert idle(uow.session)
        async with FastUnitOfWork(db) as uow:  # the ORM path on the same connection
            await uow.session.execute(select(Gadget).where(Gadget.id == ids[0]))
            await uow.gadgets.get_by_id(ids[1])
            await uow.gadgets.count()
            assert not idle(uow.session)
    raw = await db.engine.raw_connection()
    try:
        named = await raw.driver_connection.fetchval("SELECT count(*) FROM pg_prepared_statements")
    finally:
        await greenlet_spawn(raw.close)
    if prepared:
        assert named > 0
    else:
        assert named == 0


# -- 9. cancellation ---------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["get", "list", "count"])
async def test_a_cancelled_fast_read_leaves_the_pool_clean(make_db: MakeDb, call: str) -> None:
    db = await make_db(
        Base.metadata, FastBase.metadata, pool_size=1, max_overflow=0, pool_timeout=2
    )
    ids = await seed_gadgets(db)
    reads: dict[str, Callable[[GadgetRepository], Awaitable[Any]]] = {
        "get": lambda repo: repo.get_by_id(ids[0]),
        "list": lambda repo: repo.list(),
        "count": lambda repo: repo.count(),
    }
    invalidated: list[Any] = []
    event.listen(db.engine.sync_engine.pool, "invalidate", lambda *args: invalidated.append(args))
    outcomes: list[str] = []
    ticks = 0
    while outcomes.count("done") < 3:  # cancel at each await point in turn, until none is left
        assert ticks < 1000, "the read never finished"
        session = db.session_factory()
        task = asyncio.create_task(reads[call](GadgetRepository(session)))
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
            outcomes.append("done")
        except asyncio.CancelledError:
            outcomes.append("cancelled")
        await session.close()
        assert checked_out(db) == 0, (ticks, outcomes)
        # The only connection is usable (a leaked one would time the pool out).
        async with db.session() as fresh:
            assert len(await GadgetRepository(fresh).list()) == len(ids)
            assert idle(fresh)
        ticks += 1
    assert outcomes[0] == "cancelled", outcomes
    # Some cancellations landed while the statement was in flight: that connection was
    # thrown away rather than returned to the pool in an unknown state.
    assert invalidated, outcomes


# -- more: concurrency and in-memory SQLite ------------------------------------------------------


async def test_concurrent_fast_reads_share_a_small_pool(make_db: MakeDb) -> None:
    db = await make_db(Base.metadata, FastBase.metadata, pool_size=2, max_overflow=0)
    ids = await seed_gadgets(db)

    async def one(i: int) -> tuple[str, int]:
        async with FastUnitOfWork(db) as uow:
            gadget = await uow.gadgets.get_one(ids[i % len(ids)])
            return gadget.name, await uow.gadgets.count()

    results = await asyncio.gather(*(one(i) for i in range(40)))
    assert results == [(GADGETS[i % len(ids)]["name"], len(ids)) for i in range(40)]
    assert checked_out(db) == 0


@pytest.mark.parametrize("fast_path", [True, False])
async def test_in_memory_sqlite_read_inside_an_open_unit_of_work(fast_path: bool) -> None:
    """In-memory SQLite has one connection for everyone (StaticPool). A read from a second
    session while a unit of work has written but not committed may fail (the ORM path
    fails: "cannot start a transaction within a transaction"), but it must not silently
    undo that work."""
    db = DatabaseManager("sqlite+aiosqlite:///:memory:", fast_path=fast_path)
    try:
        await db.create_all(FastBase.metadata)
        ids = await seed_gadgets(db)
        try:
            async with FastUnitOfWork(db) as outer:
                await outer.gadgets.create({"name": "outer", "active": True, "color": Color.RED})
                async with FastUnitOfWork(db) as inner:
                    assert (await inner.gadgets.get_one(ids[0])).name == "anvil"
                await outer.commit()
        except Exception:
            return  # refused loudly: nothing was lost silently
        async with db.session() as session:
            assert await GadgetRepository(session).count({"name": "outer"}) == 1, (
                "the unit of work committed without error, but its row is gone"
            )
    finally:
        await db.close()


# -- more: what the ORM does on load, and where it reads ----------------------------------------


class Tracked(IntegerIdMixin, FastBase):
    """A model whose instances are set up by a reconstructor on every load."""

    __tablename__ = "fp_tracked"

    name: Mapped[str] = mapped_column(String(50))

    @reconstructor
    def _on_load(self) -> None:
        self.loaded_by_orm = True


async def test_a_reconstructor_runs_on_every_read(db: DatabaseManager) -> None:
    async with db.session() as session:
        session.add(Tracked(name="t"))
    async with db.session() as session:
        repo = BaseRepository(session, Tracked)
        (listed,) = await repo.list()
        assert listed.loaded_by_orm is True
        assert await repo.count() == 1


async def test_a_load_listener_added_after_the_first_read_is_honoured(
    db: DatabaseManager,
) -> None:
    ids = await seed_gadgets(db)
    async with db.session() as session:
        await GadgetRepository(session).get_by_id(ids[0])  # the model's reader is made here
    loaded: list[Any] = []

    def on_load(target: Any, context: Any) -> None:
        loaded.append(target)

    event.listen(Gadget, "load", on_load)
    try:
        async with db.session() as session:
            gadget = await GadgetRepository(session).get_by_id(ids[0])
        assert loaded == [gadget]
    finally:
        event.remove(Gadget, "load", on_load)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_schema_translate_map_is_honoured(db: DatabaseManager, make_db: MakeDb) -> None:
    await seed_gadgets(db)
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE SCHEMA fp_tenant"))
        await conn.execute(
            text("CREATE TABLE fp_tenant.fp_gadgets (LIKE public.fp_gadgets INCLUDING ALL)")
        )
        await conn.execute(
            text(
                "INSERT INTO fp_tenant.fp_gadgets (name, active, color, created_at, updated_at)"
                " VALUES ('tenant', true, 'RED', now(), now())"
            )
        )
    translated = {"execution_options": {"schema_translate_map": {None: "fp_tenant"}}}
    try:
        names = {}
        for fast_path in (False, True):
            tenant = await make_db(default=False, fast_path=fast_path, engine_kwargs=translated)
            async with tenant.session() as session:
                names[fast_path] = [g.name for g in await GadgetRepository(session).list()]
        assert names[False] == ["tenant"]
        assert names[True] == names[False]
    finally:
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA fp_tenant CASCADE"))
