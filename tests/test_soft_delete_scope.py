"""Soft delete as a scope (issue 11 item 7), on SQLite, PostgreSQL and MariaDB.

Rows whose ``deleted_at`` is set are left out of ``get_by_id``, ``get_one``, ``get_by``,
``get_one_by``, ``list``, ``count``, ``exists`` and ``paginate`` by default;
``with_deleted=True`` shows every row, ``only_deleted=True`` only the soft-deleted ones.
Each read is checked on the fast path (no transaction opened) and on the ORM path (a
``fast_path=False`` manager on the same database), with its statement count; bad input
is refused before any SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import undefer

from aegis_shared.database import DatabaseManager, TransactionManager, UnitOfWork, fast_path
from aegis_shared.database.lookups import null_term
from aegis_shared.errors.exceptions import EntityNotFoundError
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb
from tests.models import (
    AccountRepository,
    Post,
    PostRepository,
    User,
    UserRepository,
)

PEOPLE = ["alice", "bob", "carol"]


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    """The suite's tables with alice, bob and carol; carol soft-deleted (committed)."""
    manager = await make_db()
    async with manager.session() as session:
        users = UserRepository(session)
        for name in PEOPLE:
            await users.create({"email": f"{name}@example.com", "name": name})
        carol = await users.get_one_by(name="carol")
        await users.soft_delete(carol.id)
        await PostRepository(session).create(Post(user_id=carol.id, title="carol's post"))
    return manager


@pytest.fixture
async def slow(db: DatabaseManager, make_db: MakeDb) -> DatabaseManager:
    """The same database with the fast path off: the ORM path."""
    return await make_db(fast_path=False, default=False)


async def ids_of(db: DatabaseManager) -> dict[str, int]:
    async with db.session() as session:
        rows = await session.execute(select(User.name, User.id))
        return {str(name): int(id) for name, id in rows.all()}


def names(users: list[User]) -> list[str]:
    return sorted(u.name for u in users)


# -- every read, both paths, one statement each ---------------------------------------------


READS: list[tuple[str, Callable[[UserRepository, dict[str, int]], Any], Any]] = [
    # (what, call, expected), carol soft-deleted
    ("get_by_id", lambda r, i: r.get_by_id(i["carol"]), None),
    ("get_by_id with_deleted", lambda r, i: r.get_by_id(i["carol"], with_deleted=True), "carol"),
    ("get_by_id only_deleted", lambda r, i: r.get_by_id(i["carol"], only_deleted=True), "carol"),
    ("get_by_id live only_deleted", lambda r, i: r.get_by_id(i["bob"], only_deleted=True), None),
    ("get_by_id live", lambda r, i: r.get_by_id(i["bob"]), "bob"),
    ("get_by", lambda r, i: r.get_by(email="carol@example.com"), None),
    ("get_by with_deleted", lambda r, i: r.get_by(name="carol", with_deleted=True), "carol"),
    ("get_by only_deleted", lambda r, i: r.get_by(name__ne="x", only_deleted=True), "carol"),
    ("list", lambda r, i: r.list(), ["alice", "bob"]),
    ("list with_deleted", lambda r, i: r.list(with_deleted=True), PEOPLE),
    ("list only_deleted", lambda r, i: r.list(only_deleted=True), ["carol"]),
    ("list filtered", lambda r, i: r.list(filters={"name__in": ["bob", "carol"]}), ["bob"]),
    ("list seed 001", lambda r, i: r.list(filters={"deleted_at": None}), ["alice", "bob"]),
    (
        "list exclude",
        lambda r, i: r.list(exclude={"name": "bob"}, with_deleted=True),
        ["alice", "carol"],
    ),
    ("count", lambda r, i: r.count(), 2),
    ("count with_deleted", lambda r, i: r.count(with_deleted=True), 3),
    ("count only_deleted", lambda r, i: r.count(only_deleted=True), 1),
    ("exists id", lambda r, i: r.exists(i["carol"]), False),
    ("exists id with_deleted", lambda r, i: r.exists(i["carol"], with_deleted=True), True),
    ("exists filter", lambda r, i: r.exists(name="carol"), False),
    ("exists filter only_deleted", lambda r, i: r.exists(name="carol", only_deleted=True), True),
    ("exists live only_deleted", lambda r, i: r.exists(name="bob", only_deleted=True), False),
]


def shown(result: Any) -> Any:
    if isinstance(result, User):
        return result.name
    if isinstance(result, list):
        return names(result)
    return result


@pytest.mark.parametrize("read", READS, ids=[r[0] for r in READS])
async def test_reads_leave_soft_deleted_rows_out(
    db: DatabaseManager, slow: DatabaseManager, read: tuple[str, Any, Any]
) -> None:
    _, call, expected = read
    ids = await ids_of(db)
    for manager in (db, slow):
        async with manager.session() as session:
            with count_queries(manager) as counter:
                result = await call(UserRepository(session), ids)
            assert shown(result) == expected
            assert counter.count == 1
            if manager is db:
                assert not session.in_transaction(), "the fast path served it"


async def test_get_one_and_get_one_by_raise_for_a_soft_deleted_row(db: DatabaseManager) -> None:
    ids = await ids_of(db)
    async with db.session() as session:
        users = UserRepository(session)
        with pytest.raises(EntityNotFoundError, match=f"User with id {ids['carol']} not found"):
            await users.get_one(ids["carol"])
        with pytest.raises(EntityNotFoundError, match="User with name 'carol' not found"):
            await users.get_one_by(name="carol")
        assert (await users.get_one(ids["carol"], with_deleted=True)).is_deleted
        assert (await users.get_one_by(name="carol", only_deleted=True)).is_deleted
        with pytest.raises(EntityNotFoundError):
            await users.get_one(ids["alice"], only_deleted=True)


async def test_paginate_counts_and_pages_within_the_scope(
    db: DatabaseManager, slow: DatabaseManager
) -> None:
    for manager in (db, slow):
        async with manager.session() as session:
            users = UserRepository(session)
            with count_queries(manager) as counter:
                page = await users.paginate(1, 1)
            assert ([u.name for u in page.items], page.total, page.pages) == (["alice"], 2, 2)
            assert counter.count == 2
            everyone = await users.paginate(2, 2, with_deleted=True)
            assert ([u.name for u in everyone.items], everyone.total) == (["carol"], 3)
            deleted = await users.paginate(only_deleted=True)
            assert ([u.name for u in deleted.items], deleted.total) == (["carol"], 1)


# -- objects the session already holds ------------------------------------------------------


async def test_a_held_object_soft_deleted_in_this_session_is_not_returned(
    db: DatabaseManager,
) -> None:
    ids = await ids_of(db)
    async with UnitOfWork(db) as uow:
        users = UserRepository(uow.session)
        bob = await users.get_one(ids["bob"])
        await users.soft_delete(bob.id)  # flushed: the session is in its transaction now
        with count_queries(db) as counter:
            assert await users.get_by_id(bob.id) is None
            assert await users.get_by_id(bob.id, with_deleted=True) is bob
            assert await users.get_by_id(bob.id, only_deleted=True) is bob
        assert counter.count == 0, "judged by the held object's deleted_at"
        assert names(await users.list()) == ["alice"]
        await uow.commit()
        # Committed: the session is idle again and the fast path's cached object is
        # judged the same way, still without a statement.
        assert not uow.session.in_transaction()
        with count_queries(db) as counter:
            assert await users.get_by_id(bob.id) is None
            assert await users.get_by_id(bob.id, with_deleted=True) is bob
        assert counter.count == 0


async def test_an_unflushed_deleted_at_counts_as_the_session_would_flush_it(
    db: DatabaseManager,
) -> None:
    ids = await ids_of(db)
    async with UnitOfWork(db) as uow:
        users = UserRepository(uow.session)
        alice = await users.get_one(ids["alice"])
        carol = await users.get_one(ids["carol"], with_deleted=True)
        carol.deleted_at = None  # restored by hand, not flushed yet
        assert alice.deleted_at is None
        alice.deleted_at = carol.created_at
        assert await users.get_by_id(alice.id) is None
        assert await users.get_by_id(carol.id) is carol
        assert names(await users.list()) == ["bob", "carol"]  # autoflushed first
        await uow.rollback()


async def test_an_object_loaded_with_deleted_rows_is_refused_by_a_later_default_read(
    db: DatabaseManager,
) -> None:
    ids = await ids_of(db)
    async with db.session() as session:
        users = UserRepository(session)
        carol = await users.get_by_id(ids["carol"], with_deleted=True)
        assert carol is not None
        with count_queries(db) as counter:
            assert await users.get_by_id(ids["carol"]) is None
        assert counter.count == 0
        assert not session.in_transaction()


# -- the fast path keys its plans by the scope ------------------------------------------------


async def test_the_fast_path_keys_its_plans_by_the_scope(db: DatabaseManager) -> None:
    ids = await ids_of(db)
    reader = fast_path.reader_for(User.__mapper__, db.engine)
    assert reader is not None
    reader.plans.clear()
    live = (null_term("deleted_at", null=True),)
    deleted = (null_term("deleted_at", null=False),)
    async with db.session() as session:
        users = UserRepository(session)
        assert await users.get_by_id(ids["carol"]) is None
    async with db.session() as session:
        users = UserRepository(session)
        assert await users.get_by_id(ids["carol"], with_deleted=True) is not None
    async with db.session() as session:
        users = UserRepository(session)
        assert await users.get_by_id(ids["carol"], only_deleted=True) is not None
        assert await users.count() == 2
        assert await users.count(with_deleted=True) == 3
        # seed 001's filter says what the scope says: one term, the same plan as list()
        assert names(await users.list(filters={"deleted_at": None})) == ["alice", "bob"]
        assert names(await users.list()) == ["alice", "bob"]
        assert not session.in_transaction()
    assert set(reader.plans) == {
        ("get", live),
        ("get", ()),
        ("get", deleted),
        ("count", live),
        ("count", ()),
        ("list", (live, ("id",))),
    }


# -- bad input: ValueError before any SQL -------------------------------------------------------

BAD: list[tuple[str, Callable[[UserRepository], Any], str]] = [
    ("both", lambda r: r.list(with_deleted=True, only_deleted=True), "contradict"),
    ("both get", lambda r: r.get_by_id(1, with_deleted=True, only_deleted=True), "contradict"),
    ("both count", lambda r: r.count(with_deleted=True, only_deleted=True), "contradict"),
    ("both exists", lambda r: r.exists(1, with_deleted=True, only_deleted=True), "contradict"),
    ("both get_by", lambda r: r.get_by(name="a", with_deleted=True, only_deleted=True), "contr"),
    ("both paginate", lambda r: r.paginate(with_deleted=True, only_deleted=True), "contradict"),
    ("not a bool", lambda r: r.list(with_deleted="yes"), "with_deleted takes True or False"),
    ("None", lambda r: r.count(only_deleted=None), "only_deleted takes True or False"),
    ("1", lambda r: r.get_by_id(1, with_deleted=1), "with_deleted takes True or False"),
    (
        "update_where",
        lambda r: r.update_where({"name": "a"}, with_deleted=True, only_deleted=True, age=1),
        "contradict",
    ),
]


@pytest.mark.parametrize("bad", BAD, ids=[b[0] for b in BAD])
async def test_bad_scope_arguments_are_refused_before_any_sql(
    db: DatabaseManager, bad: tuple[str, Any, str]
) -> None:
    _, call, message = bad
    async with db.session() as session:
        with count_queries(db) as counter, pytest.raises(ValueError, match=message):
            await call(UserRepository(session))
    assert counter.count == 0


async def test_a_model_without_deleted_at_is_not_scoped(db: DatabaseManager) -> None:
    async with db.session() as session:
        accounts = AccountRepository(session)
        await accounts.create({"id": 1, "balance": 5})
        assert [a.id for a in await accounts.list()] == [1]
        assert [a.id for a in await accounts.list(with_deleted=True)] == [1]
        assert (await accounts.get_one(1)).balance == 5
        with count_queries(db) as counter, pytest.raises(ValueError, match="no deleted_at"):
            await accounts.list(only_deleted=True)
        assert counter.count == 0


# -- writes ---------------------------------------------------------------------------------------


async def test_soft_delete_and_restore_are_idempotent(db: DatabaseManager) -> None:
    ids = await ids_of(db)
    async with db.session() as session:
        users = UserRepository(session)
        carol = await users.get_one(ids["carol"], with_deleted=True)
        first = carol.deleted_at
        with count_queries(db) as counter:
            again = await users.soft_delete(ids["carol"])
        assert again is carol and again.deleted_at == first
        assert counter.count == 0, "already deleted: no UPDATE"
        with count_queries(db) as counter:
            restored = await users.restore(ids["carol"])  # finds the soft-deleted row
        assert restored is carol and carol.deleted_at is None
        # One UPDATE; on SQLite (always strictly isolated) the transaction it begins
        # first repeats the fast read it builds on (see fast_path._check_reads_unchanged).
        verbs = [s.split()[0].upper() for s in counter.statements]
        assert verbs.count("UPDATE") == 1 and set(verbs) <= {"SELECT", "UPDATE"}
        assert len(verbs) <= 2
        with count_queries(db) as counter:
            assert await users.restore(ids["carol"]) is carol
        assert counter.count == 0, "not deleted: no UPDATE"
        with pytest.raises(EntityNotFoundError):
            await users.restore(4242)
    async with db.session() as session:
        users = UserRepository(session)
        assert names(await users.list()) == PEOPLE
        with count_queries(db) as counter:
            await users.restore(ids["alice"])  # read (fast), nothing to write
        assert counter.count == 1
        deleted = await users.soft_delete(ids["alice"])
        assert deleted.is_deleted
    async with db.session() as session:
        assert names(await UserRepository(session).list()) == ["bob", "carol"]


async def test_update_leaves_soft_deleted_rows_alone(db: DatabaseManager) -> None:
    ids = await ids_of(db)
    async with db.session() as session:
        users = UserRepository(session)
        with pytest.raises(EntityNotFoundError):
            await users.update(ids["carol"], name="caroline")
        with pytest.raises(EntityNotFoundError):
            await users.update(ids["carol"])  # no fields: still not found
        assert await users.update_where({"name__in": ["bob", "carol"]}, age=7) == 1
        assert await users.update_where({"name": "carol"}, age=8, with_deleted=True) == 1
        assert await users.update_where({"name__ne": "x"}, age=9, only_deleted=True) == 1
    async with db.session() as session:
        rows = await session.execute(select(User.name, User.age).order_by(User.name))
        assert rows.all() == [("alice", None), ("bob", 7), ("carol", 9)]


async def test_hard_deletes_reach_soft_deleted_rows(db: DatabaseManager) -> None:
    ids = await ids_of(db)
    async with db.session() as session:
        users = UserRepository(session)
        await users.delete(ids["carol"])  # seed 001: soft_delete, then delete
        assert await users.get_by_id(ids["carol"], with_deleted=True) is None
        await users.soft_delete(ids["bob"])
        assert await users.delete_where(deleted_at__isnull=False) == 1  # purge
        assert names(await users.list(with_deleted=True)) == ["alice"]


async def test_get_or_create_finds_a_soft_deleted_row(db: DatabaseManager) -> None:
    async with db.session() as session:
        users = UserRepository(session)
        found, created = await users.get_or_create(
            defaults={"name": "other"}, email="carol@example.com"
        )
        assert not created and found.name == "carol" and found.is_deleted
    async with UnitOfWork(db) as uow:
        users = UserRepository(uow.session)
        found, created = await users.get_or_create(
            defaults={"name": "other"}, email="carol@example.com"
        )
        assert not created and found.is_deleted


async def test_relationship_paths_are_not_scoped(db: DatabaseManager) -> None:
    async with db.session() as session:
        posts = PostRepository(session)
        # carol is soft-deleted; her post is not, and the path reaches her row.
        assert [p.title for p in await posts.list(filters={"author__name": "carol"})] == [
            "carol's post"
        ]
        assert await posts.count({"author__name": "carol", "author__deleted_at": None}) == 0


# -- savepoint rollback reloads soft-deleted objects too -----------------------------------------


async def test_a_savepoint_rollback_reloads_soft_deleted_objects(db: DatabaseManager) -> None:
    ids = await ids_of(db)
    async with UnitOfWork(db) as uow:
        users = UserRepository(uow.session)
        carol = await users.get_one(ids["carol"], with_deleted=True)
        bob = await users.get_one(ids["bob"])
        with pytest.raises(RuntimeError, match="undo"):
            async with TransactionManager(uow.session).savepoint():
                carol.name = "caroline"
                await users.soft_delete(bob.id)
                await uow.session.flush()
                raise RuntimeError("undo")
        # Reloaded from the database, the soft-deleted row included: readable as before.
        assert carol.name == "carol" and carol.is_deleted
        assert bob.deleted_at is None
        assert await users.get_by_id(bob.id) is bob
        assert await users.get_by_id(carol.id) is None
        assert await users.get_by_id(carol.id, with_deleted=True) is carol


async def test_an_expired_deleted_at_is_read_again_before_judging(db: DatabaseManager) -> None:
    ids = await ids_of(db)
    async with UnitOfWork(db) as uow:
        users = UserRepository(uow.session)
        await users.update(ids["alice"], age=3)  # in its transaction: the ORM path from here
        carol = await users.get_one(ids["carol"], with_deleted=True)
        bob = await users.get_one(ids["bob"])
        uow.session.expire(carol, ["deleted_at"])
        uow.session.expire(bob, ["deleted_at"])
        with count_queries(db) as counter:
            assert await users.get_by_id(carol.id) is None
            assert await users.get_by_id(bob.id) is bob
        assert counter.count == 2, "one SELECT of deleted_at each, as async code cannot lazy-load"
        assert carol.is_deleted and bob.deleted_at is None
        await uow.rollback()


async def test_options_read_again_and_apply_the_scope(db: DatabaseManager) -> None:
    ids = await ids_of(db)
    async with db.session() as session:
        users = UserRepository(session)
        options = [undefer(User.age)]  # any option: the row is read again through the ORM
        assert await users.get_by_id(ids["carol"], options=options) is None
        found = await users.get_by_id(ids["carol"], options=options, only_deleted=True)
        assert found is not None and found.name == "carol"
        assert await users.get_by_id(ids["bob"], options=options, only_deleted=True) is None
