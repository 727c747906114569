"""Integer ids and filter values a column cannot hold, on SQLite, PostgreSQL and MariaDB.

Sent to the drivers, ``2**70`` raises ``OverflowError`` on SQLite and "value out of int32
range" on PostgreSQL, and finds nothing on MariaDB. No row can hold such a value, so every
entry point of ``BaseRepository`` answers "not found" (``None``, ``EntityNotFoundError``,
``False``, no rows, 0) without sending a statement; an IN list just loses the impossible
members. Values at the very edge of a column's range still go to the database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import BigInteger, Integer, MetaData, SmallInteger
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, selectinload

from aegis_shared.database import BaseRepository, DatabaseManager
from aegis_shared.errors.exceptions import EntityNotFoundError
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb
from tests.models import AppUnitOfWork, Post, PostRepository, User, UserRepository

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
#: The range of an ``Integer`` column (User.id, User.age) on each backend.
INTEGER_RANGE = {"sqlite": INT64, "postgresql": INT32, "mariadb": INT32}


class RangedBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Ranged(RangedBase):
    """One column of each integer width; ``unsigned`` is INT UNSIGNED on MariaDB."""

    __tablename__ = "ranged"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    small: Mapped[int] = mapped_column(SmallInteger)
    big: Mapped[int] = mapped_column(BigInteger)
    unsigned: Mapped[int] = mapped_column(
        Integer().with_variant(mysql.INTEGER(unsigned=True), "mysql")
    )


class RangedRepository(BaseRepository[Ranged]):
    pass


#: Per backend, the smallest and largest value each Ranged column holds.
RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "sqlite": {"small": INT64, "big": INT64, "unsigned": INT64},
    "postgresql": {"small": (-(2**15), 2**15 - 1), "big": INT64, "unsigned": INT32},
    "mariadb": {"small": (-(2**15), 2**15 - 1), "big": INT64, "unsigned": (0, 2**32 - 1)},
}


async def seed_user(db: DatabaseManager) -> User:
    async with db.session() as session:
        return await UserRepository(session).create({"email": "a@example.com", "name": "A"})


async def users(db: DatabaseManager) -> list[tuple[int, str]]:
    async with db.session() as session:
        return [(u.id, u.name) for u in await UserRepository(session).list()]


def impossible_values(backend: str) -> list[int]:
    low, high = INTEGER_RANGE[backend]
    return [2**70, -(2**70), high + 1, low - 1]


Call = Callable[[UserRepository, int], Awaitable[Any]]

#: Each entry point with an impossible value, and the answer for a row that is not there.
NOT_FOUND: dict[str, tuple[Call, Any]] = {
    "get_by_id": (lambda r, v: r.get_by_id(v), None),
    "get_by_id as a 1-tuple": (lambda r, v: r.get_by_id((v,)), None),
    "exists by id": (lambda r, v: r.exists(v), False),
    "exists by filter": (lambda r, v: r.exists(filters={"age": v}), False),
    "exists by id and a possible filter": (lambda r, v: r.exists(v, filters={"age": 1}), False),
    "list by id": (lambda r, v: r.list(filters={"id": v}), []),
    "list by another integer column": (lambda r, v: r.list(filters={"age": v}), []),
    "list by an IN of impossible values": (lambda r, v: r.list(filters={"id": [v, 2**70]}), []),
    "list with ordering and paging": (
        lambda r, v: r.list(skip=5, limit=3, filters={"id": v}, order_by="-name"),
        [],
    ),
    "count by id": (lambda r, v: r.count(filters={"id": v}), 0),
    "count by an IN of impossible values": (lambda r, v: r.count(filters={"age": (v,)}), 0),
    "count with a possible filter too": (
        lambda r, v: r.count(filters={"name": "A", "id": v}),
        0,
    ),
}

RAISES: dict[str, Call] = {
    "get_one": lambda r, v: r.get_one(v),
    "update": lambda r, v: r.update(v, name="changed"),
    "delete": lambda r, v: r.delete(v),
    "soft_delete": lambda r, v: r.soft_delete(v),
    "restore": lambda r, v: r.restore(v),
}


@pytest.mark.parametrize("case", list(NOT_FOUND))
async def test_an_impossible_value_is_not_found_without_a_query(
    db: DatabaseManager, backend: str, case: str
) -> None:
    call, expected = NOT_FOUND[case]
    await seed_user(db)
    for value in impossible_values(backend):
        async with db.session() as session:
            with count_queries(db) as counter:
                assert await call(UserRepository(session), value) == expected, value
            assert counter.statements == [], value


@pytest.mark.parametrize("case", list(RAISES))
async def test_an_impossible_id_raises_entity_not_found_without_a_query(
    db: DatabaseManager, backend: str, case: str
) -> None:
    user = await seed_user(db)
    before = await users(db)
    for value in impossible_values(backend):
        async with db.session() as session:
            with count_queries(db) as counter, pytest.raises(EntityNotFoundError) as caught:
                await RAISES[case](UserRepository(session), value)
            assert counter.statements == [], value
        assert caught.value.entity == "User"
    assert await users(db) == before == [(user.id, "A")]


async def test_paginate_with_an_impossible_value_is_an_empty_page(
    db: DatabaseManager, backend: str
) -> None:
    await seed_user(db)
    async with db.session() as session:
        with count_queries(db) as counter:
            page = await UserRepository(session).paginate(filters={"id": 2**70})
    assert counter.statements == []
    assert (list(page.items), page.total, page.pages, page.has_next) == ([], 0, 0, False)


async def test_get_by_id_with_options_is_not_found_without_a_query(db: DatabaseManager) -> None:
    async with db.session() as session:
        with count_queries(db) as counter:
            found = await PostRepository(session).get_by_id(
                2**70, options=[selectinload(Post.comments)]
            )
    assert found is None
    assert counter.statements == []


async def test_impossible_in_members_are_dropped_and_the_rest_still_match(
    db: DatabaseManager,
) -> None:
    user = await seed_user(db)
    calls: list[tuple[Call, Any]] = [
        (lambda r, i: r.list(filters={"id": [2**70, i, -(2**70)]}), [user]),
        (lambda r, i: r.count(filters={"id": {i, 2**64}}), 1),
        (lambda r, i: r.exists(filters={"id": (2**70, i)}), True),
    ]
    for call, expected in calls:
        async with db.session() as session:
            with count_queries(db) as counter:
                found = await call(UserRepository(session), user.id)
        assert counter.count == 1, counter.statements
        if isinstance(expected, list):
            found = [u.id for u in found]
            expected = [user.id]
        assert found == expected


async def test_the_edges_of_the_range_still_reach_the_database(
    db: DatabaseManager, backend: str
) -> None:
    """The largest and smallest storable ids are looked up (one statement each) and, with
    no such row, are simply not found: the check stops only what cannot exist."""
    await seed_user(db)
    for edge in INTEGER_RANGE[backend]:
        async with db.session() as session:
            repo = UserRepository(session)
            with count_queries(db) as counter:
                assert await repo.get_by_id(edge) is None
                assert await repo.list(filters={"age": edge}) == []
            assert counter.count == 2, (edge, counter.statements)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "ORM path"])
async def test_inside_a_unit_of_work_that_wrote(make_db: MakeDb, fast_path: bool) -> None:
    """After a write the reads go through the transaction (the ORM path); an impossible id
    sends nothing there either, and leaves the transaction usable."""
    db = await make_db(fast_path=fast_path)
    async with AppUnitOfWork(db) as uow:
        user = await uow.users.create({"email": "b@example.com", "name": "B"})
        with count_queries(db) as counter:
            assert await uow.users.get_by_id(2**70) is None
            assert await uow.users.list(filters={"id": [2**70, user.id]}) == [user]
            with pytest.raises(EntityNotFoundError):
                await uow.users.update(2**70, name="never")
        await uow.commit()
    assert counter.count == 1, counter.statements  # the list of the one possible id
    assert await users(db) == [(user.id, "B")]


async def test_each_integer_width_has_its_backends_range(make_db: MakeDb, backend: str) -> None:
    """SmallInteger, BigInteger and (on MariaDB) INT UNSIGNED columns: one past either end
    is not found without a query; the ends themselves are stored and found."""
    db = await make_db(RangedBase.metadata)
    ranges = RANGES[backend]
    lows = {column: low for column, (low, _) in ranges.items()}
    highs = {column: high for column, (_, high) in ranges.items()}
    async with db.session() as session:
        await RangedRepository(session).create_many([{"id": 1, **lows}, {"id": 2, **highs}])

    async with db.session() as session:
        repo = RangedRepository(session)
        for column, (low, high) in ranges.items():
            with count_queries(db) as counter:
                assert await repo.list(filters={column: low - 1}) == [], column
                assert await repo.list(filters={column: high + 1}) == [], column
                assert await repo.count(filters={column: [low - 1, high + 1]}) == 0, column
            assert counter.statements == [], column
            assert [r.id for r in await repo.list(filters={column: low})] == [1], column
            assert [r.id for r in await repo.list(filters={column: high})] == [2], column
        with count_queries(db) as counter:
            assert await repo.get_by_id(2**63) is None
            assert await repo.exists(-(2**63) - 1) is False
        assert counter.statements == []
        assert await repo.exists(2) is True
