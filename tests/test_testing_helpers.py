"""The testing helpers: isolated sessions and statement counting, on every backend."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.orm import selectinload

from aegis_shared.database import DatabaseManager, TransactionManager
from aegis_shared.testing import assert_max_queries, count_queries, isolated_session
from tests.markdown import python_blocks
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


@pytest.mark.parametrize(
    "mode", [(), ("-o", "asyncio_mode=auto")], ids=["no-settings", "asyncio_mode=auto"]
)
def test_pytest_plugin_fixtures(pytester: pytest.Pytester, mode: tuple[str, ...]) -> None:
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
            # the SELECT alone: not the SAVEPOINT that replaces the released one
            with assert_max_queries(1):
                assert await aegis_session.scalar(select(func.count()).select_from(Thing)) == 1

        async def test_second_sees_nothing(aegis_db):
            async with aegis_db.session() as session:
                assert await session.scalar(select(func.count()).select_from(Thing)) == 0
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *mode)
    result.assert_outcomes(passed=2)


# The application a reader of the guide has: myapp/models.py with these names.
MYAPP_MODELS = """
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from aegis_shared.database import BaseRepository
from aegis_shared.models import Base, BaseEntity


class Post(BaseEntity):
    __tablename__ = "guide_posts"
    title: Mapped[str] = mapped_column(String(200))
    comments: Mapped[list["Comment"]] = relationship(back_populates="post")


class Comment(BaseEntity):
    __tablename__ = "guide_comments"
    post_id: Mapped[int] = mapped_column(ForeignKey("guide_posts.id"))
    body: Mapped[str] = mapped_column(String(500))
    post: Mapped[Post] = relationship(back_populates="comments")


class PostRepository(BaseRepository[Post]):
    pass
"""

# Written next to the guide's test: the same check on a loop that loads lazily (N+1).
N_PLUS_ONE_TEST = """
from myapp.models import Comment, Post, PostRepository


async def test_lazy_loads_are_caught(aegis_session, assert_max_queries):
    aegis_session.add_all([Post(title=t, comments=[Comment(body="!")]) for t in "abc"])
    await aegis_session.commit()
    aegis_session.expunge_all()  # load the posts afresh, their comments not loaded
    with assert_max_queries(2):
        for post in await PostRepository(aegis_session).list():
            await post.awaitable_attrs.comments
"""


def _guide_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh project: myapp, and the guide's files as written; no pytest settings."""
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.mkpydir("myapp")
    (pytester.path / "myapp" / "models.py").write_text(MYAPP_MODELS)
    for block in python_blocks("docs/guide.md", "Testing your app"):
        name = block.splitlines()[0].removeprefix("# ")  # "# conftest.py", "# test_posts.py"
        (pytester.path / name).write_text(block)
    assert not [p for p in pytester.path.iterdir() if p.suffix in (".ini", ".cfg", ".toml")]


def test_the_guides_testing_snippet_passes_as_written(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, db_url: URL
) -> None:
    _guide_project(pytester, monkeypatch)
    (pytester.path / "test_lazy.py").write_text(N_PLUS_ONE_TEST)
    url = db_url.render_as_string(hide_password=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--aegis-db-url={url}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["E * AssertionError: expected at most 2 SQL statements, 4 were sent*"]
    )
    assert "no plugin or hook" not in result.stdout.str()


def test_without_pytest_asyncio_the_fixtures_say_what_to_install(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _guide_project(pytester, monkeypatch)
    # A project whose environment lacks pytest-asyncio: the import fails, its plugin is off.
    (pytester.path / "pytest_asyncio.py").write_text("raise ImportError('not installed')\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*The aegis_session fixture of aegis-shared is async and runs on pytest-asyncio, "
            "which is not installed: pip install pytest-asyncio*"
        ]
    )
