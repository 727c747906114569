"""Transaction boundaries on every backend: TransactionManager, db.session(), UnitOfWork.

Every outcome is checked from a second session after the block, so "committed" means a
new connection sees the row and "rolled back" means it does not.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from aegis_shared.database import (
    BackgroundUnitOfWork,
    DatabaseManager,
    TransactionManager,
)
from aegis_shared.errors.exceptions import (
    DuplicateEntityError,
    ForeignKeyViolationError,
    RelationshipNotLoadedError,
    UnitOfWorkStateError,
)
from tests.deferred_models import Book, DeferredBase, Shelf
from tests.models import (
    Account,
    AccountRepository,
    AppUnitOfWork,
    Comment,
    Post,
    PostRepository,
    User,
    UserAccessLogRepository,
    UserRepository,
)


class Boom(Exception):
    """An application error raised on purpose inside a block."""


async def emails(db: DatabaseManager) -> list[str]:
    """The e-mails of all users as a fresh session sees them."""
    async with db.session() as session:
        return list((await session.scalars(select(User.email).order_by(User.email))).all())


def user(email: str) -> User:
    return User(email=email, name=email.split("@")[0])


# -- TransactionManager: outermost block ---------------------------------------------------


async def test_outermost_block_commits_on_success(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        async with TransactionManager(session).transaction() as tx_session:
            assert tx_session is session
            session.add(user("a@example.com"))
        # The block committed: another connection sees the row while this session is open.
        assert await emails(db) == ["a@example.com"]


async def test_outermost_block_rolls_back_on_exception(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        with pytest.raises(Boom):
            async with TransactionManager(session).transaction():
                await UserRepository(session).create(user("a@example.com"))
                raise Boom
        # The session is usable again after the rollback.
        assert await session.scalar(select(func.count()).select_from(User)) == 0
    assert await emails(db) == []


async def test_work_before_the_block_is_part_of_its_transaction(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        await UserRepository(session).create(user("before@example.com"))
        with pytest.raises(Boom):
            async with TransactionManager(session).transaction():
                await UserRepository(session).create(user("inside@example.com"))
                raise Boom
    assert await emails(db) == []


async def test_depth_counts_open_blocks(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        outer = TransactionManager(session)
        assert outer.depth == 0
        async with outer.transaction():
            # A manager made elsewhere for the same session sees the same depth.
            inner = TransactionManager(session)
            assert inner.depth == 1
            async with inner.transaction():
                assert outer.depth == 2
            assert inner.depth == 1
        assert outer.depth == 0


# -- TransactionManager: nested blocks are SAVEPOINTs --------------------------------------


async def test_duplicate_in_nested_block_undoes_only_that_block(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        users = UserRepository(session)
        async with TransactionManager(session).transaction():
            await users.create(user("a@example.com"))
            with pytest.raises(DuplicateEntityError):
                async with TransactionManager(session).transaction():
                    await users.create(user("b@example.com"))
                    await users.create(user("a@example.com"))  # the flush fails here
            # The enclosing transaction is usable after the failed flush.
            await users.create(user("c@example.com"))
    assert await emails(db) == ["a@example.com", "c@example.com"]


async def test_raised_error_in_nested_block_undoes_only_that_block(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        users = UserRepository(session)
        tm = TransactionManager(session)
        async with tm.transaction():
            await users.create(user("a@example.com"))
            with pytest.raises(ValueError, match="changed my mind"):
                async with tm.transaction():
                    await users.create(user("b@example.com"))
                    raise ValueError("changed my mind")
            await users.create(user("c@example.com"))
    assert await emails(db) == ["a@example.com", "c@example.com"]


async def test_flush_failing_at_the_end_of_a_nested_block_undoes_only_that_block(
    db: DatabaseManager,
) -> None:
    # The duplicate is only added, so it fails in the flush that closes the nested block.
    calls: list[str] = []
    async with db.session() as session:
        await UserRepository(session).create(user("a@example.com"))
    async with db.session_factory() as session:
        tm = TransactionManager(session)
        async with tm.transaction():
            await UserRepository(session).create(user("b@example.com"))
            tm.on_commit(lambda: calls.append("outer"))
            with pytest.raises(DuplicateEntityError):
                async with tm.transaction():
                    tm.on_commit(lambda: calls.append("failed block"))
                    session.add(user("a@example.com"))
            session.add(user("c@example.com"))
    assert await emails(db) == ["a@example.com", "b@example.com", "c@example.com"]
    assert calls == ["outer"]


async def test_failed_commit_rolls_back_and_leaves_the_session_usable(
    db: DatabaseManager,
) -> None:
    calls: list[str] = []
    async with db.session() as session:
        await UserRepository(session).create(user("a@example.com"))
    async with db.session_factory() as session:
        tm = TransactionManager(session)
        with pytest.raises(DuplicateEntityError):
            async with tm.transaction():
                tm.on_commit(lambda: calls.append("never"))
                session.add(user("b@example.com"))
                session.add(user("a@example.com"))  # fails in the flush before COMMIT
        assert tm.depth == 0
        async with tm.transaction():
            session.add(user("c@example.com"))
            tm.on_commit(lambda: calls.append("second"))
    assert await emails(db) == ["a@example.com", "c@example.com"]
    assert calls == ["second"]


async def test_successful_nested_blocks_commit_with_the_outer(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        users = UserRepository(session)
        tm = TransactionManager(session)
        async with tm.transaction():
            async with tm.transaction():
                await users.create(user("a@example.com"))
                async with tm.transaction():
                    await users.create(user("b@example.com"))
            # Released SAVEPOINTs are not committed yet.
            assert await emails(db) == []
    assert await emails(db) == ["a@example.com", "b@example.com"]


async def test_outer_failure_undoes_released_nested_blocks(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        tm = TransactionManager(session)
        with pytest.raises(Boom):
            async with tm.transaction():
                async with tm.transaction():
                    await UserRepository(session).create(user("a@example.com"))
                raise Boom
    assert await emails(db) == []


# -- on_commit callbacks -------------------------------------------------------------------


async def test_on_commit_runs_sync_and_async_callbacks_after_the_outer_commit(
    db: DatabaseManager,
) -> None:
    calls: list[Any] = []

    def sync_callback() -> None:
        calls.append("sync")

    async def async_callback() -> None:
        # Runs after COMMIT: a different connection already sees the row.
        calls.append(("async", await emails(db)))

    async with db.session_factory() as session:
        tm = TransactionManager(session)
        async with tm.transaction():
            await UserRepository(session).create(user("a@example.com"))
            tm.on_commit(sync_callback)
            async with tm.transaction():
                tm.on_commit(async_callback)
            assert calls == [], "a released SAVEPOINT does not run callbacks"
        assert calls == ["sync", ("async", ["a@example.com"])]


async def test_on_commit_skips_callbacks_of_a_rolled_back_savepoint(db: DatabaseManager) -> None:
    calls: list[str] = []
    async with db.session_factory() as session:
        tm = TransactionManager(session)
        async with tm.transaction():
            tm.on_commit(lambda: calls.append("outer"))
            with pytest.raises(Boom):
                async with tm.transaction():
                    tm.on_commit(lambda: calls.append("rolled back"))
                    async with tm.transaction():
                        tm.on_commit(lambda: calls.append("released into rolled back"))
                    raise Boom
            async with tm.transaction():
                tm.on_commit(lambda: calls.append("released"))
    assert calls == ["outer", "released"]


async def test_on_commit_skips_callbacks_when_the_outer_block_rolls_back(
    db: DatabaseManager,
) -> None:
    calls: list[str] = []
    async with db.session_factory() as session:
        tm = TransactionManager(session)
        with pytest.raises(Boom):
            async with tm.transaction():
                tm.on_commit(lambda: calls.append("outer"))
                async with tm.transaction():
                    tm.on_commit(lambda: calls.append("inner"))
                raise Boom
        # Nothing registered before is left over for the next transaction.
        async with tm.transaction():
            tm.on_commit(lambda: calls.append("next"))
    assert calls == ["next"]


async def test_on_commit_skips_callbacks_when_the_commit_fails(db: DatabaseManager) -> None:
    calls: list[str] = []
    async with db.session() as session:
        await UserRepository(session).create(user("a@example.com"))
    async with db.session_factory() as session:
        tm = TransactionManager(session)
        with pytest.raises(DuplicateEntityError):
            async with tm.transaction():
                tm.on_commit(lambda: calls.append("never"))
                session.add(user("a@example.com"))  # fails in the flush before COMMIT
    assert calls == []


async def test_failing_callback_is_logged_not_raised(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def broken() -> None:
        raise RuntimeError("mail server down")

    caplog.set_level(logging.ERROR, logger="aegis_shared.database")
    async with db.session_factory() as session:
        tm = TransactionManager(session)
        async with tm.transaction():
            await UserRepository(session).create(user("a@example.com"))
            tm.on_commit(broken)
            tm.on_commit(lambda: calls.append("after"))
    assert await emails(db) == ["a@example.com"]
    assert calls == ["after"], "the callbacks after a failing one still run, exactly once"
    failures = [r for r in caplog.records if "on_commit callback" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], RuntimeError)


async def test_on_commit_runs_once_on_a_plain_async_session(db: DatabaseManager) -> None:
    calls: list[str] = []
    async with AsyncSession(db.engine) as session:
        tm = TransactionManager(session)
        async with tm.transaction():
            session.add(user("a@example.com"))
            tm.on_commit(lambda: calls.append("done"))
    assert calls == ["done"]
    assert await emails(db) == ["a@example.com"]


async def test_on_commit_rejects_non_callables(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        with pytest.raises(TypeError):
            TransactionManager(session).on_commit("not callable")  # type: ignore[arg-type]


# -- db.session() ----------------------------------------------------------------------------


async def test_session_commits_on_success_and_closes(db: DatabaseManager) -> None:
    async with db.session() as session:
        await UserRepository(session).create(user("a@example.com"))
    assert await emails(db) == ["a@example.com"]
    with pytest.raises(sa_exc.InvalidRequestError, match="closed"):
        await session.execute("SELECT 1")


async def test_session_rolls_back_on_exception_and_closes(db: DatabaseManager) -> None:
    with pytest.raises(Boom):
        async with db.session() as session:
            await UserRepository(session).create(user("a@example.com"))
            raise Boom
    assert await emails(db) == []
    with pytest.raises(sa_exc.InvalidRequestError, match="closed"):
        await session.execute("SELECT 1")
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_session_with_failed_flush_raises_the_translated_error(db: DatabaseManager) -> None:
    async with db.session() as session:
        await UserRepository(session).create(user("a@example.com"))
    with pytest.raises(DuplicateEntityError):
        async with db.session() as session:
            session.add(user("b@example.com"))
            session.add(user("a@example.com"))
    assert await emails(db) == ["a@example.com"]
    assert db.pool_status()["main"]["checked_out"] == 0


# -- UnitOfWork -----------------------------------------------------------------------------


async def test_unit_of_work_repositories_share_one_session(db: DatabaseManager) -> None:
    async with AppUnitOfWork() as uow:
        assert isinstance(uow.users, UserRepository)
        assert isinstance(uow.posts, PostRepository)
        assert isinstance(uow.accounts, AccountRepository)
        assert isinstance(uow.user_access_logs, UserAccessLogRepository)
        sessions = {
            id(repo.session) for repo in (uow.users, uow.posts, uow.accounts, uow.user_access_logs)
        }
        assert sessions == {id(uow.session)}


async def test_unit_of_work_uses_the_manager_it_is_given(make_db: Any) -> None:
    manager = await make_db(default=False)
    async with AppUnitOfWork(manager) as uow:
        await uow.users.create(user("a@example.com"))
        await uow.commit()
    assert await emails(manager) == ["a@example.com"]


async def test_unit_of_work_commit_persists(db: DatabaseManager) -> None:
    async with AppUnitOfWork() as uow:
        created = await uow.users.create(user("a@example.com"))
        await uow.accounts.create(Account(id=1, balance=100))
        await uow.commit()
        # Still usable after commit; the object stays readable (no expiry).
        assert created.email == "a@example.com"
    assert await emails(db) == ["a@example.com"]
    async with db.session() as session:
        assert (await session.get(Account, 1)) is not None


async def test_unit_of_work_without_commit_rolls_back(db: DatabaseManager) -> None:
    async with AppUnitOfWork() as uow:
        await uow.users.create(user("a@example.com"))
    assert await emails(db) == []


async def test_unit_of_work_keeps_committed_part_only(db: DatabaseManager) -> None:
    async with AppUnitOfWork() as uow:
        await uow.users.create(user("a@example.com"))
        await uow.commit()
        await uow.users.create(user("b@example.com"))
    assert await emails(db) == ["a@example.com"]


async def test_unit_of_work_exception_rolls_back(db: DatabaseManager) -> None:
    with pytest.raises(Boom):
        async with AppUnitOfWork() as uow:
            await uow.users.create(user("a@example.com"))
            await uow.flush()
            raise Boom
    assert await emails(db) == []
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_unit_of_work_explicit_rollback(db: DatabaseManager) -> None:
    async with AppUnitOfWork() as uow:
        await uow.users.create(user("a@example.com"))
        await uow.rollback()
        await uow.users.create(user("b@example.com"))
        await uow.commit()
    assert await emails(db) == ["b@example.com"]


async def test_unit_of_work_is_closed_after_the_block(db: DatabaseManager) -> None:
    uow = AppUnitOfWork()
    with pytest.raises(UnitOfWorkStateError, match="before"):
        _ = uow.users
    with pytest.raises(UnitOfWorkStateError, match="before"):
        _ = uow.session
    async with uow:
        session = uow.session
        users = uow.users
    with pytest.raises(sa_exc.InvalidRequestError, match="closed"):
        await session.execute("SELECT 1")
    with pytest.raises(UnitOfWorkStateError, match="after"):
        _ = uow.users
    with pytest.raises(UnitOfWorkStateError, match="after"):
        _ = uow.session
    with pytest.raises(UnitOfWorkStateError):
        await uow.commit()
    # A repository kept from inside the block cannot reach the database either.
    with pytest.raises(sa_exc.InvalidRequestError, match="closed"):
        await users.count()
    with pytest.raises(AttributeError):
        _ = uow.no_such_repository
    assert db.pool_status()["main"]["checked_out"] == 0


async def test_unit_of_work_cannot_be_reentered(db: DatabaseManager) -> None:
    uow = AppUnitOfWork()
    async with uow:
        with pytest.raises(UnitOfWorkStateError):
            async with uow:
                pass
    with pytest.raises(UnitOfWorkStateError):
        async with uow:
            pass


async def test_background_unit_of_work_uses_the_background_pool(db: DatabaseManager) -> None:
    async with BackgroundUnitOfWork() as uow:
        await uow.session.execute("SELECT 1")
        status = db.pool_status()
        assert status["background"]["checked_out"] == 1
        assert status["main"]["checked_out"] == 0
    status = db.pool_status()
    assert status["background"]["checked_out"] == 0


async def test_background_unit_of_work_commits(db: DatabaseManager) -> None:
    class LogUnitOfWork(BackgroundUnitOfWork):
        users: UserRepository

    async with LogUnitOfWork() as uow:
        await uow.users.create(user("bg@example.com"))
        await uow.commit()
    assert await emails(db) == ["bg@example.com"]


# -- plain SQL strings ---------------------------------------------------------------------


async def test_plain_sql_strings_with_bound_parameters(db: DatabaseManager) -> None:
    async with db.session() as session:
        created = await UserRepository(session).create(user("a@example.com"))
    async with db.session() as session:
        result = await session.execute("SELECT email FROM users WHERE id = :id", {"id": created.id})
        assert result.scalar_one() == "a@example.com"
        assert await session.scalar("SELECT count(*) FROM users") == 1
        # The value is bound, never spliced into the SQL.
        sneaky = await session.execute(
            "SELECT email FROM users WHERE email = :email", {"email": "x' OR '1'='1"}
        )
        assert sneaky.all() == []
        await session.execute(
            "UPDATE users SET name = :name WHERE id = :id", {"name": "renamed", "id": created.id}
        )
    async with db.session() as session:
        assert await session.scalar("SELECT name FROM users") == "renamed"


# -- loading safety --------------------------------------------------------------------------


async def make_post(db: DatabaseManager) -> int:
    async with db.session() as session:
        author = await UserRepository(session).create(user("author@example.com"))
        post = Post(user_id=author.id, title="hello")
        post.comments = [Comment(body="first"), Comment(body="second")]
        session.add(post)
        await session.flush()
        return post.id


async def test_unloaded_relationship_raises_a_helpful_error(db: DatabaseManager) -> None:
    post_id = await make_post(db)
    async with db.session() as session:
        post = await session.get(Post, post_id)
        assert post is not None
        with pytest.raises(RelationshipNotLoadedError) as caught:
            _ = post.comments
        message = str(caught.value)
        assert "Post.comments" in message
        assert "selectinload" in message
        # The session is still usable after the refusal.
        assert await session.scalar("SELECT count(*) FROM comments") == 2


async def test_selectinload_loads_the_relationship(db: DatabaseManager) -> None:
    post_id = await make_post(db)
    async with db.session() as session:
        statement = select(Post).where(Post.id == post_id).options(selectinload(Post.comments))
        post = (await session.scalars(statement)).one()
    # Loaded with the query, so readable even after the session closed.
    assert [c.body for c in post.comments] == ["first", "second"]


async def test_awaitable_attrs_loads_the_relationship(db: DatabaseManager) -> None:
    post_id = await make_post(db)
    async with db.session() as session:
        post = await session.get(Post, post_id)
        assert post is not None
        comments = await post.awaitable_attrs.comments
        assert [c.body for c in comments] == ["first", "second"]
        # Loaded now: plain access works.
        assert len(post.comments) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_a_commit_refused_by_a_deferred_constraint_leaves_the_pool_clean(
    make_db: Any,
) -> None:
    # SQLite keeps its transaction open after such a COMMIT while SQLAlchemy counts it as
    # ended: the pooled connection must still be rolled back before its next user.
    db = await make_db(DeferredBase.metadata, pool_size=1, max_overflow=0)
    with pytest.raises(ForeignKeyViolationError):
        async with db.session() as session:
            session.add(Book(shelf_id=999))
    async with db.session() as session:
        session.add(Shelf(id=1))
        session.add(Book(shelf_id=1))
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(Book)) == 1
