"""The tables of the server-side session store: one row per session, and its children.

Add the session table to your own declarative base::

    class UserFridgeSession(ServerSessionMixin, Base):
        __tablename__ = "user_fridge_sessions"

    class UserFridgeIngredient(SessionChildMixin, Base):
        __tablename__ = "user_fridge_ingredients"
        __session_model__ = UserFridgeSession      # adds session_id, ON DELETE CASCADE
        __table_args__ = (UniqueConstraint("session_id", "ingredient_id"),)

        id: Mapped[int] = mapped_column(primary_key=True)
        ingredient_id: Mapped[int]
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Final

from sqlalchemy import JSON, ForeignKey, Index, String, Table, inspect
from sqlalchemy.ext.mutable import MutableDict
from sqlalchemy.orm import Mapped, Mapper, declared_attr, mapped_column

from aegis_shared.models.types import UTCDateTime, utcnow
from aegis_shared.sessions.ids import KEY_LENGTH

#: Dialects whose session table gets an index on ``expires_at``, for cleanup's batches.
#: Not PostgreSQL: every touch writes ``expires_at``, and an index on it would turn those
#: updates from HOT (heap-only, no index write) into full ones; cleanup walks the table by
#: ctid there instead (see :mod:`aegis_shared.sessions.cleanup`).
EXPIRES_INDEX_DIALECTS: Final = ("sqlite", "mysql", "mariadb")

#: PostgreSQL fillfactor of the session table: free room left on each page at insert, so
#: the new version written by a touch fits on the same page, which a HOT update needs.
SESSION_TABLE_FILLFACTOR: Final = 80


#: ``Table.info`` key marking a session table to be created UNLOGGED on PostgreSQL.
UNLOGGED_KEY: Final = "aegis.unlogged"


def session_table_args(
    tablename: str, *items: Any, unlogged: bool = False, **options: Any
) -> tuple[Any, ...]:
    """The ``__table_args__`` :class:`ServerSessionMixin` gives a session table, with
    ``items`` (constraints, indexes) and table ``options`` of your own added.

    A model that declares its own ``__table_args__`` replaces the mixin's, so build yours
    with this: ``__table_args__ = session_table_args(__tablename__, CheckConstraint(...))``.
    ``unlogged=True`` is what ``__session_unlogged__ = True`` sets (see the mixin).
    """
    expires_index = Index(f"ix_{tablename}_expires_at", "expires_at")
    # ddl_if takes a tuple of dialect names (documented and handled at run time); its type
    # hint names a single string only.
    expires_index.ddl_if(dialect=EXPIRES_INDEX_DIALECTS)  # type: ignore[arg-type]
    table_options = {"postgresql_with": {"fillfactor": SESSION_TABLE_FILLFACTOR}, **options}
    if unlogged:
        table_options["info"] = {**table_options.get("info", {}), UNLOGGED_KEY: True}
    return (expires_index, *items, table_options)


class ServerSessionMixin:
    """Columns of a server-side session table; mix into your declarative base.

    ``session_id`` holds the SHA-256 digest of the id the client holds, never the id itself
    (see :mod:`aegis_shared.sessions.ids`). ``expires_at`` is the one expiry to check: the
    earlier of the last touch plus the idle timeout and ``created_at`` plus the absolute
    lifetime. ``data`` is a JSON document whose in-place changes the ORM tracks.

    Indexes: ``created_at`` everywhere (it never changes); ``expires_at`` on SQLite and
    MariaDB only (for cleanup); ``last_accessed`` nowhere, so a touch stays a HOT update on
    PostgreSQL.

    ``__session_unlogged__ = True`` on the model creates the table, and the tables of its
    :class:`SessionChildMixin` models, ``UNLOGGED`` on PostgreSQL: no write-ahead log for
    sessions (cheaper writes), but after a crash of the server (not a clean restart)
    PostgreSQL empties them, so everyone is logged out, and replicas do not have them.
    """

    #: Create the session table (and its child tables) UNLOGGED on PostgreSQL.
    __session_unlogged__: ClassVar[bool] = False

    session_id: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(
        MutableDict.as_mutable(JSON()), default=dict, nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, nullable=False, index=True
    )
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    last_accessed: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)

    # No annotation of __tablename__ here: DeclarativeBase declares it, and a ClassVar
    # in a mixin would clash with that under mypy in every model that uses the mixin.
    @declared_attr.directive
    def __table_args__(cls: type[Any]) -> tuple[Any, ...]:
        """The ``expires_at`` index (not on PostgreSQL), the PostgreSQL fillfactor and,
        with ``__session_unlogged__``, the UNLOGGED mark."""
        return session_table_args(
            str(cls.__tablename__), unlogged=bool(getattr(cls, "__session_unlogged__", False))
        )


def _mapper_of(model: Any) -> Mapper[Any] | None:
    mapper = inspect(model, raiseerr=False) if isinstance(model, type) else None
    return mapper if isinstance(mapper, Mapper) else None


def check_session_model(model: Any, what: str) -> Mapper[Any]:
    """The mapper of ``model`` if it is a mapped :class:`ServerSessionMixin` class; else a
    ``TypeError`` that names ``what`` was given it."""
    mapper = _mapper_of(model)
    if mapper is None or not issubclass(model, ServerSessionMixin):
        raise TypeError(
            f"{what} must be a mapped model class that uses ServerSessionMixin, got {model!r}; "
            "declare one as: class UserFridgeSession(ServerSessionMixin, Base): "
            '__tablename__ = "user_fridge_sessions"'
        )
    return mapper


class SessionChildMixin:
    """Rows that belong to one session, removed with it: adds ``session_id``.

    The class names its session model in ``__session_model__``. The column is a foreign
    key to that table with ``ON DELETE CASCADE`` (deleting or cleaning up a session removes
    its rows in the same statement) and ``ON UPDATE CASCADE`` (rotating a session's id
    moves its rows along), not null and indexed.
    """

    __session_model__: ClassVar[type[ServerSessionMixin]]

    @declared_attr
    def session_id(cls: type[Any]) -> Mapped[str]:
        """The owning session's stored key."""
        model = getattr(cls, "__session_model__", None)
        if model is None:
            raise TypeError(
                f"{cls.__name__} uses SessionChildMixin but does not name its session model; "
                "add __session_model__ = YourSessionModel (a mapped ServerSessionMixin "
                "class) to its class body"
            )
        mapper = check_session_model(model, f"{cls.__name__}.__session_model__")
        return mapped_column(
            String(KEY_LENGTH),
            ForeignKey(mapper.local_table.c.session_id, ondelete="CASCADE", onupdate="CASCADE"),
            nullable=False,
            index=True,
        )


def child_tables(model: type[ServerSessionMixin]) -> list[Table]:
    """The tables of the models (in ``model``'s registry) whose ``__session_model__`` is
    ``model``, each once."""
    mapper = check_session_model(model, "model")
    tables: dict[Table, None] = {}
    for candidate in mapper.registry.mappers:
        cls = candidate.class_
        if (
            issubclass(cls, SessionChildMixin)
            and getattr(cls, "__session_model__", None) is model
            and isinstance(candidate.local_table, Table)
        ):
            tables[candidate.local_table] = None
    return list(tables)
