"""The RealWorld "Conduit" data model, for tests of rich queries: users who follow users,
articles with an author, tags and favorites, and comments.

Its own metadata, so only the tests that ask for these tables create them:
``await make_db(ConduitBase.metadata)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Column, ForeignKey, MetaData, String, Table, Text
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from aegis_shared.database import BaseRepository
from aegis_shared.models import NAMING_CONVENTION, IntegerIdMixin, TimestampMixin


class ConduitBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


follows = Table(
    "cd_follows",
    ConduitBase.metadata,
    Column("follower_id", ForeignKey("cd_users.id", ondelete="CASCADE"), primary_key=True),
    Column("followed_id", ForeignKey("cd_users.id", ondelete="CASCADE"), primary_key=True),
)

article_tags = Table(
    "cd_article_tags",
    ConduitBase.metadata,
    Column("article_id", ForeignKey("cd_articles.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("cd_tags.id", ondelete="CASCADE"), primary_key=True),
)

favorites = Table(
    "cd_favorites",
    ConduitBase.metadata,
    Column("user_id", ForeignKey("cd_users.id", ondelete="CASCADE"), primary_key=True),
    Column("article_id", ForeignKey("cd_articles.id", ondelete="CASCADE"), primary_key=True),
)


class ConduitUser(IntegerIdMixin, TimestampMixin, ConduitBase):
    __tablename__ = "cd_users"

    username: Mapped[str] = mapped_column(String(100), unique=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    bio: Mapped[str | None] = mapped_column(Text, nullable=True)
    image: Mapped[str | None] = mapped_column(String(500), nullable=True)
    following: Mapped[list[ConduitUser]] = relationship(
        secondary=follows,
        primaryjoin=lambda: ConduitUser.id == follows.c.follower_id,
        secondaryjoin=lambda: ConduitUser.id == follows.c.followed_id,
        back_populates="followers",
    )
    followers: Mapped[list[ConduitUser]] = relationship(
        secondary=follows,
        primaryjoin=lambda: ConduitUser.id == follows.c.followed_id,
        secondaryjoin=lambda: ConduitUser.id == follows.c.follower_id,
        back_populates="following",
    )
    articles: Mapped[list[Article]] = relationship(back_populates="author")


class Tag(IntegerIdMixin, ConduitBase):
    __tablename__ = "cd_tags"

    name: Mapped[str] = mapped_column(String(100), unique=True)
    articles: Mapped[list[Article]] = relationship(secondary=article_tags, back_populates="tags")


class Article(IntegerIdMixin, TimestampMixin, ConduitBase):
    __tablename__ = "cd_articles"

    slug: Mapped[str] = mapped_column(String(200), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(500), default="")
    body: Mapped[str] = mapped_column(Text, default="")
    author_id: Mapped[int] = mapped_column(ForeignKey("cd_users.id", ondelete="CASCADE"))
    author: Mapped[ConduitUser] = relationship(back_populates="articles")
    tags: Mapped[list[Tag]] = relationship(secondary=article_tags, back_populates="articles")
    favorited_by: Mapped[list[ConduitUser]] = relationship(secondary=favorites)
    comments: Mapped[list[Comment]] = relationship(
        back_populates="article", cascade="all, delete-orphan"
    )

    if TYPE_CHECKING:
        # Set by list(annotate={"favorites_count": "favorited_by", "favorited":
        # Linked(...), "following": Linked(...)}); declared here for type checkers only,
        # where SQLAlchemy does not look for mapped attributes.
        favorites_count: int
        favorited: bool
        following: bool


class Comment(IntegerIdMixin, TimestampMixin, ConduitBase):
    __tablename__ = "cd_comments"

    body: Mapped[str] = mapped_column(Text)
    article_id: Mapped[int] = mapped_column(ForeignKey("cd_articles.id", ondelete="CASCADE"))
    author_id: Mapped[int] = mapped_column(ForeignKey("cd_users.id", ondelete="CASCADE"))
    article: Mapped[Article] = relationship(back_populates="comments")
    author: Mapped[ConduitUser] = relationship()


class ConduitUserRepository(BaseRepository[ConduitUser]):
    pass


class ArticleRepository(BaseRepository[Article]):
    pass


class TagRepository(BaseRepository[Tag]):
    pass


class CommentRepository(BaseRepository[Comment]):
    pass
