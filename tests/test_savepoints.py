"""Savepoints that behave (issue 11, item 8), on every backend.

* ``TransactionManager.savepoint()`` never commits; inside a unit of work even the
  outermost ``transaction()`` is a SAVEPOINT, and the unit of work's ``commit()`` saves.
* After a SAVEPOINT rolls back, the objects it touched are readable from async code
  (reloaded, not left expired), and an object added inside it is transient and readable.

Outcomes are checked from a second session after the block: "committed" means a new
connection sees the row.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, String, Table, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from aegis_shared.database import (
    BaseRepository,
    DatabaseManager,
    TransactionManager,
    UnitOfWork,
)
from aegis_shared.errors.exceptions import DuplicateEntityError, UnitOfWorkStateError
from aegis_shared.testing import count_queries


class Base(DeclarativeBase):
    pass


article_tags = Table(
    "sp_article_tags",
    Base.metadata,
    Column("article_id", ForeignKey("sp_articles.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("sp_tags.id", ondelete="CASCADE"), primary_key=True),
)


class Author(Base):
    __tablename__ = "sp_authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    articles: Mapped[list[Article]] = relationship(back_populates="author")


class Tag(Base):
    __tablename__ = "sp_tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


class Article(Base):
    __tablename__ = "sp_articles"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    title: Mapped[str] = mapped_column(String(100))
    views: Mapped[int] = mapped_column(Integer, default=0)
    author_id: Mapped[int] = mapped_column(ForeignKey("sp_authors.id"))
    author: Mapped[Author] = relationship(back_populates="articles")
    tags: Mapped[list[Tag]] = relationship(secondary=article_tags, order_by=Tag.id)


class Bookmark(Base):
    """A composite primary key: its reload after a rollback matches on both columns."""

    __tablename__ = "sp_bookmarks"

    author_id: Mapped[int] = mapped_column(ForeignKey("sp_authors.id"), primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("sp_articles.id"), primary_key=True)
    note: Mapped[str] = mapped_column(String(100))


class ArticleRepository(BaseRepository[Article]):
    pass


class AuthorRepository(BaseRepository[Author]):
    pass


class BlogUnitOfWork(UnitOfWork):
    articles: ArticleRepository
    authors: AuthorRepository


class Boom(Exception):
    """An application error raised on purpose inside a block."""


@pytest.fixture
async def blog(make_db: Any) -> DatabaseManager:
    """A default manager with the blog tables and one author ``jake`` with one article."""
    db: DatabaseManager = await make_db(Base.metadata)
    async with db.session() as session:
        jake = Author(username="jake")
        session.add(jake)
        session.add(Article(slug="how-to-train", title="How to train", author=jake))
    return db


async def slugs(db: DatabaseManager) -> list[str]:
    """The slugs of all articles as a fresh session sees them."""
    async with db.session() as session:
        return list((await session.scalars(select(Article.slug).order_by(Article.slug))).all())


def select_verbs(statements: list[str]) -> list[str]:
    return [s.split()[0].upper() for s in statements if s.split()[0].upper() == "SELECT"]


# -- the slug-collision retry ---------------------------------------------------------------


async def test_slug_collision_retried_in_a_savepoint_then_committed(blog: DatabaseManager) -> None:
    async with BlogUnitOfWork() as uow:
        jake = (await uow.session.scalars(select(Author).where(Author.username == "jake"))).one()
        article: Article | None = None
        attempts = 0
        for candidate in ("how-to-train", "how-to-train-2"):
            attempts += 1
            try:
                async with uow.savepoint():
                    if article is None:
                        article = Article(slug=candidate, title="How to train your dragon")
                        article.author = jake  # the backref changes jake too
                    else:
                        article.slug = candidate  # the same object, transient again
                    await uow.articles.create(article)
                break
            except DuplicateEntityError:
                # Before the fix the author, changed by the article's backref and expired
                # by the rollback, raised RelationshipNotLoadedError on the next read.
                assert jake.username == "jake"
                assert article is not None
                assert article.title == "How to train your dragon"
                assert article.author is jake
                assert inspect(article).transient
        assert attempts == 2
        assert article is not None
        assert article.id is not None
        assert jake.username == "jake"
        await uow.commit()
    assert await slugs(blog) == ["how-to-train", "how-to-train-2"]
    async with blog.session() as session:
        stored = (
            await session.scalars(select(Article).where(Article.slug == "how-to-train-2"))
        ).one()
        assert stored.title == "How to train your dragon"
        assert stored.author_id == jake.id


async def test_objects_changed_in_a_rolled_back_savepoint_hold_their_earlier_state(
    blog: DatabaseManager,
) -> None:
    async with BlogUnitOfWork() as uow:
        session = uow.session
        jake = (await session.scalars(select(Author))).one()
        for i in range(3):
            session.add(Article(slug=f"extra-{i}", title=f"Extra {i}", author=jake))
        session.add(Tag(name="dragons"))
        await session.flush()
        statement = select(Article).order_by(Article.id).options(selectinload(Article.tags))
        articles = list((await session.scalars(statement)).all())
        assert len(articles) == 4
        dragons = (await session.scalars(select(Tag))).one()
        articles[0].tags.append(dragons)
        await session.flush()

        with count_queries(blog) as counter, pytest.raises(Boom):
            async with uow.savepoint():
                for article in articles:
                    article.title = "changed"
                    article.views = 99
                articles[0].tags.clear()
                await session.flush()
                raise Boom
        # One SELECT reloads the four articles, one reloads the tags they had loaded.
        assert select_verbs(counter.statements) == ["SELECT", "SELECT"]
        assert [a.title for a in articles] == ["How to train", "Extra 0", "Extra 1", "Extra 2"]
        assert [a.views for a in articles] == [0, 0, 0, 0]
        assert [t.name for t in articles[0].tags] == ["dragons"]
        assert articles[1].tags == []
        await uow.commit()
    async with blog.session() as session:
        titles = (await session.scalars(select(Article.title).order_by(Article.id))).all()
        assert list(titles) == ["How to train", "Extra 0", "Extra 1", "Extra 2"]


async def test_objects_with_a_composite_key_are_reloaded_in_one_statement(
    blog: DatabaseManager,
) -> None:
    async with BlogUnitOfWork() as uow:
        session = uow.session
        jake = (await session.scalars(select(Author))).one()
        first = (await session.scalars(select(Article))).one()
        second = await uow.articles.create(Article(slug="second", title="S", author=jake))
        marks = [
            Bookmark(author_id=jake.id, article_id=first.id, note="read later"),
            Bookmark(author_id=jake.id, article_id=second.id, note="great"),
        ]
        session.add_all(marks)
        await session.flush()
        with count_queries(blog) as counter, pytest.raises(Boom):
            async with uow.savepoint():
                for mark in marks:
                    mark.note = "changed"
                await session.flush()
                raise Boom
        assert select_verbs(counter.statements) == ["SELECT"]
        assert [m.note for m in marks] == ["read later", "great"]


async def test_object_deleted_in_a_rolled_back_savepoint_is_back_and_readable(
    blog: DatabaseManager,
) -> None:
    async with BlogUnitOfWork() as uow:
        article = (await uow.session.scalars(select(Article))).one()
        with pytest.raises(Boom):
            async with uow.savepoint():
                await uow.session.delete(article)
                await uow.session.flush()
                raise Boom
        assert inspect(article).persistent
        assert article.slug == "how-to-train"
        await uow.commit()
    assert await slugs(blog) == ["how-to-train"]


async def test_object_added_in_a_rolled_back_savepoint_is_transient_and_can_be_added_again(
    blog: DatabaseManager,
) -> None:
    async with BlogUnitOfWork() as uow:
        jake = (await uow.session.scalars(select(Author))).one()
        article = Article(slug="fresh", title="Fresh")
        with pytest.raises(Boom):
            async with uow.savepoint():
                article.author = jake
                await uow.articles.create(article)  # the INSERT succeeds ...
                raise Boom  # ... and is undone
        assert inspect(article).transient
        assert (article.slug, article.title, article.author.username) == ("fresh", "Fresh", "jake")
        assert article.tags == []  # no lazy load attempted for a transient object
        assert await slugs(blog) == ["how-to-train"]
        async with uow.savepoint():
            await uow.articles.create(article)
        await uow.commit()
    assert await slugs(blog) == ["fresh", "how-to-train"]


async def test_objects_are_reloaded_on_a_plain_async_session_too(blog: DatabaseManager) -> None:
    # Without the library's session class an expired attribute raises MissingGreenlet.
    async with AsyncSession(blog.engine, expire_on_commit=False) as session:
        article = (await session.scalars(select(Article))).one()
        with pytest.raises(Boom):
            async with TransactionManager(session).savepoint():
                article.title = "changed"
                await session.flush()
                raise Boom
        assert article.title == "How to train"


# -- who commits ----------------------------------------------------------------------------


async def test_savepoint_never_commits_even_outermost(blog: DatabaseManager) -> None:
    calls: list[str] = []
    async with blog.session_factory() as session:
        tm = TransactionManager(session)
        async with tm.savepoint() as inside:
            assert inside is session
            assert tm.depth == 1
            jake = (await session.scalars(select(Author))).one()
            session.add(Article(slug="pending", title="Pending", author=jake))
            tm.on_commit(lambda: calls.append("committed"))
        assert tm.depth == 0
        assert session.in_transaction()
        assert await slugs(blog) == ["how-to-train"]
        assert calls == []
        await session.commit()  # the opener's commit, and only then the callback
        assert calls == ["committed"]
    assert await slugs(blog) == ["how-to-train", "pending"]


async def test_transaction_inside_a_unit_of_work_does_not_commit_its_transaction(
    blog: DatabaseManager,
) -> None:
    calls: list[str] = []
    async with BlogUnitOfWork() as uow:
        jake = (await uow.session.scalars(select(Author))).one()
        tm = TransactionManager(uow.session)
        async with tm.transaction():
            await uow.articles.create(Article(slug="in-block", title="T", author=jake))
            tm.on_commit(lambda: calls.append("committed"))
        assert uow.session.in_transaction()
        assert await slugs(blog) == ["how-to-train"]
        assert calls == []
        await uow.commit()
        assert calls == ["committed"]
    assert await slugs(blog) == ["how-to-train", "in-block"]


async def test_transaction_inside_a_unit_of_work_rolls_back_only_its_block(
    blog: DatabaseManager,
) -> None:
    async with BlogUnitOfWork() as uow:
        jake = (await uow.session.scalars(select(Author))).one()
        await uow.articles.create(Article(slug="before", title="B", author=jake))
        with pytest.raises(Boom):
            async with TransactionManager(uow.session).transaction():
                await uow.articles.create(Article(slug="inside", title="I", author=jake))
                raise Boom
        await uow.commit()
    assert await slugs(blog) == ["before", "how-to-train"]


async def test_a_unit_of_work_left_without_commit_undoes_its_transaction_blocks(
    blog: DatabaseManager,
) -> None:
    async with BlogUnitOfWork() as uow:
        jake = (await uow.session.scalars(select(Author))).one()
        async with TransactionManager(uow.session).transaction():
            await uow.articles.create(Article(slug="never", title="N", author=jake))
    assert await slugs(blog) == ["how-to-train"]


async def test_commit_or_rollback_inside_a_block_is_refused(blog: DatabaseManager) -> None:
    async with BlogUnitOfWork() as uow:
        jake = (await uow.session.scalars(select(Author))).one()
        async with uow.savepoint():
            await uow.articles.create(Article(slug="kept", title="K", author=jake))
            with pytest.raises(UnitOfWorkStateError, match=r"commit\(\) was called inside"):
                await uow.commit()
            with pytest.raises(UnitOfWorkStateError, match=r"rollback\(\) was called inside"):
                await uow.rollback()
        assert await slugs(blog) == ["how-to-train"]
        await uow.commit()
    assert await slugs(blog) == ["how-to-train", "kept"]


async def test_db_session_transaction_still_commits_at_the_end_of_the_block(
    blog: DatabaseManager,
) -> None:
    # Seed 001's example: a session nobody claimed, so the outermost block commits.
    async with blog.session() as session:
        jake = (await session.scalars(select(Author))).one()
        async with TransactionManager(session).transaction():
            session.add(Article(slug="seed", title="S", author=jake))
        assert not session.in_transaction()
        assert await slugs(blog) == ["how-to-train", "seed"]
