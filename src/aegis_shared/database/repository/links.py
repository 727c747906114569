"""The links of a repository through its relationships: ``link``, ``unlink`` and
``set_links`` by id through a many-to-many ``secondary`` table, and ``count_links`` and
``linked`` for a set of rows; the statements are in :mod:`aegis_shared.database.relations`.
"""

from __future__ import annotations

from typing import Any

from aegis_shared.database import relations
from aegis_shared.database.repository.core import Core, ModelT


class Links(Core[ModelT]):
    """Follow, favorite, tag: links by id, one statement each, and counts and flags for a
    page of rows in one statement."""

    async def link(self, relationship: str, id: Any, ids: Any) -> int:
        """Link the row ``id`` to the rows ``ids`` (one id or several) through the
        many-to-many ``relationship``: follow, favorite, tag. One statement, idempotent:
        a link already there is left alone, an id with no row adds nothing. Returns the
        number of links added. Never loads the collection.

        ValueError before any SQL when ``relationship`` is not a many-to-many one with a
        ``secondary`` table (the message names those that are).
        """
        return await relations.link(self.session, self._mapper, relationship, id, ids)

    async def unlink(self, relationship: str, id: Any, ids: Any) -> int:
        """Remove the links from the row ``id`` to the rows ``ids``: unfollow, unfavorite.
        One DELETE; returns the number removed (0 when none were there)."""
        return await relations.unlink(self.session, self._mapper, relationship, id, ids)

    async def set_links(self, relationship: str, id: Any, ids: Any) -> relations.LinkChanges:
        """Make the links from the row ``id`` exactly those to ``ids`` (replace a tag set):
        one DELETE of the others, then one INSERT of the missing ones (none when ``ids``
        is empty); one statement on PostgreSQL. Returns ``LinkChanges(added, removed)``."""
        return await relations.set_links(self.session, self._mapper, relationship, id, ids)

    async def count_links(self, relationship: str, ids: Any) -> dict[Any, int]:
        """How many links (many-to-many) or children (one-to-many) each of the rows
        ``ids`` has, as ``{id: count}`` with zeros included: favorites per article,
        comments per article. One grouped statement for the whole set."""
        return await relations.count_links(self.session, self._mapper, relationship, ids)

    async def linked(self, relationship: str, ids: Any, to: Any) -> set[Any]:
        """Those of the rows ``ids`` that are linked to the row ``to`` of the related
        model: which articles of a page the current user favorited
        (``linked("favorited_by", article_ids, user_id)``), which authors they follow
        (``linked("followers", author_ids, user_id)``). One statement."""
        return await relations.linked(self.session, self._mapper, relationship, ids, to)
