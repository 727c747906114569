"""Declarative base with async attribute access and stable constraint names."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase

# Named constraints make Alembic autogenerate diffs stable across databases and let
# DuplicateEntityError report a meaningful constraint name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(AsyncAttrs, DeclarativeBase):
    """Base class of mapped models; ``obj.awaitable_attrs.<name>`` loads a relationship."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
