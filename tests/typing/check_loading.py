"""Static proof (``mypy --strict``) that ``load=`` and ``annotate=`` keep the reads' types:
``list`` still returns the model, loaded relationships have their mapped types, and a
count declared under ``TYPE_CHECKING`` (as docs/guide.md shows) reads as an ``int``.

Checked by ``make lint`` (``mypy src tests/typing``); pytest never collects it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, assert_type

from sqlalchemy import ForeignKey, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from aegis_shared.database import BaseRepository, Page


class Base(DeclarativeBase):
    pass


class Writer(Base):
    __tablename__ = "writers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    writer_id: Mapped[int] = mapped_column(ForeignKey("writers.id"))
    writer: Mapped[Writer] = relationship()
    readers: Mapped[list[Writer]] = relationship(secondary="post_readers")

    if TYPE_CHECKING:
        readers_count: int


class PostRepository(BaseRepository[Post]):
    pass


async def in_a_handler(session: AsyncSession) -> None:
    posts = PostRepository(session)
    page = await posts.list(
        limit=20, load=["writer", "readers"], annotate={"readers_count": "readers"}
    )
    assert_type(page, list[Post])
    assert_type(page[0].writer.name, str)
    assert_type(page[0].readers_count, int)
    assert_type(await posts.get_by_id(1, load=("writer",)), Post | None)
    assert_type(await posts.get_one_by(id=1, load=["writer"]), Post)
    assert_type(await posts.paginate(load=["writer"], annotate={"n": "readers"}), Page[Post])
