"""create_many(rows, returning=False): COPY on PostgreSQL, multi-row INSERT elsewhere."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import DuplicateEntityError, ForeignKeyViolationError
from aegis_shared.testing import count_queries
from tests.models import Comment, Post, PostRepository, User, UserRepository


def _users(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"email": f"u{i}@example.com", "name": f"U{i}"} for i in range(start, start + n)]


async def _user_count(db: DatabaseManager) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def test_returns_the_number_written_and_the_rows_land(db: DatabaseManager) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    async with db.session() as session:
        written = await UserRepository(session).create_many(_users(2500), returning=False)
    assert written == 2500
    async with db.session() as session:
        users = list((await session.scalars(select(User).order_by(User.id))).all())
    assert [u.email for u in users] == [f"u{i}@example.com" for i in range(2500)]
    assert len({u.id for u in users}) == 2500  # ids from the server, all distinct
    assert all(u.age is None for u in users)
    # created_at comes from the model's Python-side default, filled for every row.
    assert all(u.created_at is not None and u.created_at >= before for u in users)


async def test_makes_no_objects_in_the_session(db: DatabaseManager) -> None:
    async with db.session() as session:
        await UserRepository(session).create_many(_users(10), returning=False)
        assert len(session.identity_map) == 0
        # The rows are in the session's transaction: reads in it see them.
        assert await UserRepository(session).count() == 10


async def test_postgresql_uses_copy(db: DatabaseManager) -> None:
    with count_queries(db) as counter:
        async with db.session() as session:
            await UserRepository(session).create_many(_users(3000), returning=False)
    inserts = [s for s in counter.statements if "INSERT" in s.upper()]
    if db.dialect_name == "postgresql":
        assert inserts == []  # COPY goes around SQLAlchemy's cursor
    else:
        assert 1 <= len(inserts) <= 3  # batches of up to 1000 rows, not 3000 statements
    assert await _user_count(db) == 3000


async def test_rollback_undoes_the_load(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        await UserRepository(session).create_many(_users(500), returning=False)
        await session.rollback()
    assert await _user_count(db) == 0


async def test_duplicate_writes_nothing(db: DatabaseManager) -> None:
    async with db.session() as session:
        await UserRepository(session).create_many(_users(1), returning=False)
    with pytest.raises(DuplicateEntityError):
        async with db.session() as session:
            await UserRepository(session).create_many(_users(50), returning=False)
    assert await _user_count(db) == 1


async def test_foreign_key_violation_is_translated(db: DatabaseManager) -> None:
    with pytest.raises(ForeignKeyViolationError):
        async with db.session() as session:
            await PostRepository(session).create_many(
                [{"user_id": 999_999, "title": "orphan"}], returning=False
            )


async def test_unknown_field_is_rejected_before_any_sql(db: DatabaseManager) -> None:
    with count_queries(db) as counter:
        async with db.session() as session:
            with pytest.raises(ValueError, match="no field 'nickname'"):
                await UserRepository(session).create_many(
                    [*_users(3), {"email": "x@example.com", "name": "X", "nickname": "x"}],
                    returning=False,
                )
    assert counter.count == 0
    assert await _user_count(db) == 0


async def test_rows_with_different_fields_and_instances(db: DatabaseManager) -> None:
    rows: list[Any] = [
        {"email": "a@example.com", "name": "A", "age": 30},
        {"email": "b@example.com", "name": "B"},
        User(email="c@example.com", name="C", age=7),
    ]
    async with db.session() as session:
        assert await UserRepository(session).create_many(rows, returning=False) == 3
    async with db.session() as session:
        result = await session.execute(select(User.email, User.age))
        ages = {row.email: row.age for row in result}
    assert ages == {"a@example.com": 30, "b@example.com": None, "c@example.com": 7}


async def test_pending_parent_is_flushed_before_children(db: DatabaseManager) -> None:
    async with db.session() as session:
        user = User(email="p@example.com", name="P")
        session.add(user)
        await session.flush()
        post = Post(user_id=user.id, title="t")
        session.add(post)  # pending, not flushed: create_many flushes it first
        written = await PostRepository(session).create_many(
            [{"user_id": user.id, "title": f"t{i}"} for i in range(3)], returning=False
        )
        assert written == 3
    async with db.session() as session:
        assert await PostRepository(session).count(filters={"user_id": user.id}) == 4


async def test_related_objects_go_through_the_orm(db: DatabaseManager) -> None:
    async with db.session() as session:
        user = await UserRepository(session).create({"email": "r@example.com", "name": "R"})
        posts = [Post(user_id=user.id, title="t", comments=[Comment(body="c")])]
        assert await PostRepository(session).create_many(posts, returning=False) == 1
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Comment)) == 1


async def test_empty_input(db: DatabaseManager) -> None:
    with count_queries(db) as counter:
        async with db.session() as session:
            assert await UserRepository(session).create_many([], returning=False) == 0
    assert counter.count == 0


# -- skip_duplicates --------------------------------------------------------------------------


async def test_skip_duplicates_leaves_out_taken_keys_and_keeps_the_rest(
    db: DatabaseManager,
) -> None:
    async with db.session() as session:
        await UserRepository(session).create_many(_users(3), returning=False)
    rows = _users(5)  # u0..u2 exist, u3 and u4 are new
    rows.append({"email": "u3@example.com", "name": "U3 again"})  # a duplicate in the input
    async with db.session() as session:
        written = await UserRepository(session).create_many(
            rows, returning=False, skip_duplicates=True
        )
    # MariaDB counts the rows it matched, not those it inserted.
    assert written == (len(rows) if db.dialect_name in ("mysql", "mariadb") else 2)
    async with db.session() as session:
        users = (await session.execute(select(User.email, User.name).order_by(User.email))).all()
    assert [tuple(u) for u in users] == [(f"u{i}@example.com", f"U{i}") for i in range(5)]


async def test_skip_duplicates_does_not_hide_other_errors(db: DatabaseManager) -> None:
    with pytest.raises(ForeignKeyViolationError):
        async with db.session() as session:
            await PostRepository(session).create_many(
                [{"user_id": 999_999, "title": "orphan"}], returning=False, skip_duplicates=True
            )


async def test_concurrent_skipping_inserts_of_one_key_store_it_once(db: DatabaseManager) -> None:
    async def add() -> None:
        async with db.session() as session:
            await UserRepository(session).create_many(
                [{"email": "same@example.com", "name": "S"}], returning=False, skip_duplicates=True
            )

    await asyncio.gather(*(add() for _ in range(20)))
    assert await _user_count(db) == 1


async def test_skip_duplicates_needs_plain_rows(db: DatabaseManager) -> None:
    async with db.session() as session:
        repository = UserRepository(session)
        with pytest.raises(ValueError, match="pass returning=False too"):
            await repository.create_many(_users(1), skip_duplicates=True)  # type: ignore[call-overload]
        user = await repository.create({"email": "p@example.com", "name": "P"})
        posts = [Post(user_id=user.id, title="t", comments=[Comment(body="c")])]
        with pytest.raises(ValueError, match="takes rows of column values"):
            await PostRepository(session).create_many(posts, returning=False, skip_duplicates=True)
