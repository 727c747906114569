"""Pagination as APIs use it (issue 11 item 6), on SQLite, PostgreSQL and MariaDB.

* ``paginate(page=, page_size=)`` (seed API) and ``paginate(offset=, limit=)`` (RealWorld's
  ``?limit=20&offset=0``), with the total; mixing the two is refused.
* ``keyset(after, limit, order_by=...)``: cursor pages in any mix of directions, the
  primary key as the tie-breaker, stable under concurrent inserts; tokens validated before
  any SQL; the total only with ``with_total=True``.
* ``list()`` without a limit returns up to the page-size cap and warns when more match.

Statement counts are checked with ``count_queries``; "the fast path served it" means no
transaction was opened; the ORM path is a ``fast_path=False`` manager on the same data.
"""

from __future__ import annotations

import base64
import enum
import json
import uuid
import warnings
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Boolean, Date, DateTime, Float, MetaData, Numeric, String, Uuid, select
from sqlalchemy import Enum as SAEnum
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.database import (
    BaseRepository,
    DatabaseManager,
    KeysetPage,
    ListTruncatedWarning,
    Page,
    UnitOfWork,
)
from aegis_shared.models import NAMING_CONVENTION, IntegerIdMixin
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb
from tests.models import Post, PostRepository, User, UserRepository

#: 25 users; names repeat (five of each), so orderings by name need the tie-breaker.
NAMES = ["erin", "bob", "dave", "alice", "carol"]


async def seed(db: DatabaseManager, count: int = 25) -> None:
    async with db.session() as session:
        await UserRepository(session).create_many(
            [
                {"email": f"u{i:02}@example.com", "name": NAMES[i % 5], "age": i % 3 or None}
                for i in range(count)
            ]
        )


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    manager = await make_db()
    await seed(manager)
    return manager


@pytest.fixture
async def slow(db: DatabaseManager, make_db: MakeDb) -> DatabaseManager:
    """The same database with the fast path off: the ORM path."""
    return await make_db(fast_path=False, default=False)


async def all_users(db: DatabaseManager) -> list[tuple[int, str, str, Any]]:
    async with db.session() as session:
        rows = await session.execute(select(User.id, User.name, User.email, User.created_at))
        return [(r.id, r.name, r.email, r.created_at) for r in rows.all()]


# -- offset / limit -------------------------------------------------------------------------


async def test_paginate_by_offset_and_limit(db: DatabaseManager, slow: DatabaseManager) -> None:
    for manager in (db, slow):
        async with manager.session() as session:
            users = UserRepository(session)
            with count_queries(manager) as counter:
                first = await users.paginate(offset=0, limit=10)
            assert counter.count == 2
            if manager is db:
                assert not session.in_transaction(), "the fast path served both"
            assert [u.email for u in first.items] == [f"u{i:02}@example.com" for i in range(10)]
            assert (first.total, first.offset, first.limit, first.page) == (25, 0, 10, 1)
            assert (first.page_size, first.pages, first.has_next) == (10, 3, True)

            odd = await users.paginate(offset=5, limit=10)
            assert [u.email for u in odd.items] == [f"u{i:02}@example.com" for i in range(5, 15)]
            assert (odd.offset, odd.page, odd.has_next) == (5, 1, True)

            last = await users.paginate(offset=20, limit=10)
            assert len(last.items) == 5 and (last.page, last.has_next) == (3, False)

            beyond = await users.paginate(offset=30, limit=10)
            assert (beyond.items, beyond.total, beyond.has_next) == ([], 25, False)

            default = await users.paginate(offset=3)  # limit: 20 by default
            assert (len(default.items), default.limit, default.has_next) == (20, 20, True)
            only_limit = await users.paginate(limit=7, order_by="-email")
            assert only_limit.offset == 0 and only_limit.items[0].email == "u24@example.com"

            filtered = await users.paginate(offset=1, limit=2, filters={"name": "bob"})
            assert [u.email for u in filtered.items] == ["u06@example.com", "u11@example.com"]
            assert (filtered.total, filtered.has_next) == (5, True)


async def test_paginate_by_page_keeps_its_fields(db: DatabaseManager) -> None:
    async with db.session() as session:
        page = await UserRepository(session).paginate(3, 10)
    assert (page.page, page.page_size, page.total, page.pages, page.has_next) == (
        3,
        10,
        25,
        3,
        False,
    )
    assert (page.offset, page.limit, len(page.items)) == (20, 10, 5)
    # A Page built by hand, as before offsets existed, works out its offset.
    made = Page(items=[1, 2], total=12, page=2, page_size=5)
    assert (made.offset, made.limit, made.pages, made.has_next) == (5, 5, 3, True)
    assert Page(items=[], total=10, page=2, page_size=5).has_next is False


PAGINATE_BAD: list[tuple[str, Callable[[UserRepository], Any], str]] = [
    ("page and offset", lambda r: r.paginate(page=1, offset=0), "not both"),
    ("page_size and limit", lambda r: r.paginate(page_size=5, limit=5), "not both"),
    ("positional page and limit", lambda r: r.paginate(2, limit=5), "not both"),
    ("negative offset", lambda r: r.paginate(offset=-1), "offset must be a whole number >= 0"),
    ("zero limit", lambda r: r.paginate(limit=0), "limit must be a whole number >= 1"),
    ("text limit", lambda r: r.paginate(limit="20"), "limit must be a whole number"),
    ("bool offset", lambda r: r.paginate(offset=True), "offset must be a whole number"),
    ("huge limit", lambda r: r.paginate(limit=5000), "above the maximum of 1000"),
    ("page 0", lambda r: r.paginate(page=0), "page must be a whole number >= 1"),
]


@pytest.mark.parametrize("bad", PAGINATE_BAD, ids=[b[0] for b in PAGINATE_BAD])
async def test_bad_paginate_arguments_are_refused_before_any_sql(
    db: DatabaseManager, bad: tuple[str, Any, str]
) -> None:
    _, call, message = bad
    async with db.session() as session:
        with count_queries(db) as counter, pytest.raises(ValueError, match=message):
            await call(UserRepository(session))
    assert counter.count == 0


# -- keyset -----------------------------------------------------------------------------------


def expected_order(rows: list[tuple[int, str, str, Any]], order_by: list[str]) -> list[int]:
    """The ids in the order keyset() promises: ``order_by``, then id ascending."""
    index = {"id": 0, "name": 1, "email": 2, "created_at": 3}
    ordered = sorted(rows, key=lambda row: row[0])
    for item in reversed(order_by):
        key = item.lstrip("-")
        ordered.sort(key=lambda row, k=index[key]: row[k], reverse=item.startswith("-"))
    return [row[0] for row in ordered]


async def read_all_pages(
    manager: DatabaseManager, order_by: list[str], limit: int, **kwargs: Any
) -> tuple[list[int], int]:
    """Every page of the listing, one session per page (as requests do); the ids and the
    number of pages. Each page is one statement, on the fast path when ``manager`` has it."""
    seen: list[int] = []
    token = None
    pages = 0
    while True:
        async with manager.session() as session:
            with count_queries(manager) as counter:
                page = await UserRepository(session).keyset(
                    token, limit=limit, order_by=order_by, **kwargs
                )
            assert counter.count == 1
            if manager.fast_path:
                assert not session.in_transaction(), "the fast path served it"
        assert isinstance(page, KeysetPage) and page.total is None and page.limit == limit
        assert len(page.items) <= limit
        seen.extend(u.id for u in page.items)
        pages += 1
        if page.next is None:
            assert not page.has_next
            return seen, pages
        assert len(page.items) == limit and page.has_next
        token = page.next


ORDERINGS = [
    [],
    ["name"],
    ["-name"],
    ["-id"],
    ["name", "-email"],
    ["-name", "email"],
    ["-created_at"],
    ["name", "-created_at"],
]


@pytest.mark.parametrize("order_by", ORDERINGS, ids=[",".join(o) or "pk" for o in ORDERINGS])
async def test_keyset_pages_cover_every_row_once_in_order(
    db: DatabaseManager, slow: DatabaseManager, order_by: list[str]
) -> None:
    expected = expected_order(await all_users(db), order_by)
    for manager in (db, slow):
        seen, pages = await read_all_pages(manager, order_by, 7)
        assert seen == expected
        assert pages == 4
    seen, pages = await read_all_pages(db, order_by, 5)  # the last page is full
    assert seen == expected and pages == 5


async def test_keyset_with_filters_total_and_scope(db: DatabaseManager) -> None:
    async with db.session() as session:
        users = UserRepository(session)
        await users.soft_delete((await users.get_one_by(email="u00@example.com")).id)
    async with db.session() as session:
        users = UserRepository(session)
        with count_queries(db) as counter:
            page = await users.keyset(limit=3, filters={"name": "erin"}, with_total=True)
        assert counter.count == 2 and not session.in_transaction()
        assert [u.email for u in page.items] == [f"u{i:02}@example.com" for i in (5, 10, 15)]
        assert page.total == 4  # u00 is soft-deleted
        rest = await users.keyset(page.next, limit=3, filters={"name": "erin"}, with_total=True)
        assert [u.email for u in rest.items] == ["u20@example.com"]
        assert (rest.next, rest.total) == (None, 4)
        deleted = await users.keyset(only_deleted=True)
        assert [u.email for u in deleted.items] == ["u00@example.com"] and deleted.next is None
        everyone = await users.keyset(limit=100, with_deleted=True)
        assert len(everyone.items) == 25
        nothing = await users.keyset(filters={"id": 2**70}, with_total=True)  # no query
        assert (nothing.items, nothing.next, nothing.total) == ([], None, 0)


async def test_keyset_with_options_and_relationship_paths(db: DatabaseManager) -> None:
    from sqlalchemy.orm import selectinload

    async with db.session() as session:
        author = await UserRepository(session).get_one_by(email="u03@example.com")
        posts = PostRepository(session)
        for i in range(5):
            await posts.create(Post(user_id=author.id, title=f"t{i}"))
    async with db.session() as session:
        posts = PostRepository(session)
        first = await posts.keyset(limit=2, order_by="-title", options=[selectinload(Post.author)])
        assert [p.title for p in first.items] == ["t4", "t3"]
        assert first.items[0].author.email == "u03@example.com"  # loaded
        second = await posts.keyset(first.next, limit=2, order_by="-title")
        assert [p.title for p in second.items] == ["t2", "t1"]
    async with db.session() as session:
        # A relationship path (EXISTS) in the filters, on the fast path.
        posts = PostRepository(session)
        with count_queries(db) as counter:
            by_path = await posts.keyset(limit=3, filters={"author__email": "u03@example.com"})
            rest = await posts.keyset(by_path.next, filters={"author__email": "u03@example.com"})
        assert [p.title for p in [*by_path.items, *rest.items]] == [f"t{i}" for i in range(5)]
        assert counter.count == 2 and not session.in_transaction()
        none = await posts.keyset(filters={"author__email": "u04@example.com"}, with_total=True)
        assert (none.items, none.next, none.total) == ([], None, 0)


async def test_keyset_is_stable_under_concurrent_inserts(db: DatabaseManager) -> None:
    """Rows inserted before the cursor between page fetches (committed by another unit of
    work): no row present from the start is skipped or repeated."""
    order_by = ["name", "-created_at"]
    expected = expected_order(await all_users(db), order_by)
    seen: list[int] = []
    token = None
    inserted = 0
    while True:
        async with db.session() as session:
            page = await UserRepository(session).keyset(token, limit=4, order_by=order_by)
        seen.extend(u.id for u in page.items)
        if page.next is None:
            break
        token = page.next
        # Rows that sort before the cursor: a name before every other ("aaa"), and the
        # newest row of the name the page started with (first within it, by -created_at).
        async with UnitOfWork(db) as uow:
            users = UserRepository(uow.session)
            for name in ("aaa", page.items[0].name):
                inserted += 1
                await users.create({"email": f"new{inserted}@example.com", "name": name})
            await uow.commit()
    original = set(expected)
    assert [i for i in seen if i in original] == expected, "none skipped, none repeated"
    assert len(seen) == len(expected), "the rows inserted before the cursor are not read"
    async with db.session() as session:
        assert await UserRepository(session).count() == 25 + inserted


async def test_a_offset_page_would_have_shifted(db: DatabaseManager) -> None:
    """The same inserts shift an offset page: why keyset() exists (a check of the test)."""
    async with db.session() as session:
        first = await UserRepository(session).paginate(offset=0, limit=5, order_by=["name", "id"])
    async with db.session() as session:
        await UserRepository(session).create({"email": "zz@example.com", "name": "aaa"})
    async with db.session() as session:
        second = await UserRepository(session).paginate(offset=5, limit=5, order_by=["name", "id"])
    assert first.items[-1].id in {u.id for u in second.items}, "an offset page repeats a row"


async def test_a_token_does_not_trust_the_client_beyond_its_values(db: DatabaseManager) -> None:
    async with db.session() as session:
        page = await UserRepository(session).keyset(limit=5, order_by=["name"])
    assert page.next is not None
    assert all(c.isalnum() or c in "-_" for c in page.next), "url-safe, no padding"
    document = json.loads(base64.urlsafe_b64decode(page.next + "=" * (-len(page.next) % 4)))
    assert document == [1, "users", ["name", "id"], ["alice", page.items[-1].id]]


def forged(document: Any) -> str:
    raw = json.dumps(document).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def token_for(db: DatabaseManager, order_by: list[str]) -> str:
    async with db.session() as session:
        page = await UserRepository(session).keyset(limit=2, order_by=order_by)
    assert page.next is not None
    return page.next


BY_NAME = {"order_by": ["name"]}
BY_CREATED = {"order_by": ["-created_at"]}

KEYSET_BAD: list[tuple[str, Callable[[str, str], tuple[Any, dict[str, Any]]], str]] = [
    # (what, (token by name, token by -created_at) -> (after, keyset kwargs), message)
    ("empty", lambda t, c: ("", {}), "after takes the next token"),
    ("not text", lambda t, c: (123, {}), "after takes the next token"),
    ("too long", lambda t, c: ("A" * 5000, {}), "after takes the next token"),
    ("garbage", lambda t, c: ("!!not-base64!!", {}), "not a page token"),
    ("not json", lambda t, c: (base64.urlsafe_b64encode(b"\xff\xfe").decode(), {}), "not a page"),
    ("wrong shape", lambda t, c: (forged({"a": 1}), {}), "not a page token of this version"),
    ("wrong version", lambda t, c: (forged([2, "users", ["id"], [1]]), {}), "this version"),
    ("other ordering", lambda t, c: (t, {"order_by": ["-name"]}), "token of another listing"),
    ("other ordering 2", lambda t, c: (c, BY_NAME), "pass the same order_by"),
    ("token by name, no order_by", lambda t, c: (t, {}), "another listing"),
    ("other table", lambda t, c: (forged([1, "posts", ["id"], [1]]), {}), "another listing"),
    ("few values", lambda t, c: (forged([1, "users", ["id"], []]), {}), "another listing"),
    ("text for int", lambda t, c: (forged([1, "users", ["id"], ["1"]]), {}), "not a value of"),
    ("bool for int", lambda t, c: (forged([1, "users", ["id"], [True]]), {}), "not a value of"),
    ("float for int", lambda t, c: (forged([1, "users", ["id"], [1.5]]), {}), "not a value of"),
    ("int for text", lambda t, c: (forged([1, "users", ["name", "id"], [5, 1]]), BY_NAME), "not a"),
    (
        "bad datetime",
        lambda t, c: (forged([1, "users", ["-created_at", "id"], ["noon", 1]]), BY_CREATED),
        "not a value of",
    ),
    (
        "naive datetime",
        lambda t, c: (
            forged([1, "users", ["-created_at", "id"], ["2024-01-01T00:00:00", 1]]),
            BY_CREATED,
        ),
        "not a value of",
    ),
    ("nullable column", lambda t, c: (None, {"order_by": ["age"]}), "'age': the column is null"),
    ("soft-delete column", lambda t, c: (None, {"order_by": "-deleted_at"}), "nullable"),
    ("column object", lambda t, c: (None, {"order_by": [User.name]}), "not column objects"),
    ("unknown column", lambda t, c: (None, {"order_by": "nope"}), "no column 'nope'"),
    ("zero limit", lambda t, c: (None, {"limit": 0}), "limit must be a whole number >= 1"),
    ("huge limit", lambda t, c: (None, {"limit": 1001}), "above the maximum"),
    ("with_total text", lambda t, c: (None, {"with_total": "yes"}), "with_total takes True"),
    ("both scopes", lambda t, c: (None, {"with_deleted": True, "only_deleted": True}), "contra"),
]


@pytest.mark.parametrize("bad", KEYSET_BAD, ids=[b[0] for b in KEYSET_BAD])
async def test_bad_keyset_input_is_refused_before_any_sql(
    db: DatabaseManager, bad: tuple[str, Any, str]
) -> None:
    _, make, message = bad
    after, kwargs = make(await token_for(db, ["name"]), await token_for(db, ["-created_at"]))
    async with db.session() as session:
        with count_queries(db) as counter, pytest.raises(ValueError, match=message):
            await UserRepository(session).keyset(after, **kwargs)
    assert counter.count == 0


async def test_a_token_of_another_model_is_refused(db: DatabaseManager) -> None:
    async with db.session() as session:
        await PostRepository(session).create(Post(user_id=1, title="a"))
        await PostRepository(session).create(Post(user_id=1, title="b"))
    async with db.session() as session:
        token = (await PostRepository(session).keyset(limit=1)).next
        assert token is not None
        with count_queries(db) as counter, pytest.raises(ValueError, match="another listing"):
            await UserRepository(session).keyset(token)
    assert counter.count == 0


class SortedUsers(BaseRepository[User]):
    sortable = frozenset({"name"})


async def test_keyset_respects_sortable(db: DatabaseManager) -> None:
    async with db.session() as session:
        users = SortedUsers(session)
        with count_queries(db) as counter, pytest.raises(ValueError, match="does not allow"):
            await users.keyset(order_by="-email")
        assert counter.count == 0
        # The primary key is the library's own tie-breaker, whatever sortable says.
        page = await users.keyset(limit=30, order_by="name")
        assert len(page.items) == 25


# -- list() never truncates silently ----------------------------------------------------------


class CappedUsers(BaseRepository[User]):
    max_limit = 10


class SmallDefaultUsers(BaseRepository[User]):
    default_limit = 5


async def test_list_without_a_limit_warns_when_more_rows_match(db: DatabaseManager) -> None:
    async with db.session() as session:
        capped = CappedUsers(session)
        with count_queries(db) as counter, pytest.warns(ListTruncatedWarning) as caught:
            rows = await capped.list()
        assert len(rows) == 10 and counter.count == 1
        message = str(caught[0].message)
        assert "CappedUsers.list() was given no limit" in message
        assert "first 10 User rows of more that match" in message and "pass limit=" in message
        with pytest.warns(ListTruncatedWarning):
            assert len(await SmallDefaultUsers(session).list(filters={"name__ne": "x"})) == 5
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert len(await capped.list(limit=10)) == 10  # a limit given: no warning
            assert len(await capped.list(filters={"name": "bob"})) == 5  # all of them
            assert len(await capped.list(skip=15)) == 10  # exactly the cap remain
            assert len(await capped.list(skip=20)) == 5
        with pytest.warns(ListTruncatedWarning):
            assert len(await capped.list(skip=14)) == 10


async def test_the_managers_page_size_is_the_cap(make_db: MakeDb) -> None:
    manager = await make_db(max_page_size=8)
    await seed(manager, 9)
    async with manager.session() as session:
        with pytest.warns(ListTruncatedWarning, match="first 8 User rows"):
            assert len(await UserRepository(session).list()) == 8
        await UserRepository(session).delete_where(email="u08@example.com")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert len(await UserRepository(session).list()) == 8


# -- every type a token carries ---------------------------------------------------------------


class KindBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


class Item(IntegerIdMixin, KindBase):
    """A NOT NULL column of each type a keyset token carries."""

    __tablename__ = "pg_items"

    label: Mapped[str] = mapped_column(String(20))
    size: Mapped[Size] = mapped_column(SAEnum(Size, native_enum=False, length=10))
    native: Mapped[Size] = mapped_column(SAEnum(Size, name="pg_size"))
    ratio: Mapped[float] = mapped_column(Float)
    day: Mapped[date] = mapped_column(Date)
    seen: Mapped[datetime] = mapped_column(DateTime)  # naive
    price: Mapped[Decimal] = mapped_column(Numeric(8, 2))
    flag: Mapped[bool] = mapped_column(Boolean)
    key: Mapped[uuid.UUID] = mapped_column(Uuid)


class ItemRepository(BaseRepository[Item]):
    pass


@pytest.mark.parametrize("column", ["label", "size", "day", "seen", "price", "flag", "key"])
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
async def test_keyset_orders_by_every_token_type(
    make_db: MakeDb, column: str, descending: bool
) -> None:
    db = await make_db(KindBase.metadata)
    start = datetime(2024, 1, 1, 12, 0, 0, 123000)
    async with db.session() as session:
        session.add_all(
            [
                Item(
                    label=f"l{i % 4}",
                    size=Size.SMALL if i % 2 else Size.LARGE,
                    native=Size.SMALL,
                    ratio=0.1 * i,
                    day=date(2024, 1, 1) + timedelta(days=i % 5),
                    seen=start + timedelta(minutes=i % 6),
                    price=Decimal(i % 7) + Decimal("0.25"),
                    flag=bool(i % 3),
                    key=uuid.UUID(int=(i * 7919) % 13 + 1),
                )
                for i in range(13)
            ]
        )
    async with db.session() as session:
        # The database's own order (an Enum sorts by declaration on PostgreSQL and
        # MariaDB, by name on SQLite), with the id breaking ties as keyset() does.
        attribute = getattr(Item, column)
        ordering = attribute.desc() if descending else attribute.asc()
        expected = list((await session.scalars(select(Item.id).order_by(ordering, Item.id))).all())
        assert len(expected) == 13
    order_by = ("-" if descending else "") + column
    seen: list[int] = []
    token = None
    while True:
        async with db.session() as session:
            page = await ItemRepository(session).keyset(token, limit=4, order_by=order_by)
        seen.extend(item.id for item in page.items)
        if page.next is None:
            break
        token = page.next
    assert seen == expected


@pytest.mark.parametrize(
    ("column", "message"),
    [
        # sorts by declaration but compares as text on MariaDB
        ("native", "a native ENUM sorts by its declaration order"),
        # need not compare equal to itself after a round trip
        ("ratio", "floating-point"),
    ],
)
async def test_keyset_refuses_orderings_that_could_skip_rows(
    make_db: MakeDb, column: str, message: str
) -> None:
    db = await make_db(KindBase.metadata)
    async with db.session() as session:
        with count_queries(db) as counter, pytest.raises(ValueError, match=message):
            await ItemRepository(session).keyset(order_by=column)
    assert counter.count == 0
