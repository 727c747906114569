"""Models of the seed 003 example: posts with comments, and the stored chat answers."""

from __future__ import annotations

from sqlalchemy import Boolean, ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from aegis_shared.database import BaseRepository


class RealtimeBase(DeclarativeBase):
    """The example's own metadata (its tables next to any app's)."""


class Post(RealtimeBase):
    __tablename__ = "realtime_posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    comments: Mapped[list[Comment]] = relationship(
        back_populates="post", order_by="Comment.id", cascade="all, delete-orphan"
    )


class Comment(RealtimeBase):
    __tablename__ = "realtime_comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("realtime_posts.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(String(500))
    post: Mapped[Post] = relationship(back_populates="comments")


class ChatAnswer(RealtimeBase):
    """What ``/chat/stream`` sent for one question: all of it, or what went out before the
    client left (``complete`` False)."""

    __tablename__ = "realtime_chat_answers"

    id: Mapped[int] = mapped_column(primary_key=True)
    question: Mapped[str] = mapped_column(String(500))
    answer: Mapped[str] = mapped_column(Text)
    complete: Mapped[bool] = mapped_column(Boolean)


class ChatAnswerRepository(BaseRepository[ChatAnswer]):
    pass
