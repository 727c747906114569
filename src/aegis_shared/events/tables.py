"""The event log's tables, on their own ``MetaData``.

``aegis_events`` holds one row per event: ``position`` is its place in its channel, given
at COMMIT (see :mod:`aegis_shared.events.positions`), so it is ``NULL`` only while the
publishing transaction is open, and no other transaction ever sees such a row.
``aegis_event_channels`` holds one counter row per channel: the last position given.
``aegis_event_consumers`` and ``aegis_event_dead_letters`` belong to after-commit consumers.

Create them with :func:`create_event_tables` (demos and tests), or with Alembic: in
``migrations/env.py`` call ``include_event_tables(Base.metadata)`` before
``run_migrations(Base.metadata)``, and ``alembic revision --autogenerate`` writes their
``op.create_table`` calls.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.models.types import UTCDateTime

#: Longest channel name, in characters.
MAX_CHANNEL_LENGTH: Final = 100

#: The naming convention of :mod:`aegis_shared.models.base`, so migrations name the
#: constraints the same way on every backend.
_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

#: The tables of the event log; add it to Alembic's ``target_metadata``.
event_metadata: Final = MetaData(naming_convention=_NAMING)

# SQLite gives an autoincrementing rowid only to a column declared INTEGER PRIMARY KEY.
_ID = BigInteger().with_variant(Integer(), "sqlite")

events_table: Final = Table(
    "aegis_events",
    event_metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("channel", String(MAX_CHANNEL_LENGTH), nullable=False),
    # NULL until the publishing transaction commits; unique per channel. Every backend
    # lets several NULLs share a unique index, so open transactions never collide on it.
    Column("position", BigInteger(), nullable=True),
    # JSON text, encoded once at publish() (which also checks its size): MEDIUMTEXT on
    # MariaDB, whose TEXT stops at 64 KiB.
    Column("data", Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("channel", "position", name="uq_aegis_events_channel_position"),
)

channels_table: Final = Table(
    "aegis_event_channels",
    event_metadata,
    Column("channel", String(MAX_CHANNEL_LENGTH), primary_key=True),
    Column("last_position", BigInteger(), nullable=False),
)

#: After-commit consumers (see :mod:`aegis_shared.events.consumers`): per consumer and
#: channel, the position handled up to and the lease of the process handling it now.
consumers_table: Final = Table(
    "aegis_event_consumers",
    event_metadata,
    Column("consumer", String(MAX_CHANNEL_LENGTH), primary_key=True),
    Column("channel", String(MAX_CHANNEL_LENGTH), primary_key=True),
    Column("position", BigInteger(), nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
)

#: Events a consumer gave up on after its attempts: what failed, never the event's data.
dead_letters_table: Final = Table(
    "aegis_event_dead_letters",
    event_metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("consumer", String(MAX_CHANNEL_LENGTH), nullable=False),
    Column("channel", String(MAX_CHANNEL_LENGTH), nullable=False),
    Column("position", BigInteger(), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("error_class", String(200), nullable=False),
    Column("error_message", String(500), nullable=False),
    Column("failed_at", UTCDateTime(), nullable=False),
    UniqueConstraint("consumer", "channel", "position", name="uq_aegis_event_dead_letters_event"),
)


def include_event_tables(metadata: MetaData) -> None:
    """Copy the event log's tables into ``metadata`` (your ``Base.metadata``), so Alembic's
    autogenerate sees them next to your own; tables already there are left alone."""
    for table in event_metadata.tables.values():
        if table.key not in metadata.tables:
            table.to_metadata(metadata)


async def create_event_tables(db: DatabaseManager) -> None:
    """Create the event log's tables where they do not exist yet (demos and tests; use a
    migration in production, see the module docstring)."""
    await db.create_all(event_metadata)


async def drop_event_tables(db: DatabaseManager) -> None:
    """Drop the event log's tables if they exist."""
    await db.drop_all(event_metadata)
