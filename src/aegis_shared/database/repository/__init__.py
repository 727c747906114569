"""``BaseRepository[T]``: CRUD for one model on a session it is given (seeds 000 and 001).

A repository flushes so that ids and constraint errors appear at the call that caused
them, and never commits: the unit of work, the request or the caller owns the transaction.

Its calls live in the modules of this package, each the face of the statement building
in :mod:`aegis_shared.database` (lookups, loading, pagination, writes, relations, ...):

- :mod:`.core`: construction, the allow-lists, the checks every call shares;
- :mod:`.reads`: ``get_by_id``, ``get_one``, ``get_by``, ``get_one_by``, ``list``,
  ``count``, ``exists``;
- :mod:`.pages`: ``paginate`` and ``keyset``;
- :mod:`.writing`: ``create``, ``create_many``, ``update``, ``soft_delete``, ``restore``,
  ``delete``;
- :mod:`.direct_writes`: ``update_where``, ``delete_where``, ``get_or_create``, ``upsert``;
- :mod:`.links`: ``link``, ``unlink``, ``set_links``, ``count_links``, ``linked``.
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar

from aegis_shared.database.pagination import KeysetPage, Page
from aegis_shared.database.repository.core import (
    MAX_ORDER_BY_TERMS,
    MAX_PAGE_SIZE_KEY,
    Annotate,
    Filters,
    Load,
    ModelT,
    OrderBy,
    Where,
    declare_allowlists,
)
from aegis_shared.database.repository.direct_writes import DirectWrites
from aegis_shared.database.repository.links import Links
from aegis_shared.database.repository.pages import Pages
from aegis_shared.database.repository.reads import ListTruncatedWarning
from aegis_shared.database.repository.writing import Writes

__all__ = [
    "MAX_ORDER_BY_TERMS",
    "MAX_PAGE_SIZE_KEY",
    "Annotate",
    "BaseRepository",
    "Filters",
    "KeysetPage",
    "ListTruncatedWarning",
    "Load",
    "ModelT",
    "OrderBy",
    "Page",
    "Where",
]


class BaseRepository(Writes[ModelT], DirectWrites[ModelT], Pages[ModelT], Links[ModelT]):
    """Create, read, update and delete rows of one model.

    The calls come from the classes it joins, one module each: :class:`.reads.Reads`
    (under :class:`.pages.Pages` and both writes, which read the row first),
    :class:`.writing.Writes`, :class:`.direct_writes.DirectWrites` and
    :class:`.links.Links`. The settings below, declared on a subclass, govern them all.

    Both constructions of the seeds work::

        class UserRepository(BaseRepository[User]):
            def __init__(self, session: AsyncSession):
                super().__init__(session, User)            # seed 001

        class UserAccessLogRepository(BaseRepository[UserAccessLog]):
            def __init__(self, session: AsyncSession) -> None:
                super().__init__(session)                  # seed 000: model from the generic
    """

    #: Most rows ``list()`` returns when no ``limit`` is given (it warns with
    #: :class:`ListTruncatedWarning` when more match); ``None``: the page-size cap,
    #: ``max_limit`` or else the manager's ``max_page_size`` (1000).
    default_limit: ClassVar[int | None] = None
    #: Largest ``limit`` accepted; ``None`` takes the manager's ``max_page_size`` (1000).
    max_limit: ClassVar[int | None] = None
    #: Fields ``filters`` and ``exclude`` may name (``list``, ``count``, ``exists``,
    #: ``paginate``, ``get_by``): columns (``"title"``) and relationship paths
    #: (``"author__username"``), without the lookup, which is then free: ``"title"``
    #: allows ``title__icontains`` too. ``None``: every column and path. Declare it when
    #: filters come from a request, so clients cannot test values they must not see.
    filterable: ClassVar[frozenset[str] | None] = None
    #: Columns ``order_by`` may name, in either direction (``"age"``, ``"-age"``); ``None``:
    #: every column. Column objects (``User.age``) are code, not request input, and pass.
    sortable: ClassVar[frozenset[str] | None] = None
    #: Fields a mapping given to ``create`` or ``create_many``, or ``update(**fields)``, may
    #: set; ``None``: every mapped attribute. Model instances are built by the application
    #: and pass as they are; ``soft_delete`` and ``restore`` still set ``deleted_at``.
    writable: ClassVar[frozenset[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is BaseRepository:
                (arg,) = typing.get_args(base)
                if isinstance(arg, type):
                    cls.model = arg
        declare_allowlists(cls)
