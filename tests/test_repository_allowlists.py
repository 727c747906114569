"""Repositories that declare ``filterable``, ``sortable`` and ``writable`` refuse other names,
before any SQL; ``order_by`` is bounded; the fast path's plan cache is bounded.

On SQLite, PostgreSQL and MariaDB. "No SQL ran" is shown with ``count_queries`` (fast-path
reads included), "nothing written" by reading the table from a fresh session afterwards.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from sqlalchemy import Boolean, Integer, MetaData, String, select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.database import (
    BaseRepository,
    DatabaseManager,
    fast_path,
    get_session,
    lookups,
)
from aegis_shared.database.repository import MAX_ORDER_BY_TERMS
from aegis_shared.models import NAMING_CONVENTION, IntegerIdMixin, SoftDeleteMixin, TimestampMixin
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb
from tests.http import serve


class AllowBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Member(IntegerIdMixin, TimestampMixin, SoftDeleteMixin, AllowBase):
    __tablename__ = "al_members"

    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    age: Mapped[int] = mapped_column(Integer)
    secret_note: Mapped[str] = mapped_column(String(100), default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)


class MemberRepository(BaseRepository[Member]):
    filterable = frozenset({"name", "email"})
    sortable = frozenset({"id", "name", "age"})
    writable = frozenset({"email", "name", "age"})


class OpenMemberRepository(BaseRepository[Member]):
    """No allow-lists: every mapped name, as before."""


#: The filter shape of a listing with no filters: the soft-delete scope's term alone.
LIVE = (lookups.null_term("deleted_at", null=True),)


PEOPLE = [("carol", 30, "c-note"), ("alice", 25, "a-note"), ("bob", 35, "b-note")]


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    manager = await make_db(AllowBase.metadata)
    async with manager.session() as session:
        await OpenMemberRepository(session).create_many(
            [
                {"email": f"{name}@example.com", "name": name, "age": age, "secret_note": note}
                for name, age, note in PEOPLE
            ]
        )
    return manager


async def stored(db: DatabaseManager) -> list[tuple[int, str, int, bool, str]]:
    """Every member row as a fresh session reads it."""
    async with db.session() as session:
        rows = await session.execute(
            select(
                Member.id, Member.name, Member.age, Member.is_admin, Member.secret_note
            ).order_by(Member.id)
        )
        return [tuple(row) for row in rows.all()]  # type: ignore[misc]


# -- reads --------------------------------------------------------------------------------


async def test_allowed_names_filter_and_sort(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = MemberRepository(session)
        by_age = await repo.list(order_by="-age")
        assert [m.name for m in by_age] == ["bob", "carol", "alice"]
        assert [m.name for m in await repo.list(order_by=["+name"])] == ["alice", "bob", "carol"]
        assert [m.name for m in await repo.list(filters={"name": ["bob", "carol"]})] == [
            "carol",
            "bob",
        ]
        assert await repo.count({"email": "bob@example.com"}) == 1
        assert await repo.exists(filters={"name": "alice"}) is True
        page = await repo.paginate(page=1, page_size=2, filters={"name": ["alice", "bob"]})
        assert (page.total, [m.name for m in page.items]) == (2, ["alice", "bob"])
        # Column objects are code, not request input: they pass.
        assert [m.name for m in await repo.list(order_by=Member.secret_note.desc())] == [
            "carol",
            "bob",
            "alice",
        ]


REFUSED_READS: dict[str, Any] = {
    "list filters": lambda r: r.list(filters={"secret_note": "b-note"}),
    "list order_by": lambda r: r.list(order_by="secret_note"),
    "list order_by desc": lambda r: r.list(order_by=["name", "-secret_note"]),
    "list order_by plus": lambda r: r.list(order_by="+secret_note"),
    "count": lambda r: r.count({"secret_note": "b-note"}),
    "count IN": lambda r: r.count({"secret_note": ["a-note", "b-note"]}),
    "exists": lambda r: r.exists(filters={"secret_note": "b-note"}),
    "exists with id": lambda r: r.exists(1, filters={"is_admin": True}),
    "paginate filters": lambda r: r.paginate(filters={"secret_note": "b-note"}),
    "paginate order_by": lambda r: r.paginate(order_by="-is_admin"),
    # Refused even when the filter could match nothing anyway (an id out of range).
    "impossible filter": lambda r: r.list(filters={"id": 2**70, "is_admin": True}),
}


@pytest.mark.parametrize("call", REFUSED_READS.values(), ids=REFUSED_READS.keys())
async def test_reads_refuse_undeclared_names_before_any_sql(db: DatabaseManager, call: Any) -> None:
    async with db.session() as session:
        repo = MemberRepository(session)
        with count_queries(db) as counter, pytest.raises(ValueError) as caught:
            await call(repo)
        assert counter.statements == []
    message = str(caught.value)
    assert message.startswith("MemberRepository does not allow ")
    assert message.endswith(
        "allowed: email, name" if "filter" in message else "allowed: age, id, name"
    )


async def test_refusal_does_not_tell_a_private_column_from_a_missing_one(
    db: DatabaseManager,
) -> None:
    async with db.session() as session:
        repo = MemberRepository(session)
        messages = []
        for name in ("secret_note", "no_such_col"):
            for call in (
                repo.list(filters={name: "x"}),
                repo.list(order_by=f"-{name}"),
                repo.create({"email": "e@example.com", "name": "e", "age": 1, name: "x"}),
            ):
                with pytest.raises(ValueError) as caught:
                    await call
                messages.append(str(caught.value).replace(repr(name), "NAME"))
    assert messages[:3] == messages[3:]
    assert all("known" not in message and "is_admin" not in message for message in messages)


async def test_a_long_refused_name_is_not_echoed_whole(db: DatabaseManager) -> None:
    async with db.session() as session:
        with pytest.raises(ValueError) as caught:
            await MemberRepository(session).list(filters={"x" * 10_000: 1})
    assert len(str(caught.value)) < 200


async def test_without_allow_lists_every_column_works(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = OpenMemberRepository(session)
        assert [m.name for m in await repo.list(filters={"secret_note": "b-note"})] == ["bob"]
        assert [m.name for m in await repo.list(order_by="-secret_note")] == [
            "carol",
            "bob",
            "alice",
        ]


# -- writes -------------------------------------------------------------------------------


REFUSED_WRITES: dict[str, Any] = {
    "create is_admin": lambda r, i: r.create(
        {"email": "m@example.com", "name": "m", "age": 1, "is_admin": True}
    ),
    "create primary key": lambda r, i: r.create(
        {"id": 999, "email": "m@example.com", "name": "m", "age": 1}
    ),
    "create_many returning": lambda r, i: r.create_many(
        [{"email": "m@example.com", "name": "m", "age": 1}, {"email": "n@x", "secret_note": "n"}]
    ),
    "create_many bulk": lambda r, i: r.create_many(
        [{"email": "m@example.com", "name": "m", "age": 1, "is_admin": True}], returning=False
    ),
    "create_many skip_duplicates": lambda r, i: r.create_many(
        [{"email": "m@example.com", "name": "m", "age": 1, "is_admin": True}],
        returning=False,
        skip_duplicates=True,
    ),
    "update is_admin": lambda r, i: r.update(i, name="x", is_admin=True),
    "update primary key": lambda r, i: r.update(i, id=i + 100),
    "update deleted_at": lambda r, i: r.update(i, deleted_at=None),
}


@pytest.mark.parametrize("call", REFUSED_WRITES.values(), ids=REFUSED_WRITES.keys())
async def test_writes_refuse_undeclared_fields_before_any_sql(
    db: DatabaseManager, call: Any
) -> None:
    before = await stored(db)
    async with db.session() as session:
        repo = MemberRepository(session)
        with count_queries(db) as counter, pytest.raises(ValueError) as caught:
            await call(repo, before[0][0])
        assert counter.statements == []
    assert str(caught.value).startswith("MemberRepository does not allow setting the field")
    assert str(caught.value).endswith("allowed: age, email, name")
    assert await stored(db) == before


async def test_declared_fields_are_written(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = MemberRepository(session)
        created = await repo.create({"email": "dan@example.com", "name": "dan", "age": 40})
        await repo.create_many([{"email": "eve@example.com", "name": "eve", "age": 41}])
        assert (
            await repo.create_many(
                [{"email": "fay@example.com", "name": "fay", "age": 42}], returning=False
            )
            == 1
        )
        await repo.update(created.id, name="daniel", age=44)
        # An instance is the application's own construction: it passes as built.
        await repo.create(Member(email="gus@example.com", name="gus", age=43, is_admin=True))
    rows = {name: (age, admin) for _, name, age, admin, _ in await stored(db)}
    assert rows["daniel"] == (44, False)
    assert rows["eve"] == (41, False) and rows["fay"] == (42, False)
    assert rows["gus"] == (43, True)


async def test_soft_delete_and_restore_are_not_governed_by_writable(db: DatabaseManager) -> None:
    member_id = (await stored(db))[0][0]
    async with db.session() as session:
        await MemberRepository(session).soft_delete(member_id)
    async with db.session() as session:
        deleted = await session.scalar(select(Member.deleted_at).where(Member.id == member_id))
        assert deleted is not None
        await MemberRepository(session).restore(member_id)
    async with db.session() as session:
        assert await session.scalar(select(Member.deleted_at).where(Member.id == member_id)) is None


# -- declaring ----------------------------------------------------------------------------


def test_an_unmapped_name_fails_when_the_class_is_created() -> None:
    with pytest.raises(TypeError, match=r"BadRepository.filterable names 'emial', which is not"):

        class BadRepository(BaseRepository[Member]):
            filterable = frozenset({"name", "emial"})

    with pytest.raises(TypeError, match=r"sortable names 'nope', 'zip', which are not"):

        class BadSortRepository(BaseRepository[Member]):
            sortable = frozenset({"zip", "nope", "age"})


def test_a_bare_string_is_not_taken_for_a_set_of_names() -> None:
    with pytest.raises(TypeError, match=r"StrRepository.writable must be a set of attribute"):

        class StrRepository(BaseRepository[Member]):
            writable = "name"  # type: ignore[assignment]


def test_any_collection_of_names_becomes_a_frozenset() -> None:
    class ListRepository(BaseRepository[Member]):
        sortable = ("age", "name")  # type: ignore[assignment]

    assert ListRepository.sortable == frozenset({"age", "name"})

    class Narrower(MemberRepository):
        writable = None  # a subclass may lift an inherited list

    assert Narrower.writable is None and Narrower.filterable == MemberRepository.filterable


async def test_a_model_named_only_in_init_is_checked_at_construction(db: DatabaseManager) -> None:
    class SeedStyleRepository(BaseRepository):  # type: ignore[type-arg]
        filterable = frozenset({"name", "secret"})

        def __init__(self, session: AsyncSession) -> None:
            super().__init__(session, Member)

    async with db.session() as session:
        with pytest.raises(TypeError, match=r"'secret', which is not a mapped column of Member"):
            SeedStyleRepository(session)


# -- order_by bounds and the plan cache ------------------------------------------------------


async def test_order_by_is_bounded_and_names_a_column_once(db: DatabaseManager) -> None:
    columns = ["id", "email", "name", "age", "secret_note", "is_admin", "created_at", "updated_at"]
    assert len(columns) == MAX_ORDER_BY_TERMS
    async with db.session() as session:
        repo = OpenMemberRepository(session)
        assert len(await repo.list(order_by=columns)) == 3
        refused = {
            "at most 8 columns, got 9": [*columns, "deleted_at"],
            "names the column 'age' twice": ["age", "-age"],
            "names the column 'name' twice": ["name", "id", "+name"],
        }
        for message, order_by in refused.items():
            with count_queries(db) as counter, pytest.raises(ValueError, match=message):
                await repo.list(order_by=order_by)
            assert counter.statements == []


async def test_a_thousand_orderings_leave_the_plan_cache_at_its_bound(
    db: DatabaseManager,
) -> None:
    names = ["id", "email", "name", "age", "secret_note"]
    orderings = [
        [("-" if desc else "") + name for name, desc in zip(combo, signs, strict=True)]
        for size in range(1, len(names) + 1)
        for combo in itertools.permutations(names, size)
        for signs in itertools.product((False, True), repeat=size)
    ][:1000]
    assert len({tuple(o) for o in orderings}) == 1000
    reader = fast_path.reader_for(Member.__mapper__, db.engine)
    assert reader is not None
    for start in range(0, len(orderings), 100):
        async with db.session() as session:
            repo = OpenMemberRepository(session)
            for order_by in orderings[start : start + 100]:
                assert len(await repo.list(order_by=order_by)) == 3
    lists = [key for key in reader.plans if key[0] == "list"]
    assert len(reader.plans) == fast_path.MAX_PLANS
    assert len(lists) == fast_path.MAX_PLANS
    assert ("list", (LIVE, tuple(orderings[-1]))) in reader.plans
    assert ("list", (LIVE, tuple(orderings[0]))) not in reader.plans
    # A plan pushed out compiles again and reads the same rows.
    async with db.session() as session:
        again = await OpenMemberRepository(session).list(order_by=["-age"])
    assert [m.name for m in again] == ["bob", "carol", "alice"]
    assert len(reader.plans) == fast_path.MAX_PLANS


async def test_a_used_plan_stays_while_others_come_and_go(db: DatabaseManager) -> None:
    reader = fast_path.reader_for(Member.__mapper__, db.engine)
    assert reader is not None
    names = ["id", "email", "name", "age", "secret_note"]
    async with db.session() as session:
        repo = OpenMemberRepository(session)
        for order_by in itertools.permutations(names, 4):  # 120, three ways each: 360
            await repo.list(order_by=["-age"])  # the application's everyday listing
            await repo.list(order_by=list(order_by))
            await repo.list(order_by=["-" + n for n in order_by])
            await repo.list(order_by=["-" + order_by[0], *order_by[1:]])
    assert len(reader.plans) == fast_path.MAX_PLANS
    assert ("list", (LIVE, ("-age",))) in reader.plans


# -- through HTTP: query parameters passed to a repository ------------------------------------


def members_app() -> FastAPI:
    """The guide's example: query parameters go straight to the repository, which refuses
    any name it does not declare; the refusal becomes a 400 saying what is allowed."""
    app = FastAPI()

    @app.get("/members")
    async def list_members(
        request: Request,
        session: AsyncSession = Depends(get_session),  # noqa: B008
    ) -> list[dict[str, Any]]:
        params = dict(request.query_params)
        order_by = params.pop("sort", "id").split(",")
        try:
            members = await MemberRepository(session).list(filters=params, order_by=order_by)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        return [{"id": m.id, "name": m.name, "age": m.age} for m in members]

    @app.patch("/members/{member_id}")
    async def edit_member(
        member_id: int,
        request: Request,
        session: AsyncSession = Depends(get_session),  # noqa: B008
    ) -> dict[str, Any]:
        try:
            member = await MemberRepository(session).update(member_id, **await request.json())
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        await session.commit()  # the repository never commits: the request does
        return {"id": member.id, "name": member.name}

    return app


async def test_query_parameters_through_a_repository(db: DatabaseManager) -> None:
    before = await stored(db)
    bob = next(row[0] for row in before if row[1] == "bob")
    async with serve(members_app()) as url, httpx.AsyncClient(base_url=url) as client:
        ok = await client.get("/members", params={"name": "bob"})
        assert ok.status_code == 200 and [m["name"] for m in ok.json()] == ["bob"]
        sorted_ = await client.get("/members", params={"sort": "-age,name"})
        assert [m["name"] for m in sorted_.json()] == ["bob", "carol", "alice"]

        with count_queries(db) as counter:
            oracle = await client.get("/members", params={"secret_note": "b-note"})
            ordering = await client.get("/members", params={"sort": "secret_note"})
            admin = await client.patch(f"/members/{bob}", json={"is_admin": True})
        assert counter.statements == []
        assert oracle.status_code == 400
        assert oracle.json()["detail"] == (
            "MemberRepository does not allow filter on 'secret_note'; allowed: email, name"
        )
        assert ordering.status_code == 400
        assert ordering.json()["detail"].endswith("allowed: age, id, name")
        assert admin.status_code == 400
        assert "b-note" not in oracle.text + ordering.text + admin.text

        renamed = await client.patch(f"/members/{bob}", json={"name": "robert"})
        assert renamed.status_code == 200
    after = await stored(db)
    assert [row[3] for row in after] == [False, False, False]
    assert next(row[1] for row in after if row[0] == bob) == "robert"
