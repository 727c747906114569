"""The lookup grammar of ``filters`` and ``exclude``, ``where``, relationship paths, and
``get_by`` / ``get_one_by`` / ``exists(**filters)``, on SQLite, PostgreSQL and MariaDB.

The data is the Conduit model (tests/conduit_models.py). Every form is checked for its
rows, its count, its statements (one per call, counted with ``count_queries``; none for
bad input or for values no row can hold) and, where the fast path takes it, for giving
the same rows as the ORM path (a ``fast_path=False`` manager on the same database).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import Integer, MetaData, String
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aegis_shared.database import BaseRepository, DatabaseManager
from aegis_shared.errors.exceptions import EntityNotFoundError
from aegis_shared.testing import count_queries
from tests.conduit_models import (
    Article,
    ArticleRepository,
    Comment,
    ConduitBase,
    ConduitUser,
    ConduitUserRepository,
    Tag,
)
from tests.conftest import MakeDb

HUGE = 2**70


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    """The Conduit tables, seeded: see :func:`seed`."""
    manager = await make_db(ConduitBase.metadata)
    await seed(manager)
    return manager


@pytest.fixture
async def slow(make_db: MakeDb, db: DatabaseManager) -> DatabaseManager:
    """The same database with the fast path off: the ORM path."""
    return await make_db(fast_path=False, default=False)


async def seed(db: DatabaseManager) -> None:
    """Users jake (1), ann (2), bob (3, no bio); jake and bob follow ann, ann follows jake.

    Articles, by id: 1 "How to train your dragon" (jake; dragons, training; favorited by
    ann and bob), 2 "Dragons 101" (ann; dragons; favorited by jake), 3 "50%_off everything"
    (bob; 50%_off), 4 "Untitled" (ann; no tags).
    """
    async with db.session() as session:
        jake = ConduitUser(username="jake", email="jake@example.com", bio="I work at statefarm")
        ann = ConduitUser(username="ann", email="ann@example.com", bio="Writer")
        bob = ConduitUser(username="bob", email="bob@example.com", bio=None)
        # Set before the first flush: appending to a loaded collection would lazy-load it.
        jake.following = [ann]
        bob.following = [ann]
        ann.following = [jake]
        session.add_all([jake, ann, bob])
        await session.flush()
        dragons, training, sale = Tag(name="dragons"), Tag(name="training"), Tag(name="50%_off")
        articles = [
            Article(
                slug="how-to-train",
                title="How to train your dragon",
                author=jake,
                tags=[dragons, training],
                favorited_by=[ann, bob],
            ),
            Article(
                slug="dragons-101",
                title="Dragons 101",
                author=ann,
                tags=[dragons],
                favorited_by=[jake],
            ),
            Article(slug="sale", title="50%_off everything", author=bob, tags=[sale]),
            Article(slug="untitled", title="Untitled", author=ann),
        ]
        session.add_all(articles)  # inserted in this order: ids 1..4 (checked below)
        await session.flush()
        session.add_all(
            [
                Comment(body="Nice one!", article=articles[0], author=ann),
                Comment(body="nice, but long", article=articles[0], author=bob),
                Comment(body="Meh", article=articles[1], author=bob),
            ]
        )
    async with db.session() as session:
        ids = [a.id for a in await ArticleRepository(session).list()]
        assert ids == [1, 2, 3, 4]


# -- every lookup, path and exclude: rows, count, one statement, fast == ORM ---------------------

CASES: list[tuple[dict[str, Any] | None, dict[str, Any] | None, list[int]]] = [
    # (filters, exclude, ids of the articles expected, in id order)
    ({"slug": "how-to-train"}, None, [1]),
    ({"slug__eq": "sale"}, None, [3]),
    ({"slug__ne": "sale"}, None, [1, 2, 4]),
    ({"id__lt": 3}, None, [1, 2]),
    ({"id__le": 2}, None, [1, 2]),
    ({"id__gt": 2}, None, [3, 4]),
    ({"id__ge": 3}, None, [3, 4]),
    ({"id__in": [1, 3]}, None, [1, 3]),
    ({"id": [2, 4]}, None, [2, 4]),  # a plain list still means IN
    ({"id__not_in": [1, 3]}, None, [2, 4]),
    ({"id__between": (2, 3)}, None, [2, 3]),
    ({"id__between": [3, 2]}, None, []),
    ({"author__bio__isnull": True}, None, [3]),
    ({"author__bio": None}, None, [3]),  # plain None still means IS NULL
    ({"author__bio__isnull": False}, None, [1, 2, 4]),
    ({"author__bio__eq": None}, None, [3]),
    ({"author__bio__ne": None}, None, [1, 2, 4]),
    # text: case-sensitive and insensitive, literal wildcards
    ({"title__contains": "dragon"}, None, [1]),
    ({"title__icontains": "DRAGON"}, None, [1, 2]),
    ({"title__startswith": "How"}, None, [1]),
    ({"title__startswith": "how"}, None, []),
    ({"title__istartswith": "how"}, None, [1]),
    ({"title__endswith": "101"}, None, [2]),
    ({"title__endswith": "DRAGON"}, None, []),
    ({"title__iendswith": "DRAGON"}, None, [1]),
    ({"title__contains": "%"}, None, [3]),
    ({"title__contains": "_"}, None, [3]),
    ({"title__contains": "0%_o"}, None, [3]),
    ({"title__icontains": "%_OFF"}, None, [3]),
    ({"title__contains": ""}, None, [1, 2, 3, 4]),
    ({"title__like": "Dragons%"}, None, [2]),
    ({"title__like": "dragons%"}, None, []),
    ({"title__like": "_ragons 1_1"}, None, [2]),
    ({"title__like": "50/%/_off%"}, None, [3]),
    ({"title__like": "%[a]%"}, None, []),  # GLOB's brackets are literal, as in LIKE
    ({"title__ilike": "dragons%"}, None, [2]),
    # relationship paths: to-one, to-many, many-to-many, self-referential, nested
    ({"author__username": "jake"}, None, [1]),
    ({"author__username__in": ["ann", "bob"]}, None, [2, 3, 4]),
    ({"tags__name": "dragons"}, None, [1, 2]),
    ({"tags__name__in": ["dragons", "training"]}, None, [1, 2]),  # 1 has both: once
    ({"tags__name__isnull": False}, None, [1, 2, 3]),
    ({"favorited_by__id": 1}, None, [2]),
    ({"favorited_by__username__in": ["ann", "bob"]}, None, [1]),
    ({"comments__body__icontains": "nice"}, None, [1]),
    ({"author__followers__username": "bob"}, None, [2, 4]),
    ({"author__following__username": "ann"}, None, [1, 3]),
    ({"tags__name": "dragons", "author__username": "ann"}, None, [2]),
    # exclude: the same grammar, leaving out the rows that match all of it
    (None, {"author__username": "ann"}, [1, 3]),
    (None, {"tags__name": "dragons"}, [3, 4]),
    ({"tags__name": "dragons"}, {"author__username": "jake"}, [2]),
    (None, {"author__username": "ann", "tags__name": "dragons"}, [1, 3, 4]),
    (None, {"title__icontains": "dragon"}, [3, 4]),
    (None, {"id__in": [1, 2, 3]}, [4]),
]


def case_id(case: tuple[Any, ...]) -> str:
    filters, exclude, _ = case
    return repr(filters) + (f" exclude={exclude!r}" if exclude else "")


def slugs_of(ids: list[int]) -> list[str]:
    return [["how-to-train", "dragons-101", "sale", "untitled"][i - 1] for i in ids]


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
async def test_lookups_paths_and_exclude(
    db: DatabaseManager, slow: DatabaseManager, case: tuple[Any, ...]
) -> None:
    filters, exclude, expected = case
    for manager in (db, slow):
        async with manager.session() as session:
            repo = ArticleRepository(session)
            with count_queries(manager) as counter:
                rows = await repo.list(filters=filters, exclude=exclude)
            assert [a.slug for a in rows] == slugs_of(expected)
            assert counter.count == 1
            if manager is db:
                # The fast path served it: no transaction was opened.
                assert not session.in_transaction()
            with count_queries(manager) as counter:
                total = await repo.count(filters, exclude=exclude)
                found = await repo.exists(filters=filters, exclude=exclude)
            assert (total, found) == (len(expected), bool(expected))
            assert counter.count == 2
            page = await repo.paginate(1, 2, filters=filters, exclude=exclude)
            assert [a.slug for a in page.items] == slugs_of(expected[:2])
            assert page.total == len(expected)


async def test_exclude_keeps_rows_whose_value_is_null(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = ConduitUserRepository(session)
        kept = await repo.list(exclude={"bio": "Writer"})
        assert [u.username for u in kept] == ["jake", "bob"]  # bob has no bio: kept
        assert await repo.count(exclude={"bio__icontains": "STATE"}) == 2
        assert [u.username for u in await repo.list(exclude={"bio__isnull": True})] == [
            "jake",
            "ann",
        ]


async def test_where_takes_sqlalchemy_expressions(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = ArticleRepository(session)
        with count_queries(db) as counter:
            rows = await repo.list(
                filters={"tags__name": "dragons"}, where=[Article.author_id == Article.id]
            )
        assert [a.slug for a in rows] == ["how-to-train", "dragons-101"]
        assert counter.count == 1
        assert await repo.count(where=[Article.title.startswith("D")]) == 1
        assert await repo.exists(where=[Article.id > 4]) is False


async def test_a_long_in_list_takes_the_orm_path_with_the_same_rows(
    db: DatabaseManager, slow: DatabaseManager
) -> None:
    ids = list(range(2, 60))
    for manager in (db, slow):
        async with manager.session() as session:
            repo = ArticleRepository(session)
            with count_queries(manager) as counter:
                rows = await repo.list(filters={"id__in": ids, "tags__name__not_in": ["x"]})
            assert [a.id for a in rows] == [2, 3]
            assert counter.count == 1


# -- bad input: ValueError naming what is allowed, before any SQL --------------------------------

BAD: dict[str, tuple[Callable[[ArticleRepository], Awaitable[Any]], str]] = {
    "between not a pair": (lambda r: r.list(filters={"id__between": 3}), "takes a pair"),
    "between of one": (lambda r: r.list(filters={"id__between": (1,)}), "takes a pair"),
    "between with None": (lambda r: r.count({"id__between": (1, None)}), "not None"),
    "in not a list": (lambda r: r.list(filters={"slug__in": "sale"}), "takes a list"),
    "in a number": (lambda r: r.count({"id__in": 5}), "takes a list of values"),
    "in holding None": (lambda r: r.list(filters={"id__in": [1, None]}), "use __isnull"),
    "isnull not a bool": (lambda r: r.list(filters={"slug__isnull": 1}), "True or False"),
    "isnull a string": (lambda r: r.exists(slug__isnull="yes"), "True or False"),
    "lt None": (lambda r: r.list(filters={"id__lt": None}), "use __isnull=True"),
    "eq a list": (lambda r: r.list(filters={"id__eq": [1, 2]}), "use __in"),
    "contains a number": (lambda r: r.list(filters={"title__contains": 5}), "takes text"),
    "like ending in escape": (lambda r: r.list(filters={"title__like": "50/"}), "escape"),
    "text lookup on a number": (
        lambda r: r.list(filters={"id__contains": "1"}),
        "id__contains: __contains matches text, and Article.id is not a text column",
    ),
    "text lookup through a path": (
        lambda r: r.count({"favorited_by__id__like": "1%"}),
        "ConduitUser.id is not a text column",
    ),
    "unknown lookup": (
        lambda r: r.list(filters={"title__icontain": "x"}),
        "'icontain' after the column Article.title is not a lookup",
    ),
    "unknown column": (lambda r: r.list(filters={"nope": 1}), "Article has no column 'nope'"),
    "unknown column on a path": (
        lambda r: r.list(filters={"author__nope": 1}),
        "ConduitUser has no column 'nope' to filter on (in 'author__nope'); known: bio,",
    ),
    "unknown relationship": (
        lambda r: r.list(filters={"writer__username": 1}),
        "Article has no relationship 'writer' to filter on through; relationships: author,",
    ),
    "a relationship without a column": (
        lambda r: r.list(filters={"tags": 1}),
        "Article.tags is a relationship: filter on one of its columns, for example tags__id",
    ),
    "bad exclude": (lambda r: r.list(exclude={"nope__in": [1]}), "no column 'nope'"),
    "exclude not a mapping": (lambda r: r.count(exclude=["slug"]), "exclude must be a mapping"),
    "filters not a mapping": (lambda r: r.list(filters="slug"), "filters must be a mapping"),
    "name not a string": (lambda r: r.list(filters={5: 1}), "names fields with strings"),
    "where a string": (lambda r: r.list(where=["1=1"]), "where takes SQL expressions"),
    "where not a list": (lambda r: r.count(where="1=1"), "where takes a list"),
    "paginate": (lambda r: r.paginate(filters={"id__between": 1}), "takes a pair"),
    "get_by": (lambda r: r.get_by(tags__name__in="dragons"), "takes a list"),
    "get_by nothing": (lambda r: r.get_by(), "needs at least one filter"),
    "get_one_by": (lambda r: r.get_one_by(nope=1), "no column 'nope'"),
    "exists": (lambda r: r.exists(1, author__nope=1), "no column 'nope'"),
    "exists id shape": (lambda r: r.exists((1, 2)), "primary key of 1 column"),
}


@pytest.mark.parametrize("call,message", BAD.values(), ids=BAD.keys())
async def test_bad_input_raises_before_any_sql(
    db: DatabaseManager, call: Callable[[ArticleRepository], Awaitable[Any]], message: str
) -> None:
    async with db.session() as session:
        with count_queries(db) as counter, pytest.raises(ValueError) as caught:
            await call(ArticleRepository(session))
        assert counter.statements == []
    assert message in str(caught.value)


async def test_lookup_errors_list_the_lookups(db: DatabaseManager) -> None:
    async with db.session() as session:
        with pytest.raises(ValueError) as caught:
            await ArticleRepository(session).list(filters={"title__regex": "x"})
    assert str(caught.value).endswith(
        "lookups: eq, ne, lt, le, gt, ge, in, not_in, isnull, like, ilike, contains, "
        "icontains, startswith, istartswith, endswith, iendswith, between"
    )


# -- integers no row can hold: no statement where nothing can match ------------------------------

IMPOSSIBLE: list[tuple[dict[str, Any] | None, dict[str, Any] | None, list[int] | None]] = [
    # (filters, exclude, expected ids; None: no statement at all)
    ({"id": HUGE}, None, None),
    ({"id__in": [HUGE, -HUGE]}, None, None),
    ({"id__gt": HUGE}, None, None),
    ({"id__lt": -HUGE}, None, None),
    ({"id__between": (HUGE, HUGE + 1)}, None, None),
    ({"favorited_by__id": HUGE}, None, None),
    ({"id__in": []}, None, None),
    (None, {"id__not_in": []}, None),  # excludes every row
    ({"id__in": [1, HUGE]}, None, [1]),
    ({"id__ne": HUGE}, None, [1, 2, 3, 4]),
    ({"id__lt": HUGE}, None, [1, 2, 3, 4]),
    ({"id__ge": -HUGE}, None, [1, 2, 3, 4]),
    ({"id__not_in": [HUGE, 2]}, None, [1, 3, 4]),
    ({"id__not_in": [HUGE]}, None, [1, 2, 3, 4]),
    ({"id__not_in": []}, None, [1, 2, 3, 4]),
    ({"id__between": (-HUGE, 2)}, None, [1, 2]),
    ({"favorited_by__id__in": [HUGE, 1]}, None, [2]),
    (None, {"id": HUGE}, [1, 2, 3, 4]),
    (None, {"id": HUGE, "slug": "sale"}, [1, 2, 3, 4]),
    (None, {"id__in": [HUGE, 3]}, [1, 2, 4]),
]


@pytest.mark.parametrize("case", IMPOSSIBLE, ids=[case_id(c) for c in IMPOSSIBLE])
async def test_integers_out_of_range(db: DatabaseManager, case: tuple[Any, ...]) -> None:
    filters, exclude, expected = case
    async with db.session() as session:
        repo = ArticleRepository(session)
        with count_queries(db) as counter:
            rows = await repo.list(filters=filters, exclude=exclude)
            total = await repo.count(filters, exclude=exclude)
        assert [a.id for a in rows] == (expected or [])
        assert total == len(expected or [])
        assert counter.count == (0 if expected is None else 2)


# -- the allow-list names fields and paths; any lookup on an allowed field -----------------------


class PublicArticles(BaseRepository[Article]):
    filterable = frozenset({"title", "author__username", "tags__name"})


async def test_filterable_allows_fields_and_paths_with_any_lookup(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = PublicArticles(session)
        assert await repo.count({"title__icontains": "dragon"}) == 2
        assert await repo.count({"author__username__in": ["ann"]}) == 2
        assert await repo.count(exclude={"tags__name": "dragons"}) == 2
        refused = {
            "slug": "filter on 'slug'",
            "author__email__icontains": "filter on 'author__email'",
            "author__id": "filter on 'author__id'",
            "nope__x": "filter on 'nope__x'",
        }
        for name, words in refused.items():
            for call in (
                lambda r, n=name: r.list(filters={n: "x"}),
                lambda r, n=name: r.count(exclude={n: "x"}),
                lambda r, n=name: r.get_by(**{n: "x"}),
            ):
                with count_queries(db) as counter, pytest.raises(ValueError) as caught:
                    await call(repo)
                assert counter.statements == []
                assert str(caught.value) == (
                    f"PublicArticles does not allow {words}; "
                    "allowed: author__username, tags__name, title"
                )


@pytest.mark.parametrize("names", [{"title__icontains"}, {"nope__username"}, {"slug__x"}])
def test_filterable_paths_are_checked_when_the_class_is_made(names: set[str]) -> None:
    with pytest.raises(TypeError, match="not a mapped column of Article"):

        class Bad(BaseRepository[Article]):
            filterable = frozenset(names)


# -- get_by, get_one_by, exists(**filters) ---------------------------------------------------------


async def test_get_by_and_get_one_by(db: DatabaseManager, slow: DatabaseManager) -> None:
    for manager in (db, slow):
        async with manager.session() as session:
            repo = ArticleRepository(session)
            with count_queries(manager) as counter:
                article = await repo.get_by(slug="how-to-train")
            assert article is not None and article.title == "How to train your dragon"
            assert counter.count == 1
            assert (manager is db) == (not session.in_transaction())
            assert await repo.get_one_by(slug="how-to-train") is article
            assert await repo.get_by(slug="nope") is None
            assert (await repo.get_one_by(author__username="bob", tags__name="50%_off")).id == 3
            assert await repo.get_by(id=HUGE) is None
            with count_queries(manager) as counter, pytest.raises(EntityNotFoundError) as caught:
                await repo.get_one_by(slug="how-to-train-x")
            assert counter.count == 1
            assert str(caught.value) == "Article with slug 'how-to-train-x' not found"
            assert caught.value.filters == {"slug": "how-to-train-x"}
            assert caught.value.entity_id is None
            with pytest.raises(EntityNotFoundError) as caught:
                await repo.get_one_by(author__username="jake", title__icontains="x" * 100)
            assert str(caught.value) == (
                f"Article with author__username 'jake' and title__icontains "
                f"'{'x' * 56}... not found"
            )
            with count_queries(manager) as counter, pytest.raises(ValueError) as multiple:
                await repo.get_by(author__username="ann")
            assert counter.count == 1
            assert str(multiple.value) == (
                "More than one Article matches author__username='ann'; get_by() needs "
                "filters that match at most one row (a unique field), or use list()"
            )


def test_entity_not_found_by_id_reads_as_before() -> None:
    error = EntityNotFoundError("User", 42)
    assert str(error) == "User with id 42 not found"
    assert (error.entity, error.entity_id, error.filters) == ("User", 42, {})


async def test_exists_by_filters(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = ArticleRepository(session)
        checks = [
            (repo.exists(slug="sale"), True),
            (repo.exists(tags__name="nope"), False),
            (repo.exists(favorited_by__username="jake"), True),
            (repo.exists(1), True),
            (repo.exists(5), False),
            (repo.exists(1, slug="sale"), False),
            (repo.exists(3, filters={"author__username": "bob"}), True),
            (repo.exists(filters={"tags__name": "dragons"}, author__username="bob"), False),
            (repo.exists(title__icontains="DRAGON", exclude={"author__username": "jake"}), True),
        ]
        for call, expected in checks:
            with count_queries(db) as counter:
                assert await call is expected
            assert counter.count == 1
        assert not session.in_transaction(), "all on the fast path"
        with count_queries(db) as counter:
            assert await repo.exists(HUGE) is False
        assert counter.count == 0
        with pytest.raises(ValueError, match="same filter in filters= and as a keyword"):
            await repo.exists(filters={"slug": "a"}, slug="b")


class EnrollBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData()


class Enrollment(EnrollBase):
    """A composite primary key (user, course)."""

    __tablename__ = "lk_enrollments"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    course_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    grade: Mapped[str] = mapped_column(String(2), default="")


class EnrollmentRepository(BaseRepository[Enrollment]):
    pass


async def test_exists_with_a_composite_primary_key(make_db: MakeDb) -> None:
    db = await make_db(EnrollBase.metadata)
    async with db.session() as session:
        repo = EnrollmentRepository(session)
        await repo.create_many([{"user_id": 1, "course_id": 2, "grade": "A"}])
    async with db.session() as session:
        repo = EnrollmentRepository(session)
        with count_queries(db) as counter:
            assert await repo.exists((1, 2)) is True
            assert await repo.exists((2, 1)) is False
            assert await repo.exists((1, 2), grade="B") is False
            assert await repo.exists((1, 2), grade__in=["A", "B"]) is True
        assert counter.count == 4
        with count_queries(db) as counter:
            assert await repo.exists((HUGE, 2)) is False
        assert counter.count == 0
        for wrong in [1, (1,), (1, 2, 3)]:
            with pytest.raises(ValueError, match=r"primary key of 2 column\(s\) \(user_id, "):
                await repo.exists(wrong)
        assert (await repo.get_by_id((1, 2))) is not None


# -- plans: the fast path keys them by path and lookup ---------------------------------------------


async def test_same_shape_different_lookup_or_path_gives_different_rows(
    db: DatabaseManager,
) -> None:
    """A plan compiled for one lookup must never serve another of the same field."""
    async with db.session() as session:
        repo = ArticleRepository(session)
        assert [a.id for a in await repo.list(filters={"id__lt": 3})] == [1, 2]
        assert [a.id for a in await repo.list(filters={"id__gt": 3})] == [4]
        assert [a.id for a in await repo.list(filters={"author__id": 2})] == [2, 4]
        assert [a.id for a in await repo.list(filters={"favorited_by__id": 2})] == [1]
        assert [a.id for a in await repo.list(exclude={"favorited_by__id": 2})] == [2, 3, 4]
        assert not session.in_transaction()


async def test_lookups_on_a_session_with_pending_changes_see_them(db: DatabaseManager) -> None:
    """Not idle: the ORM path, inside the transaction, after autoflush."""
    async with db.session() as session:
        repo = ArticleRepository(session)
        article = await repo.get_one_by(slug="untitled")
        article.title = "Dragons again"
        assert [a.id for a in await repo.list(filters={"title__startswith": "Dragons"})] == [
            2,
            4,
        ]
        await session.rollback()


async def test_paths_through_a_session_that_loaded_related_rows(db: DatabaseManager) -> None:
    async with db.session() as session:
        repo = ArticleRepository(session)
        tag = await session.get(Tag, 1)
        assert tag is not None
        rows = await repo.list(filters={"tags__id": tag.id}, order_by="-id")
        assert [a.id for a in rows] == [2, 1]
