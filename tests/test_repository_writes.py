"""Writes in one statement: ``update()`` with no fields, ``update_where``, ``delete_where``,
race-safe ``get_or_create`` and ``upsert``, on SQLite, PostgreSQL and MariaDB.

Rows are read back from a fresh session; statements are counted with ``count_queries``.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from sqlalchemy import ForeignKey, Integer, MetaData, String, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from aegis_shared.database import BaseRepository, DatabaseManager, UnitOfWork
from aegis_shared.errors.exceptions import DuplicateEntityError, EntityNotFoundError
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb


class WriteBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class WAuthor(WriteBase):
    __tablename__ = "wr_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)


class WArticle(WriteBase):
    __tablename__ = "wr_articles"
    __table_args__ = (UniqueConstraint("author_id", "slug"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("wr_authors.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(50))
    title: Mapped[str] = mapped_column(String(100))
    views: Mapped[int] = mapped_column(Integer, default=0)
    author: Mapped[WAuthor] = relationship()


class WBadge(WriteBase):
    """A primary key whose attribute (``code``) and column (``badge_code``) differ."""

    __tablename__ = "wr_badges"
    code: Mapped[int] = mapped_column("badge_code", primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(50))


class AuthorRepository(BaseRepository[WAuthor]):
    pass


class ArticleRepository(BaseRepository[WArticle]):
    pass


class GuardedArticleRepository(BaseRepository[WArticle]):
    filterable: ClassVar[frozenset[str] | None] = frozenset({"slug", "author_id"})
    writable: ClassVar[frozenset[str] | None] = frozenset({"title", "slug", "author_id"})


@pytest.fixture
async def wdb(make_db: MakeDb) -> DatabaseManager:
    manager = await make_db(WriteBase.metadata, pool_size=10)
    async with manager.session() as session:
        # No ids given, so PostgreSQL's sequences stay in step: they come out as 1, 2, ...
        session.add_all([WAuthor(username="jake"), WAuthor(username="ann")])
        await session.flush()
        session.add_all(
            [
                WArticle(author_id=1, slug="a", title="A", views=1),
                WArticle(author_id=1, slug="b", title="B", views=2),
                WArticle(author_id=2, slug="c", title="C", views=3),
            ]
        )
    return manager


async def _articles(db: DatabaseManager) -> dict[int, tuple[str, str, int]]:
    async with db.session() as session:
        rows = (await session.scalars(select(WArticle).order_by(WArticle.id))).all()
        return {row.id: (row.slug, row.title, row.views) for row in rows}


# -- update() with no fields ----------------------------------------------------------------


async def test_update_without_fields_returns_the_entity_unchanged(wdb: DatabaseManager) -> None:
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            article = await ArticleRepository(session).update(1)
            assert (article.id, article.title) == (1, "A")
    assert not [s for s in counter.statements if s.lstrip().upper().startswith("UPDATE")]
    assert (await _articles(wdb))[1] == ("a", "A", 1)


async def test_update_without_fields_of_a_missing_row_is_not_found(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        with pytest.raises(EntityNotFoundError):
            await ArticleRepository(session).update(99)


async def test_update_and_update_where_refuse_a_primary_key_by_its_attribute_name(
    wdb: DatabaseManager,
) -> None:
    async with wdb.session() as session:
        session.add(WBadge(code=7, label="gold"))
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            badges = BaseRepository(session, WBadge)
            with pytest.raises(ValueError, match=r"update\(\) cannot change the primary key code"):
                await badges.update(7, code=8)
            with pytest.raises(ValueError, match=r"update\(\) cannot change the primary key code"):
                await badges.update_where({"label": "gold"}, code=8)
    assert counter.count == 0
    async with wdb.session() as session:
        stored = (await session.execute(select(WBadge.code, WBadge.label))).all()
    assert [tuple(row) for row in stored] == [(7, "gold")]


# -- update_where / delete_where ---------------------------------------------------------------


async def test_update_where_is_one_statement_and_returns_rows_matched(
    wdb: DatabaseManager,
) -> None:
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            changed = await ArticleRepository(session).update_where(
                {"views__ge": 2}, title="Popular"
            )
    assert changed == 2
    assert [s for s in counter.statements if "UPDATE" in s.upper()] != []
    assert [s for s in counter.statements if s.lstrip().upper().startswith("SELECT")] == []
    assert await _articles(wdb) == {
        1: ("a", "A", 1),
        2: ("b", "Popular", 2),
        3: ("c", "Popular", 3),
    }


async def test_update_where_through_a_relationship_path(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        changed = await ArticleRepository(session).update_where(
            {"author__username": "jake"}, title="Jake's"
        )
    assert changed == 2
    assert [t for _, t, _ in (await _articles(wdb)).values()] == ["Jake's", "Jake's", "C"]


async def test_update_where_keeps_loaded_objects_honest(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        repo = ArticleRepository(session)
        loaded = await repo.list()
        await repo.update_where({"slug__in": ["a", "c"]}, title="New")
        assert [a.title for a in loaded] == ["New", "B", "New"]
        # A filter Python cannot evaluate (a relationship path): the loaded ones are re-read.
        await repo.update_where({"author__username": "ann"}, title="Ann's")
        assert [a.title for a in loaded] == ["New", "B", "Ann's"]


async def test_update_where_with_a_sql_expression_and_unchanged_rows(
    wdb: DatabaseManager,
) -> None:
    async with wdb.session() as session:
        repo = ArticleRepository(session)
        loaded = await repo.get_one(1)
        assert await repo.update_where({"author_id": 1}, views=WArticle.views + 10) == 2
        assert loaded.views == 11  # re-read after the UPDATE, not a stale 1
        # Rows matched, not rows whose values changed (MariaDB reports the latter unless
        # asked): setting a value a row already has still counts it.
        assert await repo.update_where({"slug": "c"}, title="C") == 1
    assert [v for _, _, v in (await _articles(wdb)).values()] == [11, 12, 3]


async def test_update_where_matching_nothing_is_zero(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        assert await ArticleRepository(session).update_where({"slug": "zzz"}, title="X") == 0
        # An id no column can hold: nothing matches, and no statement is needed.
        with count_queries(wdb) as counter:
            assert await ArticleRepository(session).update_where({"id": 2**70}, title="X") == 0
        assert counter.count == 0


async def test_delete_where_is_one_statement_and_idempotent(wdb: DatabaseManager) -> None:
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            assert await ArticleRepository(session).delete_where(author__username="jake") == 2
    assert [s for s in counter.statements if s.lstrip().upper().startswith("SELECT")] == []
    assert list(await _articles(wdb)) == [3]
    async with wdb.session() as session:
        assert await ArticleRepository(session).delete_where(author__username="jake") == 0


async def test_delete_where_removes_loaded_objects_from_the_session(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        repo = ArticleRepository(session)
        loaded = await repo.list()
        assert await repo.delete_where(slug="a") == 1
        assert loaded[0] not in session
        assert await repo.get_by_id(1) is None


async def test_concurrent_delete_where_of_the_same_rows(wdb: DatabaseManager) -> None:
    async def remove() -> int:
        async with wdb.session() as session:
            return await ArticleRepository(session).delete_where(author_id=1)

    counts = await asyncio.gather(*(remove() for _ in range(5)))
    assert sorted(counts) == [0, 0, 0, 0, 2]
    assert list(await _articles(wdb)) == [3]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.update_where({}, title="X"), "needs at least one filter"),
        (lambda r: r.update_where({"slug": "a"}), "needs at least one field"),
        (lambda r: r.update_where({"nope": 1}, title="X"), "no column 'nope'"),
        (lambda r: r.update_where({"slug": "a"}, nope="X"), "no column 'nope'"),
        (lambda r: r.update_where({"slug": "a"}, author="X"), "no column 'author'"),
        (lambda r: r.update_where({"slug": "a"}, id=5), "primary key"),
        (lambda r: r.update_where({"slug__bad": "a"}, title="X"), "not a lookup"),
        (lambda r: r.delete_where(), "needs at least one filter"),
        (lambda r: r.delete_where(views__in=3), "takes a list"),
    ],
)
async def test_bad_bulk_writes_are_refused_before_sql(
    wdb: DatabaseManager, call: Any, message: str
) -> None:
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            with pytest.raises(ValueError, match=message):
                await call(ArticleRepository(session))
    assert counter.count == 0


async def test_allow_lists_govern_bulk_writes(wdb: DatabaseManager) -> None:
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            repo = GuardedArticleRepository(session)
            with pytest.raises(ValueError, match="does not allow setting the field 'views'"):
                await repo.update_where({"slug": "a"}, views=10)
            with pytest.raises(ValueError, match="does not allow filter on 'title'"):
                await repo.update_where({"title": "A"}, slug="z")
            with pytest.raises(ValueError, match="does not allow filter on 'views'"):
                await repo.delete_where(views=1)
    assert counter.count == 0
    async with wdb.session() as session:
        assert await GuardedArticleRepository(session).update_where({"slug": "a"}, title="Z") == 1


# -- get_or_create ------------------------------------------------------------------------------


async def test_get_or_create_creates_then_gets(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        author, created = await AuthorRepository(session).get_or_create(username="lee")
        assert created and author.username == "lee" and author.id is not None
        again, created_again = await AuthorRepository(session).get_or_create(username="lee")
        assert again is author and not created_again
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            found, created = await AuthorRepository(session).get_or_create(username="jake")
    assert (found.id, created) == (1, False)
    # The row exists: one SELECT on PostgreSQL. SQLite and MariaDB outside a transaction
    # try the INSERT first (skipped, the name is taken: see get_or_create), then SELECT.
    expected = 1 if wdb.dialect_name == "postgresql" else 2
    assert len([s for s in counter.statements if "SAVEPOINT" not in s.upper()]) == expected


async def test_get_or_create_uses_defaults_only_to_create(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        repo = ArticleRepository(session)
        made, created = await repo.get_or_create(defaults={"title": "New"}, author_id=2, slug="d")
        assert created and (made.title, made.views) == ("New", 0)
        same, created = await repo.get_or_create(defaults={"title": "Other"}, author_id=2, slug="d")
        assert not created and same.title == "New"
    assert (await _articles(wdb))[made.id] == ("d", "New", 0)


async def test_get_or_create_is_race_safe(wdb: DatabaseManager) -> None:
    async def one() -> tuple[int, bool]:
        async with wdb.session() as session:
            author, created = await AuthorRepository(session).get_or_create(username="race")
            return author.id, created

    results = await asyncio.gather(*(one() for _ in range(100)))
    assert len({author_id for author_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    async with wdb.session() as session:
        assert await AuthorRepository(session).count({"username": "race"}) == 1


class WritesUnitOfWork(UnitOfWork):
    authors: AuthorRepository


async def test_get_or_create_is_race_safe_in_units_of_work(wdb: DatabaseManager) -> None:
    async def one() -> tuple[int, bool]:
        async with WritesUnitOfWork() as uow:
            author, created = await uow.authors.get_or_create(username="uow")
            await uow.commit()
            return author.id, created

    results = await asyncio.gather(*(one() for _ in range(100)))
    assert len({author_id for author_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    async with wdb.session() as session:
        assert await AuthorRepository(session).count({"username": "uow"}) == 1


async def test_get_or_create_when_another_unique_key_is_taken(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        # The id is taken by another row than the one looked up: neither found nor made.
        with pytest.raises(DuplicateEntityError, match="another unique field"):
            await ArticleRepository(session).get_or_create(
                defaults={"id": 1, "title": "X"}, author_id=2, slug="zz"
            )
    assert len(await _articles(wdb)) == 3


async def test_get_or_create_bad_input(wdb: DatabaseManager) -> None:
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            repo = GuardedArticleRepository(session)
            with pytest.raises(ValueError, match="needs the columns"):
                await repo.get_or_create()
            with pytest.raises(ValueError, match="no column 'slug__ne'"):
                await ArticleRepository(session).get_or_create(slug__ne="a")
            with pytest.raises(ValueError, match="does not allow setting the field 'views'"):
                await repo.get_or_create(defaults={"views": 5}, slug="q", author_id=1)
    assert counter.count == 0


# -- upsert ---------------------------------------------------------------------------------------


async def test_upsert_inserts_and_updates_in_one_statement(wdb: DatabaseManager) -> None:
    rows = [
        {"author_id": 1, "slug": "a", "title": "A2", "views": 10},
        {"author_id": 2, "slug": "e", "title": "E", "views": 5},
    ]
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            written = await ArticleRepository(session).upsert(
                rows, conflict=["author_id", "slug"], update=["title"]
            )
    assert written == 2
    assert len([s for s in counter.statements if "INSERT" in s.upper()]) == 1
    articles = await _articles(wdb)
    assert articles[1] == ("a", "A2", 1)  # title updated, views left alone
    assert sorted(v for v in articles.values() if v[0] == "e") == [("e", "E", 5)]


async def test_upsert_by_primary_key_updates_every_other_column(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        repo = ArticleRepository(session)
        loaded = await repo.get_one(2)
        await repo.upsert(
            [{"id": 2, "author_id": 2, "slug": "b", "title": "B2", "views": 9}], conflict=["id"]
        )
        assert (loaded.title, loaded.views, loaded.author_id) == ("B2", 9, 2)
    assert (await _articles(wdb))[2] == ("b", "B2", 9)


async def test_upsert_with_no_update_columns_skips_taken_keys(wdb: DatabaseManager) -> None:
    async with wdb.session() as session:
        await ArticleRepository(session).upsert(
            [
                {"author_id": 1, "slug": "a", "title": "ignored"},
                {"author_id": 1, "slug": "f", "title": "F"},
            ],
            conflict=["author_id", "slug"],
            update=[],
        )
    titles = sorted(t for _, t, _ in (await _articles(wdb)).values())
    assert titles == ["A", "B", "C", "F"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conflict": ["title"]}, "not the primary key or a unique constraint"),
        ({"conflict": ["nope"]}, "no column 'nope'"),
        ({"conflict": []}, "needs conflict"),
        ({"conflict": ["id"], "update": ["id"]}, "not conflict columns"),
        ({"conflict": ["id"], "update": ["views"]}, "rows set"),
    ],
)
async def test_bad_upserts_are_refused_before_sql(
    wdb: DatabaseManager, kwargs: dict[str, Any], message: str
) -> None:
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            with pytest.raises(ValueError, match=message):
                await ArticleRepository(session).upsert(
                    [{"id": 1, "author_id": 1, "slug": "a", "title": "x"}], **kwargs
                )
    assert counter.count == 0


async def test_upsert_respects_writable(wdb: DatabaseManager) -> None:
    with count_queries(wdb) as counter:
        async with wdb.session() as session:
            with pytest.raises(ValueError, match="does not allow setting the field 'views'"):
                await GuardedArticleRepository(session).upsert(
                    [{"author_id": 1, "slug": "a", "title": "x", "views": 1}],
                    conflict=["author_id", "slug"],
                )
    assert counter.count == 0


async def test_concurrent_upserts_of_one_key_leave_one_row(wdb: DatabaseManager) -> None:
    async def one(n: int) -> int:
        async with wdb.session() as session:
            return await ArticleRepository(session).upsert(
                [{"author_id": 2, "slug": "hot", "title": f"T{n}", "views": n}],
                conflict=["author_id", "slug"],
            )

    assert await asyncio.gather(*(one(n) for n in range(20))) == [1] * 20
    hot = [v for v in (await _articles(wdb)).values() if v[0] == "hot"]
    assert len(hot) == 1 and hot[0][1] == f"T{hot[0][2]}"  # one writer's whole row
