"""Models of the quick start: users, their policies and access logs (seeds 000 and 001)."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from aegis_shared.models import Base, BaseEntity

__all__ = ["Base", "Policy", "User", "UserAccessLog"]


class User(BaseEntity):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    policies: Mapped[list[Policy]] = relationship(back_populates="user")


class Policy(BaseEntity):
    __tablename__ = "policies"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(200))
    user: Mapped[User] = relationship(back_populates="policies")


class UserAccessLog(BaseEntity):
    __tablename__ = "user_access_logs"

    user_id: Mapped[int]
    path: Mapped[str] = mapped_column(String(200))
