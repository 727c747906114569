"""The testing helpers: isolated sessions and statement counting, on every backend."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import selectinload

from aegis_shared.database import DatabaseManager, TransactionManager
from aegis_shared.testing import assert_max_queries, count_queries, isolated_session
from tests.models import Comment, Post, PostRepository, UserRepository


async def test_isolated_session_rolls_back_committed_work(db: DatabaseManager) -> None:
    async with isolated_session(db.engine) as session:
        await UserRepository(session).create({"email": "iso@example.com", "name": "Iso"})
        await session.commit()  # releases a savepoint only
        assert await UserRepository(session).count() == 1
        await UserRepository(session).create({"email": "iso2@example.com", "name": "Iso"})
        await session.rollback()  # back to the last savepoint
        assert await UserRepository(session).count() == 1
    async with db.session() as session:
        assert await UserRepository(session).count() == 0


def _verbs(statements: list[str]) -> list[str]:
    return [s.split()[0].upper() for s in statements]


async def test_the_isolation_savepoints_are_not_counted(db: DatabaseManager) -> None:
    async with isolated_session(db.engine) as session:
        users = UserRepository(session)
        with assert_max_queries(2, db) as counter:
            await users.create({"email": "sp@example.com", "name": "S"})
            await session.commit()  # releases the isolation's SAVEPOINT: not counted
            assert await users.count() == 1  # opens the next one: not counted either
        assert _verbs(counter.statements) == ["INSERT", "SELECT"]

        with count_queries(db) as counter:
            await users.create({"email": "gone@example.com", "name": "G"})
            await session.rollback()  # ROLLBACK TO the isolation's SAVEPOINT
        assert _verbs(counter.statements) == ["INSERT"]
        assert await users.count() == 1


async def test_the_code_under_tests_own_savepoints_are_counted(db: DatabaseManager) -> None:
    async with isolated_session(db.engine) as session:
        users = UserRepository(session)
        tm = TransactionManager(session)
        with count_queries(db) as counter:
            async with tm.transaction(), tm.transaction():  # the inner one: a SAVEPOINT
                await users.create({"email": "tm@example.com", "name": "T"})
        # The isolation's SAVEPOINT opened first is left out; the code's own are not.
        assert _verbs(counter.statements) == ["SAVEPOINT", "INSERT", "RELEASE"]


async def test_assert_max_queries_catches_n_plus_one(db: DatabaseManager) -> None:
    async with db.session() as session:
        user = await UserRepository(session).create({"email": "n1@example.com", "name": "N"})
        for i in range(3):
            session.add(Post(user_id=user.id, title=f"p{i}", comments=[Comment(body="c")]))
    async with db.session() as session:
        posts = PostRepository(session)
        with assert_max_queries(2, db) as counter:
            loaded = await posts.list(options=[selectinload(Post.comments)])
        assert [len(p.comments) for p in loaded] == [1, 1, 1]
        assert counter.count == 2

    async with db.session() as session:
        posts = PostRepository(session)
        # 1 list + 3 lazy loads; where the isolation is stricter than READ COMMITTED
        # (SQLite, MariaDB) the fast list read is repeated once inside the transaction.
        too_many = pytest.raises(AssertionError, match=r"at most 1 SQL statements, [45] were")
        with too_many, assert_max_queries(1, db):
            for post in await posts.list():
                await post.awaitable_attrs.comments


async def test_count_queries_uses_default_manager(db: DatabaseManager) -> None:
    with count_queries() as counter:
        async with db.session() as session:
            await session.execute("SELECT 1")
    assert any("SELECT 1" in s for s in counter.statements)


def test_pytest_plugin_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from sqlalchemy import String
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

        class PBase(DeclarativeBase):
            pass

        class Thing(PBase):
            __tablename__ = "things"
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(String(20))

        @pytest.fixture
        def aegis_metadata():
            return PBase.metadata
        """
    )
    pytester.makepyfile(
        """
        from sqlalchemy import select, func
        from conftest import Thing

        async def test_first(aegis_session, assert_max_queries):
            aegis_session.add(Thing(name="a"))
            await aegis_session.commit()
            # the SAVEPOINT that replaces the released one, then the SELECT
            with assert_max_queries(2):
                assert await aegis_session.scalar(select(func.count()).select_from(Thing)) == 1

        async def test_second_sees_nothing(aegis_db):
            async with aegis_db.session() as session:
                assert await session.scalar(select(func.count()).select_from(Thing)) == 0
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=2)
