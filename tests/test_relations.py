"""Links through ``secondary`` relationships by id (``link``, ``unlink``, ``set_links``) and
counts and flags for a page of rows (``count_links``, ``linked``): one statement each.

On SQLite, PostgreSQL and MariaDB, with a small Conduit-shaped model: users following users
(self-referential), articles with tags and favorites (two secondaries), comments
(one-to-many). Rows are read back from a fresh session; statements are counted with
``count_queries``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, and_, insert, select
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from aegis_shared.database import BaseRepository, DatabaseManager, fast_path
from aegis_shared.database.relations import MAX_LINK_IDS, LinkChanges
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb


class LinkBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


follows = Table(
    "rl_follows",
    LinkBase.metadata,
    Column("follower_id", ForeignKey("rl_users.id", ondelete="CASCADE"), primary_key=True),
    Column("followed_id", ForeignKey("rl_users.id", ondelete="CASCADE"), primary_key=True),
)
article_tags = Table(
    "rl_article_tags",
    LinkBase.metadata,
    Column("article_id", ForeignKey("rl_articles.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("rl_tags.id", ondelete="CASCADE"), primary_key=True),
)
#: A link that needs a value of its own: link() cannot make one, counts still work.
editors = Table(
    "rl_editors",
    LinkBase.metadata,
    Column("article_id", ForeignKey("rl_articles.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("rl_users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(20), nullable=False),
)
favorites = Table(
    "rl_favorites",
    LinkBase.metadata,
    Column("user_id", ForeignKey("rl_users.id", ondelete="CASCADE"), primary_key=True),
    Column("article_id", ForeignKey("rl_articles.id", ondelete="CASCADE"), primary_key=True),
)


class LUser(LinkBase):
    __tablename__ = "rl_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    following: Mapped[list[LUser]] = relationship(
        secondary=follows,
        primaryjoin=lambda: follows.c.follower_id == LUser.id,
        secondaryjoin=lambda: follows.c.followed_id == LUser.id,
        back_populates="followers",
    )
    followers: Mapped[list[LUser]] = relationship(
        secondary=follows,
        primaryjoin=lambda: follows.c.followed_id == LUser.id,
        secondaryjoin=lambda: follows.c.follower_id == LUser.id,
        back_populates="following",
    )
    articles: Mapped[list[LArticle]] = relationship(back_populates="author")


class LTag(LinkBase):
    __tablename__ = "rl_tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


class LArticle(LinkBase):
    __tablename__ = "rl_articles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("rl_users.id", ondelete="CASCADE"))
    author: Mapped[LUser] = relationship(back_populates="articles")
    tags: Mapped[list[LTag]] = relationship(secondary=article_tags)
    favorited_by: Mapped[list[LUser]] = relationship(secondary=favorites)
    comments: Mapped[list[LComment]] = relationship(back_populates="article")
    editors: Mapped[list[LUser]] = relationship(secondary=editors, viewonly=True)
    #: Joins on more than the keys: a link by id could not say what the name must be.
    training_tags: Mapped[list[LTag]] = relationship(
        secondary=article_tags,
        secondaryjoin=lambda: and_(LTag.id == article_tags.c.tag_id, LTag.name == "training"),
        viewonly=True,
    )


class LComment(LinkBase):
    __tablename__ = "rl_comments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(String(100))
    article_id: Mapped[int] = mapped_column(ForeignKey("rl_articles.id", ondelete="CASCADE"))
    article: Mapped[LArticle] = relationship(back_populates="comments")


class Users(BaseRepository[LUser]):
    pass


class Articles(BaseRepository[LArticle]):
    pass


USERS = ["jake", "jane", "joe", "ann"]  # ids 1..4
TAGS = ["dragons", "training", "zoo"]  # ids 1..3
ARTICLES = [("how-to-train", 1), ("dragons-101", 2), ("zoo-guide", 1)]  # ids 1..3


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    manager = await make_db(LinkBase.metadata)
    async with manager.session() as session:
        session.add_all([LUser(id=i, username=n) for i, n in enumerate(USERS, 1)])
        session.add_all([LTag(id=i, name=n) for i, n in enumerate(TAGS, 1)])
        await session.flush()
        session.add_all(
            [LArticle(id=i, title=t, author_id=a) for i, (t, a) in enumerate(ARTICLES, 1)]
        )
        await session.flush()
        session.add_all(
            [LComment(id=i, body=f"c{i}", article_id=a) for i, a in enumerate([1, 1, 3], 1)]
        )
    return manager


async def rows(db: DatabaseManager, table: Table) -> list[tuple[int, int]]:
    """The table's link rows as a fresh session reads them, sorted."""
    async with db.session() as session:
        result = await session.execute(select(*table.columns))
        return sorted((int(a), int(b)) for a, b in result.all())


# -- link, unlink, set_links --------------------------------------------------------------


async def test_link_adds_rows_in_one_statement_and_is_idempotent(db: DatabaseManager) -> None:
    async with db.session() as session:
        articles = Articles(session)
        with count_queries(db) as counter:
            added = await articles.link("tags", 1, [1, 2])
        assert (added, counter.count) == (2, 1)
        with count_queries(db) as counter:
            again = await articles.link("tags", 1, [2, 1, 2, 3])
        assert (again, counter.count) == (1, 1)  # only tag 3 was new
        assert await articles.link("tags", 1, 3) == 0  # one id, already linked
    assert await rows(db, article_tags) == [(1, 1), (1, 2), (1, 3)]


async def test_link_skips_ids_with_no_row(db: DatabaseManager) -> None:
    async with db.session() as session:
        articles = Articles(session)
        assert await articles.link("tags", 1, [2, 999]) == 1
        assert await articles.link("tags", 999, [1]) == 0  # no such article
    assert await rows(db, article_tags) == [(1, 2)]


async def test_self_referential_follow_and_unfollow(db: DatabaseManager) -> None:
    async with db.session() as session:
        users = Users(session)
        assert await users.link("following", 1, 2) == 1  # jake follows jane
        assert await users.link("following", 3, [2, 1]) == 2  # joe follows jane and jake
        assert await users.link("following", 1, 2) == 0
    # (follower_id, followed_id): the direction the relationship names.
    assert await rows(db, follows) == [(1, 2), (3, 1), (3, 2)]
    async with db.session() as session:
        users = Users(session)
        jane = await users.get_one(2)
        assert sorted(u.username for u in await jane.awaitable_attrs.followers) == ["jake", "joe"]
        with count_queries(db) as counter:
            assert await users.unlink("following", 3, [2]) == 1
        assert counter.count == 1
        assert await users.unlink("following", 3, [2]) == 0  # not linked: 0, no error
        assert await users.unlink("followers", 1, [3]) == 1  # the same table, other side
    assert await rows(db, follows) == [(1, 2)]


async def test_set_links_replaces_the_set(db: DatabaseManager, backend: str) -> None:
    async with db.session() as session:
        articles = Articles(session)
        await articles.link("tags", 1, [1, 2])
        await articles.link("tags", 2, [1])
        with count_queries(db) as counter:
            changes = await articles.set_links("tags", 1, [2, 3])
        assert changes == LinkChanges(added=1, removed=1)
        # A DELETE of the others and an INSERT of the missing: one statement on PostgreSQL
        # (data-modifying CTEs), two elsewhere.
        assert counter.count == (1 if backend == "postgresql" else 2)
        assert await articles.set_links("tags", 1, [3, 2]) == (0, 0)
    assert await rows(db, article_tags) == [(1, 2), (1, 3), (2, 1)]
    async with db.session() as session:
        with count_queries(db) as counter:
            assert await Articles(session).set_links("tags", 1, []) == (0, 2)
        assert counter.count == 1  # clearing is the DELETE alone
    assert await rows(db, article_tags) == [(2, 1)]


async def test_links_roll_back_with_the_unit_of_work(db: DatabaseManager) -> None:
    with pytest.raises(RuntimeError):
        async with db.session() as session:
            await Articles(session).link("tags", 1, [1, 2, 3])
            raise RuntimeError("handler failed")
    assert await rows(db, article_tags) == []


async def test_fifty_concurrent_links_leave_one_row_and_no_error(db: DatabaseManager) -> None:
    async def favorite() -> int:
        async with db.session() as session:
            return await Articles(session).link("favorited_by", 2, [4])

    added = await asyncio.gather(*(favorite() for _ in range(50)))
    assert sorted(added) == [0] * 49 + [1]
    assert await rows(db, favorites) == [(4, 2)]


async def test_the_orm_sees_the_links(db: DatabaseManager) -> None:
    async with db.session() as session:
        await Articles(session).link("favorited_by", 1, [2, 3])
    async with db.session() as session:
        article = await Articles(session).get_one(1)
        users = await article.awaitable_attrs.favorited_by
        assert sorted(u.username for u in users) == ["jane", "joe"]


# -- count_links, linked --------------------------------------------------------------------


async def seed_favorites_and_follows(db: DatabaseManager) -> None:
    async with db.session() as session:
        articles, users = Articles(session), Users(session)
        await articles.link("favorited_by", 1, [1, 2, 3])
        await articles.link("favorited_by", 3, [2])
        await users.link("following", 2, [1])  # jane follows jake


async def test_count_links_per_parent_in_one_statement(db: DatabaseManager) -> None:
    await seed_favorites_and_follows(db)
    async with db.session() as session:
        articles, users = Articles(session), Users(session)
        with count_queries(db) as counter:
            favorites_count = await articles.count_links("favorited_by", [1, 2, 3])
        assert favorites_count == {1: 3, 2: 0, 3: 1}
        assert counter.count == 1
        # Read on the fast path: outside the session's transaction, which has not begun.
        assert fast_path.session_is_idle(session) is not None
        with count_queries(db) as counter:
            assert await articles.count_links("comments", [3, 2, 1]) == {3: 1, 2: 0, 1: 2}
        assert counter.count == 1
        assert await users.count_links("followers", [1, 2]) == {1: 1, 2: 0}
        assert await users.count_links("following", [1, 2]) == {1: 0, 2: 1}


async def test_linked_flags_for_a_page_in_one_statement(db: DatabaseManager) -> None:
    await seed_favorites_and_follows(db)
    async with db.session() as session:
        articles, users = Articles(session), Users(session)
        with count_queries(db) as counter:
            favorited = await articles.linked("favorited_by", [1, 2, 3], 2)
        assert (favorited, counter.count) == ({1, 3}, 1)
        assert await articles.linked("favorited_by", [1, 2, 3], 4) == set()
        # author.following for jane: which of these authors does she follow?
        with count_queries(db) as counter:
            assert await users.linked("followers", [1, 2], 2) == {1}
        assert counter.count == 1
        assert await articles.linked("comments", [1, 2, 3], 3) == {3}


async def test_out_of_range_ids_match_nothing_without_a_query(db: DatabaseManager) -> None:
    await seed_favorites_and_follows(db)
    huge = 2**70
    async with db.session() as session:
        articles = Articles(session)
        with count_queries(db) as counter:
            assert await articles.link("tags", huge, [1]) == 0
            assert await articles.link("tags", 1, [huge]) == 0
            assert await articles.unlink("favorited_by", 1, [huge]) == 0
            assert await articles.set_links("tags", huge, [1]) == (0, 0)
            assert await articles.count_links("favorited_by", [huge]) == {huge: 0}
            assert await articles.linked("favorited_by", [huge], 1) == set()
            assert await articles.linked("favorited_by", [1], huge) == set()
            assert await articles.link("tags", 1, []) == 0
            assert await articles.count_links("comments", []) == {}
        assert counter.statements == []
        # Mixed: the impossible id is dropped, the rest answered.
        assert await articles.count_links("favorited_by", [1, huge]) == {1: 3, huge: 0}
        assert await articles.link("tags", 1, [huge, 2]) == 1


BAD_CALLS: dict[str, tuple[Any, str]] = {
    "unknown relationship": (
        lambda a, u: a.link("tagz", 1, [1]),
        "LArticle cannot use 'tagz': LArticle has no such many-to-many relationship to link "
        "through; usable: favorited_by, tags",
    ),
    "one-to-many link": (
        lambda a, u: a.link("comments", 1, [1]),
        "LArticle cannot use 'comments': LArticle.comments is one-to-many; create or delete "
        "its LComment rows instead; usable: favorited_by, tags",
    ),
    "many-to-one count": (
        lambda a, u: a.count_links("author", [1]),
        "LArticle cannot use 'author': LArticle.author is many-to-one; read the foreign key "
        "on LArticle itself; usable: comments, editors, favorited_by, tags",
    ),
    "unknown count": (
        lambda a, u: u.count_links("friends", [1]),
        "LUser cannot use 'friends': LUser has no such relationship to count; usable: "
        "articles, followers, following",
    ),
    "viewonly link": (
        lambda a, u: a.link("editors", 1, [1]),
        "LArticle cannot use 'editors': rl_editors.role needs a value on every link; usable: "
        "favorited_by, tags",
    ),
    "extra join conditions": (
        lambda a, u: a.count_links("training_tags", [1]),
        "LArticle cannot use 'training_tags': LArticle.training_tags has join conditions "
        "beyond its keys; filter the rows yourself",
    ),
    "not a name": (lambda a, u: a.unlink(["tags"], 1, [1]), "LArticle cannot use ['tags']"),
    "None id": (lambda a, u: a.link("tags", None, [1]), "must be one LArticle id, got None"),
    "None among ids": (lambda a, u: a.link("tags", 1, [1, None]), "must be one LTag id"),
    "nested ids": (lambda a, u: a.count_links("tags", [[1, 2]]), "must be one LArticle id"),
    "list as target": (lambda a, u: a.linked("tags", [1], [1, 2]), "must be one LTag id"),
    "too many ids": (
        lambda a, u: a.link("tags", 1, range(MAX_LINK_IDS + 1)),
        f"takes at most {MAX_LINK_IDS} ids per call",
    ),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
async def test_bad_input_is_refused_before_any_sql(db: DatabaseManager, call: Any) -> None:
    make, message = call
    async with db.session() as session:
        with count_queries(db) as counter, pytest.raises(ValueError) as caught:
            await make(Articles(session), Users(session))
        assert counter.statements == []
    assert message in str(caught.value)


async def test_counts_inside_a_writing_unit_of_work_see_its_links(db: DatabaseManager) -> None:
    async with db.session() as session:
        articles = Articles(session)
        await articles.link("favorited_by", 2, [1, 3])
        # The session now holds its transaction: the count runs inside it.
        assert await articles.count_links("favorited_by", [2]) == {2: 2}
        assert await articles.linked("favorited_by", [1, 2], 3) == {2}
        # Many ids: one statement all the same.
        many = list(range(1, 41))
        with count_queries(db) as counter:
            counts = await articles.count_links("favorited_by", many)
        assert counter.count == 1
        assert counts == {i: 2 if i == 2 else 0 for i in many}
    async with db.session() as session:
        counts = await Articles(session).count_links("favorited_by", list(range(1, 41)))
        assert counts[2] == 2 and sum(counts.values()) == 2


@pytest.mark.parametrize("size", [1, 5, 33, 200, MAX_LINK_IDS])
async def test_counts_and_flags_for_many_ids_stay_on_the_fast_path(
    db: DatabaseManager, size: int
) -> None:
    """Any number of ids up to the cap: one statement outside a transaction (the IN list
    is padded to a few compiled lengths), the same answer as for exactly those ids."""
    async with db.session() as session:
        articles = Articles(session)
        await articles.link("favorited_by", 2, [1, 3])
        await articles.link("favorited_by", 3, [3])
    ids = list(range(size, 0, -1))
    async with db.session() as session:
        articles = Articles(session)
        with count_queries(db) as counter:
            counts = await articles.count_links("favorited_by", ids)
            flagged = await articles.linked("favorited_by", ids, 3)
        assert counter.count == 2
        if db.fast_path:
            assert not session.in_transaction()
    assert counts == {i: {2: 2, 3: 1}.get(i, 0) for i in ids}
    assert flagged == {2, 3} & set(ids)


async def test_counts_work_where_links_cannot_be_written(db: DatabaseManager) -> None:
    async with db.session() as session:
        await session.execute(insert(editors), [{"article_id": 1, "user_id": 2, "role": "x"}])
    async with db.session() as session:
        assert await Articles(session).count_links("editors", [1, 2]) == {1: 1, 2: 0}


async def test_links_of_a_row_made_in_the_same_unit_of_work(db: DatabaseManager) -> None:
    async with db.session() as session:
        article = await Articles(session).create({"id": 10, "title": "new", "author_id": 1})
        assert await Articles(session).link("tags", article.id, [1, 3]) == 2
    assert await rows(db, article_tags) == [(10, 1), (10, 3)]


async def test_collections_the_session_loaded_are_read_again(db: DatabaseManager) -> None:
    async with db.session() as session:
        users = Users(session)
        jake = await users.get_one(1, options=[selectinload(LUser.following)])
        jane = await users.get_one(2, options=[selectinload(LUser.followers)])
        assert (jake.following, jane.followers) == ([], [])
        await users.link("following", 1, [2])
        # Not the stale empty lists: loaded again, from this transaction.
        assert [u.username for u in await jake.awaitable_attrs.following] == ["jane"]
        assert [u.username for u in await jane.awaitable_attrs.followers] == ["jake"]
        await users.set_links("following", 1, [])
        assert await jake.awaitable_attrs.following == []
        assert await jane.awaitable_attrs.followers == []
