"""A Conduit-style schema for ``python -m bench queries``: users who follow users, articles
with an author, tags and favorites.

One mapping, on its own metadata (so the other scenarios' set-up never creates these
tables), used by every contender: ours through repositories, the ORM through plain
``AsyncSession`` objects, Advanced Alchemy's repository with ``model_type`` set to it."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime, ForeignKey, Integer, MetaData, String, Table
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from aegis_shared.database import BaseRepository, UnitOfWork


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData()


follows = Table(
    "bench_cd_follows",
    Base.metadata,
    Column("follower_id", ForeignKey("bench_cd_users.id"), primary_key=True),
    Column("followed_id", ForeignKey("bench_cd_users.id"), primary_key=True, index=True),
)
# Each association table has its primary key one way and an index the other way, as a
# Conduit schema would (articles of a tag; favorites of an article).
article_tags = Table(
    "bench_cd_article_tags",
    Base.metadata,
    Column("article_id", ForeignKey("bench_cd_articles.id"), primary_key=True),
    Column("tag_id", ForeignKey("bench_cd_tags.id"), primary_key=True, index=True),
)
favorites = Table(
    "bench_cd_favorites",
    Base.metadata,
    Column("user_id", ForeignKey("bench_cd_users.id"), primary_key=True),
    Column("article_id", ForeignKey("bench_cd_articles.id"), primary_key=True, index=True),
)


class Author(Base):
    __tablename__ = "bench_cd_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    bio: Mapped[str] = mapped_column(String(200))
    image: Mapped[str] = mapped_column(String(200))
    followers: Mapped[list[Author]] = relationship(
        secondary=follows,
        primaryjoin=lambda: Author.id == follows.c.followed_id,
        secondaryjoin=lambda: Author.id == follows.c.follower_id,
        viewonly=True,
    )


class Tag(Base):
    __tablename__ = "bench_cd_tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


class Article(Base):
    if TYPE_CHECKING:
        #: Set by ``annotate={"favorites_count": "favorited_by", "favorited": Linked(...),
        #: "following": Linked(...)}``.
        favorites_count: int
        favorited: bool
        following: bool

    __tablename__ = "bench_cd_articles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    title: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(String(200))
    views: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("bench_cd_users.id"), index=True)
    author: Mapped[Author] = relationship()
    tags: Mapped[list[Tag]] = relationship(secondary=article_tags, order_by=Tag.name)
    favorited_by: Mapped[list[Author]] = relationship(secondary=favorites, viewonly=True)


class ArticleRepository(BaseRepository[Article]):
    pass


class AuthorRepository(BaseRepository[Author]):
    pass


class ConduitUnitOfWork(UnitOfWork):
    articles: ArticleRepository
    authors: AuthorRepository
