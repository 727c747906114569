"""The soft-delete scope: which rows of a model with ``deleted_at`` a read sees.

A model with a ``deleted_at`` column (:class:`~aegis_shared.models.SoftDeleteMixin`,
:class:`~aegis_shared.models.BaseEntity`, or any model mapping a column of that name) is
*scoped*: the reads of :class:`~aegis_shared.database.BaseRepository` (``get_by_id``,
``get_one``, ``get_by``, ``get_one_by``, ``list``, ``count``, ``exists``, ``paginate``,
``keyset``) and ``update`` / ``update_where`` see only the rows whose ``deleted_at`` is
NULL. ``with_deleted=True`` shows every row, ``only_deleted=True`` only the soft-deleted
ones. ``delete`` / ``delete_where`` (a hard delete removes a row for good, soft-deleted or
not), ``soft_delete`` / ``restore`` and ``get_or_create`` (a soft-deleted row still holds
its unique key) see every row.

The scope is one more filter term (``deleted_at IS NULL`` or ``IS NOT NULL``), added after
the caller's own terms, so it is part of the fast path's plan key and its statements the
same as the ORM path's. An object the session already holds is judged by its own
``deleted_at`` (what the session would flush), so a cached object cannot slip past it.

Relationship paths (``filters={"author__username": "jake"}``), link counts and flags
(``count_links``, ``linked``) and loaded relationships (``post.comments``) are not scoped:
they reach related rows whatever their ``deleted_at``. Filter on the path
(``author__deleted_at=None``) where that matters.
"""

from __future__ import annotations

import enum
from typing import Any, Final

from sqlalchemy.orm import Mapper

from aegis_shared.database import lookups

#: The column that marks a row soft-deleted.
COLUMN: Final = "deleted_at"


class Scope(enum.Enum):
    """Which rows of a soft-deletable model a call sees."""

    #: Rows whose ``deleted_at`` is NULL (the default).
    LIVE = "live"
    #: Every row (``with_deleted=True``).
    ALL = "all"
    #: Only soft-deleted rows (``only_deleted=True``).
    DELETED = "deleted"


def soft_deletable(mapper: Mapper[Any]) -> bool:
    """True when the model maps a ``deleted_at`` column."""
    return COLUMN in mapper.column_attrs


def choose(mapper: Mapper[Any], with_deleted: Any, only_deleted: Any) -> Scope:
    """The scope the two keyword arguments ask for; ValueError before any SQL for
    anything but two booleans that are not both True, or ``only_deleted=True`` on a model
    that cannot be soft-deleted."""
    for name, value in (("with_deleted", with_deleted), ("only_deleted", only_deleted)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} takes True or False, got {lookups.shown(value)}")
    if with_deleted and only_deleted:
        raise ValueError(
            "with_deleted=True and only_deleted=True contradict each other: pass "
            "with_deleted=True for every row, or only_deleted=True for the soft-deleted ones"
        )
    if only_deleted:
        if not soft_deletable(mapper):
            raise ValueError(
                f"{mapper.class_.__name__} has no deleted_at column, so no row of it is "
                "soft-deleted; leave out only_deleted"
            )
        return Scope.DELETED
    return Scope.ALL if with_deleted else Scope.LIVE


#: The terms of each scope, made once: ``get_by_id`` asks for them on every call.
_TERMS: Final = {
    Scope.ALL: (),
    Scope.LIVE: (lookups.null_term(COLUMN, null=True),),
    Scope.DELETED: (lookups.null_term(COLUMN, null=False),),
}


def terms(mapper: Mapper[Any], scope: Scope) -> tuple[lookups.Term, ...]:
    """The filter terms of ``scope`` (none for a model without ``deleted_at``)."""
    return _TERMS[scope] if soft_deletable(mapper) else ()


def admits(scope: Scope, deleted_at: Any) -> bool:
    """True when an object whose ``deleted_at`` is ``deleted_at`` is visible in ``scope``."""
    if scope is Scope.ALL:
        return True
    return (deleted_at is not None) is (scope is Scope.DELETED)
