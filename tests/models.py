"""Models shared by the test-suite."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from aegis_shared.database import BaseRepository, UnitOfWork
from aegis_shared.models import Base, BaseEntity


class User(BaseEntity):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    age: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Post(BaseEntity):
    __tablename__ = "posts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    author: Mapped[User] = relationship()
    comments: Mapped[list[Comment]] = relationship(
        back_populates="post", cascade="all, delete-orphan", order_by="Comment.id"
    )


class Comment(BaseEntity):
    __tablename__ = "comments"

    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(String(500))
    post: Mapped[Post] = relationship(back_populates="comments")


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(Integer)


class UserAccessLog(BaseEntity):
    __tablename__ = "user_access_logs"

    user_id: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(200))


class UserRepository(BaseRepository[User]):
    pass


class PostRepository(BaseRepository[Post]):
    pass


class AccountRepository(BaseRepository[Account]):
    pass


class UserAccessLogRepository(BaseRepository[UserAccessLog]):
    pass


class AppUnitOfWork(UnitOfWork):
    users: UserRepository
    posts: PostRepository
    accounts: AccountRepository
    user_access_logs: UserAccessLogRepository
