"""Bad input to BaseRepository, on SQLite, PostgreSQL and MariaDB.

Input the repository can judge by itself (unknown columns and fields, negative or
oversized paging, order_by strings that are not column names) raises ``ValueError``
before any SQL is sent. Input only the database can judge (NOT NULL, UNIQUE, FOREIGN
KEY) raises our integrity errors at the call that caused them, with the driver's error
chained, and leaves the table as it was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import (
    DatabaseError,
    DuplicateEntityError,
    ForeignKeyViolationError,
    IntegrityViolationError,
    NotNullViolationError,
)
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb
from tests.models import Account, AccountRepository, Post, PostRepository, User, UserRepository

DRIVER_MODULES = ("asyncpg", "asyncmy", "sqlite3")


async def count_rows(db: DatabaseManager, model: type[Any]) -> int:
    """Rows of ``model``'s table as a new session sees them."""
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def snapshot(db: DatabaseManager) -> list[tuple[Any, ...]]:
    """Every user row as a new session sees it."""
    async with db.session() as session:
        rows = await session.execute(
            select(User.id, User.email, User.name, User.age, User.deleted_at).order_by(User.id)
        )
        return [tuple(row) for row in rows]


async def seed_user(db: DatabaseManager, email: str = "taken@example.com") -> int:
    async with db.session() as session:
        user = await UserRepository(session).create({"email": email, "name": "Taken", "age": 7})
        return user.id


# -- rejected before any SQL ------------------------------------------------------------------

VALID = {"email": "valid@example.com", "name": "Valid"}
INJECTION = "name; DROP TABLE users"

Call = Callable[[UserRepository, int], Awaitable[Any]]

BAD_CALLS: dict[str, tuple[Call, str]] = {
    "unknown filter column": (lambda r, i: r.list(filters={"nope": 1}), "no column 'nope'"),
    "unknown filter in count": (lambda r, i: r.count(filters={"password": "x"}), "'password'"),
    "unknown filter in exists": (lambda r, i: r.exists(i, filters={"nope": 1}), "'nope'"),
    "unknown filter in paginate": (lambda r, i: r.paginate(filters={"nope": 1}), "'nope'"),
    "filter name with SQL": (
        lambda r, i: r.list(filters={"name = name OR 1=1 --": "x"}),
        "no column",
    ),
    "filters not a mapping": (
        lambda r, i: r.list(filters=[("name", "Taken")]),  # type: ignore[arg-type]
        "mapping",
    ),
    "negative skip": (lambda r, i: r.list(skip=-1), "skip"),
    "skip not an int": (lambda r, i: r.list(skip="0"), "skip"),  # type: ignore[arg-type]
    "negative limit": (lambda r, i: r.list(limit=-1), "limit"),
    "limit True": (lambda r, i: r.list(limit=True), "limit"),
    "limit not an int": (lambda r, i: r.list(limit=10.0), "limit"),  # type: ignore[arg-type]
    "limit above the default cap": (lambda r, i: r.list(limit=1001), "maximum of 1000"),
    "page 0": (lambda r, i: r.paginate(page=0), "page"),
    "page_size 0": (lambda r, i: r.paginate(page_size=0), "page_size"),
    "page_size above the cap": (lambda r, i: r.paginate(page_size=1001), "maximum of 1000"),
    "unknown field in update": (lambda r, i: r.update(i, nope=1), "no field 'nope'"),
    "unknown and known fields in update": (
        lambda r, i: r.update(i, name="Changed", is_admin=True),
        "'is_admin'",
    ),
    "unknown field in create": (lambda r, i: r.create({**VALID, "nope": 1}), "no field 'nope'"),
    "unknown field in a later create_many row": (
        lambda r, i: r.create_many([VALID, {"email": "b@example.com", "name": "B", "x": 1}]),
        "no field 'x'",
    ),
    "unknown order_by column": (lambda r, i: r.list(order_by="nope"), "order by"),
    "order_by with SQL": (lambda r, i: r.list(order_by=INJECTION), "order by"),
    "descending order_by with SQL": (
        lambda r, i: r.list(order_by="-name; DELETE FROM users --"),
        "order by",
    ),
    "order_by with SQL after a good column": (
        lambda r, i: r.list(order_by=["name", "id DESC, (SELECT 1)"]),
        "order by",
    ),
    "order_by that is not a column": (lambda r, i: r.list(order_by=[42]), "order_by"),  # type: ignore[list-item]
    "paginate order_by with SQL": (lambda r, i: r.paginate(order_by=INJECTION), "order by"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
async def test_rejected_before_any_sql(db: DatabaseManager, case: str) -> None:
    call, message = BAD_CALLS[case]
    user_id = await seed_user(db)
    before = await snapshot(db)

    async with db.session() as session:
        repo = UserRepository(session)
        with count_queries(db) as counter, pytest.raises(ValueError, match=message):
            await call(repo, user_id)
        assert counter.statements == []

    assert await snapshot(db) == before  # nothing written, and the users table still exists


async def test_order_by_with_sql_leaves_the_table_alone(db: DatabaseManager) -> None:
    await seed_user(db)
    async with db.session() as session:
        with pytest.raises(ValueError):
            await UserRepository(session).list(order_by=INJECTION)
    async with db.session() as session:
        assert (await session.execute(text("SELECT count(*) FROM users"))).scalar() == 1


async def test_limit_at_the_cap_is_accepted(db: DatabaseManager) -> None:
    await seed_user(db)
    async with db.session() as session:
        repo = UserRepository(session)
        assert len(await repo.list(limit=1000)) == 1
        assert len((await repo.paginate(page_size=1000)).items) == 1


class SmallPageUserRepository(UserRepository):
    max_limit = 10


async def test_max_limit_class_attribute(db: DatabaseManager) -> None:
    await seed_user(db)
    async with db.session() as session:
        repo = SmallPageUserRepository(session)
        assert len(await repo.list(limit=10)) == 1
        with count_queries(db) as counter:
            with pytest.raises(ValueError, match="maximum of 10 rows"):
                await repo.list(limit=11)
            with pytest.raises(ValueError, match="maximum of 10 rows"):
                await repo.paginate(page_size=11)
        assert counter.count == 0
        # Other repositories keep the default cap.
        assert len(await UserRepository(session).list(limit=1000)) == 1


async def test_manager_max_page_size_is_the_default_cap(make_db: MakeDb) -> None:
    db = await make_db(max_page_size=50)
    await seed_user(db)
    async with db.session() as session:
        repo = UserRepository(session)
        assert len(await repo.list(limit=50)) == 1
        with count_queries(db) as counter, pytest.raises(ValueError, match="maximum of 50"):
            await repo.list(limit=51)
        assert counter.count == 0
        # A repository's own max_limit wins over the manager's.
        with pytest.raises(ValueError, match="maximum of 10"):
            await SmallPageUserRepository(session).list(limit=11)


# -- rejected by the database ------------------------------------------------------------------


def error_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        item = pending.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        orig = getattr(item, "orig", None)
        pending.extend([item.__cause__, item.__context__])
        if isinstance(orig, BaseException):
            pending.append(orig)


async def rejected(
    db: DatabaseManager,
    model: type[Any],
    expected: type[IntegrityViolationError],
    call: Callable[[AsyncSession], Awaitable[Any]],
) -> IntegrityViolationError:
    """Run ``call`` in a session, expect ``expected`` at the call, and check that the
    table is unchanged for a new session afterwards."""
    before = await count_rows(db, model)
    async with db.session() as session:
        with pytest.raises(expected) as caught:
            await call(session)
        await session.rollback()
    assert await count_rows(db, model) == before

    error = caught.value
    assert isinstance(error, DatabaseError)
    assert error.__cause__ is not None
    assert error.orig is not None
    drivers = {type(e).__module__.split(".")[0] for e in error_chain(error)}
    assert drivers & set(DRIVER_MODULES), f"no driver error chained: {drivers}"
    assert "Nothing was written" in str(error)
    return error


@pytest.mark.parametrize(
    "values",
    [{"email": "nameless@example.com"}, {"email": "nameless@example.com", "name": None}],
    ids=["missing", "none"],
)
async def test_missing_not_null_value(db: DatabaseManager, values: dict[str, Any]) -> None:
    await seed_user(db)
    error = await rejected(
        db, User, NotNullViolationError, lambda s: UserRepository(s).create(values)
    )
    assert error.columns == ("name",)


async def test_missing_not_null_value_in_create_many(db: DatabaseManager) -> None:
    await seed_user(db)
    rows: list[dict[str, Any]] = [{"email": f"ok{i}@example.com", "name": "ok"} for i in range(3)]
    rows.append({"email": "nameless@example.com", "name": None})
    error = await rejected(
        db, User, NotNullViolationError, lambda s: UserRepository(s).create_many(rows)
    )
    assert error.columns == ("name",)


async def test_not_null_on_update(db: DatabaseManager) -> None:
    user_id = await seed_user(db)
    before = await snapshot(db)
    await rejected(
        db, User, NotNullViolationError, lambda s: UserRepository(s).update(user_id, name=None)
    )
    assert await snapshot(db) == before


def names_email(error: IntegrityViolationError) -> bool:
    return "email" in error.columns or "email" in (error.constraint or "")


async def test_duplicate_unique_value(db: DatabaseManager) -> None:
    await seed_user(db, "taken@example.com")
    error = await rejected(
        db,
        User,
        DuplicateEntityError,
        lambda s: UserRepository(s).create({"email": "taken@example.com", "name": "Again"}),
    )
    assert names_email(error), (error.columns, error.constraint)
    assert "email" in str(error)


async def test_duplicate_inside_create_many_writes_none_of_the_batch(db: DatabaseManager) -> None:
    await seed_user(db)
    rows = [{"email": f"n{i}@example.com", "name": "n"} for i in range(5)]
    rows.append({"email": "n2@example.com", "name": "again"})
    error = await rejected(
        db, User, DuplicateEntityError, lambda s: UserRepository(s).create_many(rows)
    )
    assert names_email(error)
    assert await count_rows(db, User) == 1


async def test_duplicate_against_an_existing_row_in_create_many(db: DatabaseManager) -> None:
    await seed_user(db, "taken@example.com")
    rows = [{"email": "free@example.com", "name": "x"}, {"email": "taken@example.com", "name": "y"}]
    error = await rejected(
        db, User, DuplicateEntityError, lambda s: UserRepository(s).create_many(rows)
    )
    assert names_email(error)


async def test_duplicate_on_update(db: DatabaseManager) -> None:
    await seed_user(db, "taken@example.com")
    other = await seed_user(db, "other@example.com")
    before = await snapshot(db)
    error = await rejected(
        db,
        User,
        DuplicateEntityError,
        lambda s: UserRepository(s).update(other, email="taken@example.com"),
    )
    assert names_email(error)
    assert await snapshot(db) == before


async def test_duplicate_primary_key(db: DatabaseManager) -> None:
    async with db.session() as session:
        await AccountRepository(session).create(Account(id=1, balance=10))
    error = await rejected(
        db,
        Account,
        DuplicateEntityError,
        lambda s: AccountRepository(s).create(Account(id=1, balance=20)),
    )
    assert error.columns == ("id",) or error.constraint in ("pk_accounts", "PRIMARY")
    async with db.session() as session:
        assert (await AccountRepository(session).get_one(1)).balance == 10


async def test_foreign_key_violation(db: DatabaseManager) -> None:
    await seed_user(db)
    error = await rejected(
        db,
        Post,
        ForeignKeyViolationError,
        lambda s: PostRepository(s).create({"user_id": 999_999, "title": "orphan"}),
    )
    assert isinstance(error, IntegrityViolationError)


async def test_foreign_key_violation_in_create_many(db: DatabaseManager) -> None:
    user_id = await seed_user(db)
    rows = [{"user_id": user_id, "title": "fine"}, {"user_id": 999_999, "title": "orphan"}]
    await rejected(
        db, Post, ForeignKeyViolationError, lambda s: PostRepository(s).create_many(rows)
    )


async def test_foreign_key_violation_on_update(db: DatabaseManager) -> None:
    user_id = await seed_user(db)
    async with db.session() as session:
        post = await PostRepository(session).create({"user_id": user_id, "title": "mine"})
    await rejected(
        db,
        Post,
        ForeignKeyViolationError,
        lambda s: PostRepository(s).update(post.id, user_id=999_999),
    )
    async with db.session() as session:
        assert (await PostRepository(session).get_one(post.id)).user_id == user_id
