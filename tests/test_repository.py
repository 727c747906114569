"""BaseRepository on SQLite, PostgreSQL and MariaDB: CRUD, listing, paging, soft delete.

Whatever a repository call is said to have written is checked from a fresh session after
the block, so "persisted" means a new connection sees it. The repository never commits:
work done through it inside a session that rolls back leaves nothing behind.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from aegis_shared.database import BaseRepository, DatabaseManager, Page
from aegis_shared.errors.exceptions import EntityNotFoundError, RelationshipNotLoadedError
from aegis_shared.testing import count_queries
from tests.models import (
    Account,
    AccountRepository,
    Comment,
    Post,
    PostRepository,
    User,
    UserRepository,
)


class SeedUserRepository(BaseRepository[User]):
    """The construction of seed 001: the model passed explicitly."""

    def __init__(self, session: AsyncSession) -> None:
        super().__init__(session, User)

    async def get_by_email(self, email: str) -> User | None:
        result = await self.session.execute(select(User).where(User.email == email))
        return result.scalar_one_or_none()


def inserts(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("INSERT")]


async def count_rows(db: DatabaseManager, model: type[Any]) -> int:
    """Rows of ``model``'s table as a new session sees them."""
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def stored_users(db: DatabaseManager) -> dict[int, tuple[str, str, int | None]]:
    async with db.session() as session:
        rows = (await session.execute(select(User.id, User.email, User.name, User.age))).all()
    return {row.id: (row.email, row.name, row.age) for row in rows}


async def seed_people(db: DatabaseManager) -> dict[str, int]:
    """Five committed users with distinct names and ages; returns name -> id."""
    people = [("carol", 30), ("alice", 25), ("erin", 40), ("bob", 35), ("dave", 20)]
    async with db.session() as session:
        users = await UserRepository(session).create_many(
            [{"email": f"{name}@example.com", "name": name, "age": age} for name, age in people]
        )
        return {user.name: user.id for user in users}


@pytest.fixture
async def session(db: DatabaseManager) -> AsyncIterator[AsyncSession]:
    """A session of the default manager that commits when the test body ends normally."""
    async with db.session() as session:
        yield session


# -- construction ------------------------------------------------------------------------


async def test_both_constructions_know_their_model(db: DatabaseManager) -> None:
    async with db.session() as session:
        explicit = SeedUserRepository(session)
        generic = UserRepository(session)
        direct = BaseRepository(session, User)
        assert explicit.model is User
        assert generic.model is User
        assert direct.model is User
        assert explicit.session is session

        created = await explicit.create(User(email="seed@example.com", name="Seed"))
        assert await generic.get_by_id(created.id) is created
        assert await direct.get_by_id(created.id) is created
        assert await explicit.get_by_email("seed@example.com") is created


async def test_construction_without_a_model_is_refused(db: DatabaseManager) -> None:
    class NoModel(BaseRepository):  # type: ignore[type-arg]
        pass

    class NotMapped:
        pass

    async with db.session() as session:
        with pytest.raises(TypeError, match="does not know its model"):
            NoModel(session)
        with pytest.raises(TypeError, match="not a mapped SQLAlchemy model"):
            BaseRepository(session, NotMapped)


# -- create ----------------------------------------------------------------------------


async def test_create_with_instance(db: DatabaseManager) -> None:
    user = User(email="ann@example.com", name="Ann", age=31)
    async with db.session() as session:
        created = await UserRepository(session).create(user)
        assert created is user
        assert isinstance(created.id, int)
        assert created.created_at.tzinfo is not None
        assert created.created_at.utcoffset() == timedelta(0)
        assert created.deleted_at is None

    assert await stored_users(db) == {user.id: ("ann@example.com", "Ann", 31)}


async def test_create_with_mapping(db: DatabaseManager) -> None:
    async with db.session() as session:
        created = await UserRepository(session).create({"email": "ben@example.com", "name": "Ben"})
        assert isinstance(created, User)
        assert created.id is not None
        assert created.age is None

    assert await stored_users(db) == {created.id: ("ben@example.com", "Ben", None)}


async def test_create_cascades_to_related_objects(db: DatabaseManager) -> None:
    async with db.session() as session:
        user = await UserRepository(session).create({"email": "p@example.com", "name": "P"})
        post = await PostRepository(session).create(
            Post(user_id=user.id, title="hello", comments=[Comment(body="a"), Comment(body="b")])
        )
        assert [c.post_id for c in post.comments] == [post.id, post.id]
    assert await count_rows(db, Comment) == 2


async def test_create_rejects_an_object_of_another_model(db: DatabaseManager) -> None:
    async with db.session() as session:
        with pytest.raises(TypeError, match="takes a User"):
            await UserRepository(session).create(Account(id=1, balance=0))  # type: ignore[arg-type]


# -- create_many -------------------------------------------------------------------------


async def test_create_many_sends_one_insert_for_500_rows(db: DatabaseManager) -> None:
    rows = [
        {"email": f"user{i:03}@example.com", "name": f"name{i:03}", **({"age": i} if i % 3 else {})}
        for i in range(500)
    ]
    async with db.session() as session:
        with count_queries(db) as counter:
            users = await UserRepository(session).create_many(rows)
        assert len(inserts(counter.statements)) == 1, counter.statements
        assert counter.count == 1

        # The returned objects are usable: ids, defaults and values, no lazy loads needed.
        assert [u.email for u in users] == [r["email"] for r in rows]
        assert len({u.id for u in users}) == 500
        with count_queries(db) as counter:
            assert all(isinstance(u.id, int) for u in users)
            assert all(u.created_at.utcoffset() == timedelta(0) for u in users)
            assert all(u.deleted_at is None for u in users)
            assert await session.get(User, users[7].id) is users[7]
        assert counter.count == 0
        assert all(inspect(u).persistent for u in users)

    # Each object's id is the id its own row got.
    expected = {
        u.id: (r["email"], r["name"], r.get("age")) for u, r in zip(users, rows, strict=True)
    }
    assert await stored_users(db) == expected
    assert users[1].age == 1 and users[3].age is None  # still readable after the session


async def test_create_many_with_instances_returns_the_same_objects(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = UserRepository(session)
        # Leave gaps in the id sequence so ids cannot be guessed from positions.
        first = await repo.create_many(
            [{"email": f"gap{i}@example.com", "name": "gap"} for i in range(6)]
        )
        for user in first[1:5]:
            await repo.delete(user.id)

        given = [
            User(email=f"z{i}@example.com", name=f"n{9 - i}", age=None if i % 2 else i)
            for i in range(10)
        ]
        with count_queries(db) as counter:
            created = await repo.create_many(given)
        assert len(inserts(counter.statements)) == 1
        assert all(a is b for a, b in zip(created, given, strict=True))
        assert all(u.id > first[-1].id for u in created)

    stored = await stored_users(db)
    for user in given:
        assert stored[user.id] == (user.email, user.name, user.age)
    assert len(stored) == 12


async def test_create_many_in_batches_of_at_most_1000_rows(db: DatabaseManager) -> None:
    rows = [{"email": f"b{i}@example.com", "name": "batch"} for i in range(1500)]
    async with db.session() as session:
        with count_queries(db) as counter:
            users = await UserRepository(session).create_many(rows)
    assert len(inserts(counter.statements)) == 2
    stored = await stored_users(db)
    assert len(stored) == 1500
    assert all(stored[u.id][0] == u.email for u in users)


async def test_create_many_of_nothing_sends_nothing(db: DatabaseManager) -> None:
    async with db.session() as session:
        with count_queries(db) as counter:
            assert await UserRepository(session).create_many([]) == []
            assert await UserRepository(session).create_many(iter(())) == []
        assert counter.count == 0


async def test_create_many_with_given_ids(db: DatabaseManager) -> None:
    async with db.session() as session:
        with count_queries(db) as counter:
            accounts = await AccountRepository(session).create_many(
                [Account(id=100 - i, balance=i) for i in range(50)]
            )
        assert len(inserts(counter.statements)) == 1
        assert [a.id for a in accounts] == list(range(100, 50, -1))
    async with db.session() as session:
        stored = await AccountRepository(session).list(order_by="-id")
        assert [(a.id, a.balance) for a in stored] == [(100 - i, i) for i in range(50)]


async def test_create_many_with_relationships_set(db: DatabaseManager) -> None:
    async with db.session() as session:
        author = User(email="author@example.com", name="Author")
        posts = await PostRepository(session).create_many(
            [Post(author=author, title=f"t{i}", comments=[Comment(body=f"c{i}")]) for i in range(3)]
        )
        assert author.id is not None
        assert [p.user_id for p in posts] == [author.id] * 3
    assert await count_rows(db, User) == 1
    assert await count_rows(db, Post) == 3
    assert await count_rows(db, Comment) == 3


async def test_create_many_keeps_explicit_values_next_to_defaults(db: DatabaseManager) -> None:
    stamp = datetime(2020, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    async with db.session() as session:
        users = await UserRepository(session).create_many(
            [
                {"email": "old@example.com", "name": "old", "created_at": stamp},
                {"email": "new@example.com", "name": "new"},
                User(email="pending@example.com", name="pending"),
            ]
        )
        assert users[0].created_at == stamp
        assert users[1].created_at > stamp
    async with db.session() as session:
        by_email = {u.email: u for u in await UserRepository(session).list()}
        assert by_email["old@example.com"].created_at == stamp
        assert by_email["new@example.com"].created_at == users[1].created_at
        assert by_email["pending@example.com"].id == users[2].id


async def test_create_many_of_objects_already_in_the_session(db: DatabaseManager) -> None:
    async with db.session() as session:
        pending = User(email="added@example.com", name="added")
        session.add(pending)
        users = await UserRepository(session).create_many(
            [pending, User(email="fresh@example.com", name="fresh")]
        )
        assert users[0] is pending and pending.id is not None
    assert await count_rows(db, User) == 2


# -- reads -------------------------------------------------------------------------------


async def test_get_by_id_and_get_one(db: DatabaseManager) -> None:
    ids = await seed_people(db)
    async with db.session() as session:
        repo = UserRepository(session)
        alice = await repo.get_by_id(ids["alice"])
        assert alice is not None and alice.name == "alice"
        assert await repo.get_one(ids["alice"]) is alice
        assert await repo.get_by_id(42) is None

        with pytest.raises(EntityNotFoundError) as caught:
            await repo.get_one(42)
        assert str(caught.value) == "User with id 42 not found"
        assert caught.value.entity == "User"
        assert caught.value.entity_id == 42
        assert isinstance(caught.value, LookupError)


async def test_get_by_id_with_options_loads_relationships(db: DatabaseManager) -> None:
    async with db.session() as session:
        user = await UserRepository(session).create({"email": "o@example.com", "name": "O"})
        post = await PostRepository(session).create(
            Post(user_id=user.id, title="t", comments=[Comment(body="x"), Comment(body="y")])
        )
    async with db.session() as session:
        posts = PostRepository(session)
        plain = await posts.get_one(post.id)
        with pytest.raises(RelationshipNotLoadedError):
            _ = plain.comments
        loaded = await posts.get_one(post.id, options=[selectinload(Post.comments)])
        assert loaded is plain
        with count_queries(db) as counter:
            assert [c.body for c in loaded.comments] == ["x", "y"]
        assert counter.count == 0


async def test_list_orders_by_primary_key_and_pages_with_skip_and_limit(
    db: DatabaseManager,
) -> None:
    ids = await seed_people(db)
    async with db.session() as session:
        repo = UserRepository(session)
        everyone = await repo.list()
        assert [u.id for u in everyone] == sorted(ids.values())
        assert [u.name for u in await repo.list(skip=1, limit=2)] == [u.name for u in everyone[1:3]]
        assert await repo.list(skip=5) == []
        assert await repo.list(limit=0) == []


async def test_list_without_a_limit_returns_up_to_the_cap(db: DatabaseManager) -> None:
    # No limit: every row up to the page-size cap (1000), never a silent 100; beyond the
    # cap see tests/test_pagination.py (ListTruncatedWarning).
    async with db.session() as session:
        repo = UserRepository(session)
        await repo.create_many([{"email": f"m{i}@example.com", "name": "m"} for i in range(105)])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert len(await repo.list()) == 105
            assert len(await repo.list(limit=1000)) == 105
            assert len(await repo.list(skip=100)) == 5


async def test_list_filters(db: DatabaseManager) -> None:
    await seed_people(db)
    async with db.session() as session:
        repo = UserRepository(session)
        await repo.create({"email": "nobody@example.com", "name": "nobody"})  # age NULL

        def names(users: list[User]) -> list[str]:
            return sorted(u.name for u in users)

        assert names(await repo.list(filters={"name": "bob"})) == ["bob"]
        assert names(await repo.list(filters={"age": None})) == ["nobody"]
        assert names(await repo.list(filters={"age": [20, 40, 99]})) == ["dave", "erin"]
        assert names(await repo.list(filters={"age": (25,)})) == ["alice"]
        assert names(await repo.list(filters={"name": {"carol", "dave"}})) == ["carol", "dave"]
        assert await repo.list(filters={"age": []}) == []
        assert names(await repo.list(filters={"name": ["bob", "carol"], "age": 35})) == ["bob"]
        assert names(await repo.list(filters={"deleted_at": None})) == [
            "alice",
            "bob",
            "carol",
            "dave",
            "erin",
            "nobody",
        ]
        assert await repo.list(filters={}) == await repo.list()


async def test_list_order_by(db: DatabaseManager) -> None:
    await seed_people(db)
    async with db.session() as session:
        repo = UserRepository(session)

        async def names(order_by: Any) -> list[str]:
            return [u.name for u in await repo.list(order_by=order_by)]

        assert await names("name") == ["alice", "bob", "carol", "dave", "erin"]
        assert await names("+name") == ["alice", "bob", "carol", "dave", "erin"]
        assert await names("-name") == ["erin", "dave", "carol", "bob", "alice"]
        assert await names("age") == ["dave", "alice", "carol", "bob", "erin"]
        assert await names(User.age.desc()) == ["erin", "bob", "carol", "alice", "dave"]
        assert await names(User.name) == ["alice", "bob", "carol", "dave", "erin"]
        assert await names(["-name", User.age]) == ["erin", "dave", "carol", "bob", "alice"]
        assert [u.name for u in await repo.list(order_by="-age", skip=1, limit=2)] == [
            "bob",
            "carol",
        ]


async def test_list_with_selectinload_options(db: DatabaseManager) -> None:
    async with db.session() as session:
        user = await UserRepository(session).create({"email": "s@example.com", "name": "S"})
        await PostRepository(session).create_many(
            [
                Post(
                    user_id=user.id,
                    title=f"p{i}",
                    comments=[Comment(body=f"c{i}{j}") for j in range(i)],
                )
                for i in range(3)
            ]
        )
    async with db.session() as session:
        with count_queries(db) as counter:
            posts = await PostRepository(session).list(
                options=[selectinload(Post.comments), selectinload(Post.author)]
            )
        assert counter.count == 3  # posts, their comments, their authors
        with count_queries(db) as counter:
            assert [[c.body for c in p.comments] for p in posts] == [[], ["c10"], ["c20", "c21"]]
            assert {p.author.email for p in posts} == {"s@example.com"}
        assert counter.count == 0
    async with db.session() as session:
        posts = await PostRepository(session).list()
        with pytest.raises(RelationshipNotLoadedError, match="selectinload"):
            _ = posts[0].comments


async def test_count_and_exists(db: DatabaseManager) -> None:
    ids = await seed_people(db)
    async with db.session() as session:
        repo = UserRepository(session)
        assert await repo.count() == 5
        assert await repo.count(filters={"age": [20, 25]}) == 2
        assert await repo.count(filters={"age": None}) == 0
        assert await repo.count(filters={"name": "nobody"}) == 0

        assert await repo.exists(ids["bob"]) is True
        assert await repo.exists(max(ids.values()) + 1) is False
        assert await repo.exists(filters={"name": "erin"}) is True
        assert await repo.exists(filters={"name": "zed"}) is False
        assert await repo.exists(ids["bob"], filters={"name": "bob"}) is True
        assert await repo.exists(ids["bob"], filters={"name": "erin"}) is False
        assert await repo.exists() is True
    async with db.session() as session:
        await UserRepository(session).create({"email": "x@example.com", "name": "x"})
        assert await AccountRepository(session).exists() is False
        assert await AccountRepository(session).count() == 0


# -- update, soft delete, delete -------------------------------------------------------


async def test_update(db: DatabaseManager) -> None:
    ids = await seed_people(db)
    async with db.session() as session:
        repo = UserRepository(session)
        before = (await repo.get_one(ids["bob"])).updated_at
        updated = await repo.update(ids["bob"], name="robert", age=None)
        assert updated.id == ids["bob"]
        assert updated.name == "robert" and updated.age is None
        assert updated.updated_at >= before
        assert updated.updated_at.utcoffset() == timedelta(0)

        with pytest.raises(EntityNotFoundError, match="User with id 4242 not found"):
            await repo.update(4242, name="ghost")
        # No fields: the entity as it is (issue 11), and still not found for a missing id.
        unchanged = await repo.update(ids["bob"])
        assert unchanged is updated and unchanged.name == "robert"
        with pytest.raises(EntityNotFoundError, match="User with id 4242 not found"):
            await repo.update(4242)

    stored = await stored_users(db)
    assert stored[ids["bob"]] == ("bob@example.com", "robert", None)
    assert stored[ids["alice"]] == ("alice@example.com", "alice", 25)


async def test_soft_delete_and_restore(db: DatabaseManager) -> None:
    ids = await seed_people(db)
    start = datetime.now(UTC) - timedelta(seconds=1)
    async with db.session() as session:
        repo = UserRepository(session)
        deleted = await repo.soft_delete(ids["carol"])
        assert deleted.deleted_at is not None
        assert deleted.deleted_at.utcoffset() == timedelta(0)
        assert deleted.deleted_at >= start
        assert deleted.is_deleted

    async with db.session() as session:
        repo = UserRepository(session)
        carol = await repo.get_one(ids["carol"], with_deleted=True)  # the row stays
        assert carol.deleted_at == deleted.deleted_at
        assert carol.deleted_at is not None and carol.deleted_at.utcoffset() == timedelta(0)
        assert await repo.count(with_deleted=True) == 5
        assert await repo.count() == 4  # the reads leave it out
        active = await repo.list(filters={"deleted_at": None})
        assert sorted(u.name for u in active) == ["alice", "bob", "dave", "erin"]

        restored = await repo.restore(ids["carol"])
        assert restored.deleted_at is None and not restored.is_deleted

    async with db.session() as session:
        repo = UserRepository(session)
        assert (await repo.get_one(ids["carol"])).deleted_at is None
        assert await repo.count(filters={"deleted_at": None}) == 5
        with pytest.raises(EntityNotFoundError):
            await repo.soft_delete(4242)
        with pytest.raises(TypeError, match="no deleted_at column"):
            await AccountRepository(session).soft_delete(1)


async def test_delete(db: DatabaseManager) -> None:
    ids = await seed_people(db)
    async with db.session() as session:
        repo = UserRepository(session)
        await repo.delete(ids["dave"])
        assert await repo.get_by_id(ids["dave"]) is None
        with pytest.raises(EntityNotFoundError, match=f"User with id {ids['dave']} not found"):
            await repo.delete(ids["dave"])
    async with db.session() as session:
        assert await UserRepository(session).get_by_id(ids["dave"]) is None
    assert await count_rows(db, User) == 4


async def test_delete_cascades(db: DatabaseManager) -> None:
    async with db.session() as session:
        users = UserRepository(session)
        user = await users.create({"email": "c@example.com", "name": "c"})
        other = await users.create({"email": "d@example.com", "name": "d"})
        kept = await PostRepository(session).create(
            Post(user_id=other.id, title="kept", comments=[Comment(body="k")])
        )
        post = await PostRepository(session).create(
            Post(user_id=user.id, title="t", comments=[Comment(body="1"), Comment(body="2")])
        )
    async with db.session() as session:
        await PostRepository(session).delete(post.id)  # ORM cascade to comments
    assert await count_rows(db, Post) == 1
    assert await count_rows(db, Comment) == 1
    async with db.session() as session:
        await UserRepository(session).delete(other.id)  # ON DELETE CASCADE in the schema
    assert await count_rows(db, Post) == 0
    assert await count_rows(db, Comment) == 0
    assert kept.id is not None


# -- paginate ----------------------------------------------------------------------------


async def test_paginate(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = UserRepository(session)
        await repo.create_many(
            [{"email": f"p{i:02}@example.com", "name": f"p{i:02}", "age": i % 2} for i in range(25)]
        )

        first = await repo.paginate(page=1, page_size=10)
        assert isinstance(first, Page)
        assert [u.name for u in first.items] == [f"p{i:02}" for i in range(10)]
        assert (first.total, first.page, first.page_size, first.pages) == (25, 1, 10, 3)
        assert first.has_next is True

        last = await repo.paginate(page=3, page_size=10)
        assert [u.name for u in last.items] == [f"p{i:02}" for i in range(20, 25)]
        assert last.pages == 3 and last.has_next is False

        beyond = await repo.paginate(page=4, page_size=10)
        assert beyond.items == [] and beyond.total == 25 and beyond.has_next is False

        odd = await repo.paginate(page=2, page_size=5, filters={"age": 1}, order_by="-name")
        assert [u.name for u in odd.items] == ["p13", "p11", "p09", "p07", "p05"]
        assert (odd.total, odd.pages, odd.has_next) == (12, 3, True)

        default = await repo.paginate()
        assert len(default.items) == 20 and default.page_size == 20 and default.pages == 2

        nothing = await repo.paginate(filters={"name": "nobody"})
        assert (nothing.items, nothing.total, nothing.pages, nothing.has_next) == ([], 0, 0, False)


# -- transactions belong to the caller ------------------------------------------------------


async def test_repository_never_commits(db: DatabaseManager) -> None:
    ids = await seed_people(db)
    commits: list[object] = []

    def on_commit(conn: object) -> None:
        commits.append(conn)

    event.listen(db.engine.sync_engine, "commit", on_commit)
    try:
        with pytest.raises(RuntimeError, match="abandon"):
            async with db.session() as session:
                users = UserRepository(session)
                await users.create({"email": "new@example.com", "name": "new"})
                await users.create_many(
                    [{"email": f"many{i}@example.com", "name": "many"} for i in range(3)]
                )
                await users.update(ids["alice"], name="changed")
                await users.soft_delete(ids["bob"])
                await users.delete(ids["carol"])
                assert await users.count(with_deleted=True) == 8
                assert await users.count() == 7  # bob is soft-deleted
                assert commits == []
                raise RuntimeError("abandon the work")
    finally:
        event.remove(db.engine.sync_engine, "commit", on_commit)

    assert commits == []
    stored = await stored_users(db)
    assert sorted(name for _, name, _ in stored.values()) == [
        "alice",
        "bob",
        "carol",
        "dave",
        "erin",
    ]
    async with db.session() as session:
        assert (await UserRepository(session).get_one(ids["bob"])).deleted_at is None


async def test_rolled_back_objects_are_new_again(db: DatabaseManager) -> None:
    async with db.session_factory() as session:
        users = UserRepository(session)
        one = await users.create({"email": "one@example.com", "name": "one"})
        many = await users.create_many(
            [{"email": f"r{i}@example.com", "name": "r"} for i in range(3)]
        )
        assert all(inspect(u).persistent for u in [one, *many])
        await session.rollback()
        # As after any rolled-back flush: the objects are transient, not stale rows.
        assert all(inspect(u).transient for u in [one, *many])
        assert await users.count() == 0
        again = await users.create_many(many)
        assert [u.email for u in again] == [f"r{i}@example.com" for i in range(3)]
        await session.commit()
    assert await count_rows(db, User) == 3


async def test_create_many_inside_a_savepoint(db: DatabaseManager) -> None:
    async with db.session() as session:
        users = UserRepository(session)
        await users.create({"email": "outer@example.com", "name": "outer"})
        savepoint = await session.begin_nested()
        inner = await users.create_many([{"email": "inner@example.com", "name": "inner"}])
        await savepoint.rollback()
        assert inspect(inner[0]).transient
        assert [u.name for u in await users.list()] == ["outer"]
    assert await count_rows(db, User) == 1


def test_the_repository_module_keeps_its_names() -> None:
    """``aegis_shared.database.repository`` is a package now; what it held still imports
    from it, as the same objects ``aegis_shared.database`` exports."""
    import aegis_shared.database as database
    from aegis_shared.database import repository

    for name in ("BaseRepository", "Page", "KeysetPage", "ListTruncatedWarning"):
        assert getattr(repository, name) is getattr(database, name)
    assert repository.MAX_PAGE_SIZE_KEY == "aegis.max_page_size"
    assert repository.MAX_ORDER_BY_TERMS == 8
    for alias in ("Filters", "Where", "OrderBy", "Load", "Annotate", "ModelT"):
        assert hasattr(repository, alias)
    assert all(hasattr(repository, name) for name in repository.__all__)
