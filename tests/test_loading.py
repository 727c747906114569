"""``load=`` (eager loading by relationship name) and ``annotate=`` (counts and flags per
row) on the repository's reads, on SQLite, PostgreSQL and MariaDB.

The data is the Conduit set of tests/conduit_app.py. Each read runs twice: on a manager
with the fast path (``fast``) and on one without it (``orm``), over the same database.
The expected values come from plain SQLAlchemy ORM queries in a fresh session; statements
are counted with ``count_queries``; objects are used after their session closed, where a
lazy load would fail.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import ForeignKey, Integer, MetaData, String, select
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from aegis_shared.database import BaseRepository, DatabaseManager, Linked, loading
from aegis_shared.errors.exceptions import RelationshipNotLoadedError
from aegis_shared.models import NAMING_CONVENTION, SoftDeleteMixin
from aegis_shared.testing import count_queries
from tests import conduit_app
from tests.conduit_models import (
    Article,
    ArticleRepository,
    Comment,
    ConduitBase,
    ConduitUser,
    ConduitUserRepository,
)
from tests.conftest import MakeDb


@pytest.fixture
async def seeded(make_db: MakeDb) -> DatabaseManager:
    manager = await make_db(ConduitBase.metadata)
    await conduit_app.seed(manager)
    return manager


@pytest.fixture(params=["fast", "orm"])
async def db(request: pytest.FixtureRequest, seeded: DatabaseManager, make_db: MakeDb) -> Any:
    """The seeded database, through the fast path or (``orm``) with it turned off."""
    if request.param == "fast":
        return seeded
    return await make_db(fast_path=False, default=False)


async def expected_articles(db: DatabaseManager) -> dict[int, dict[str, Any]]:
    """Every article as plain ORM loading sees it: author, its followers, tags, comments
    with their authors, and the counts."""
    async with db.session() as session:
        result = await session.scalars(
            select(Article).options(
                selectinload(Article.author).selectinload(ConduitUser.followers),
                selectinload(Article.tags),
                selectinload(Article.favorited_by),
                selectinload(Article.comments).selectinload(Comment.author),
            )
        )
        return {
            a.id: {
                "author": a.author.username,
                "followers": sorted(u.username for u in a.author.followers),
                "tags": sorted(t.name for t in a.tags),
                "favorites": len(a.favorited_by),
                "comments": sorted((c.body, c.author.username) for c in a.comments),
            }
            for a in result.all()
        }


NEWEST = list(conduit_app.ORDER)


# -- load= ----------------------------------------------------------------------------------


async def test_a_list_of_20_with_author_and_tags_is_three_statements(db: DatabaseManager) -> None:
    expected = await expected_articles(db)
    async with db.session() as session:
        with count_queries(db) as counter:
            page = await ArticleRepository(session).list(
                limit=20, order_by=NEWEST, load=["author", "tags"]
            )
        assert counter.count == 3, counter.statements
        with pytest.raises(RelationshipNotLoadedError):
            _ = page[0].comments  # not asked for: the library's error, never MissingGreenlet
    assert [a.id for a in page] == sorted(expected, reverse=True)[:20]
    # The session is closed: a lazy load could not run, the loaded values need none.
    with count_queries(db) as counter:
        for article in page:
            assert article.author.username == expected[article.id]["author"]
            assert sorted(t.name for t in article.tags) == expected[article.id]["tags"]
    assert counter.count == 0


async def test_every_read_takes_load(db: DatabaseManager) -> None:
    expected = await expected_articles(db)
    calls: dict[str, tuple[Callable[[ArticleRepository], Awaitable[Any]], int]] = {
        "get_by_id": (lambda r: r.get_by_id(3, load=["author", "tags"]), 3),
        "get_one": (lambda r: r.get_one(3, load=["author", "tags"]), 3),
        "get_by": (lambda r: r.get_by(slug="article-03", load=["author", "tags"]), 3),
        "get_one_by": (lambda r: r.get_one_by(slug="article-03", load=["author", "tags"]), 3),
        "paginate": (lambda r: r.paginate(1, 5, order_by=NEWEST, load=["author", "tags"]), 4),
    }
    for name, (call, statements) in calls.items():
        async with db.session() as session:
            with count_queries(db) as counter:
                found = await call(ArticleRepository(session))
            assert counter.count == statements, (name, counter.statements)
        articles = found.items if name == "paginate" else [found]
        assert articles, name
        for article in articles:
            assert article.author.username == expected[article.id]["author"], name
            assert sorted(t.name for t in article.tags) == expected[article.id]["tags"], name


async def test_nested_paths_and_one_to_many(db: DatabaseManager) -> None:
    expected = await expected_articles(db)
    async with db.session() as session:
        with count_queries(db) as counter:
            page = await ArticleRepository(session).list(
                filters={"id__le": 4},
                load=["author__followers", "comments__author", "comments", "author"],
            )
        # Articles, authors, their followers, comments, the comments' authors: the last
        # only on the ORM path, whose selectin loader has no identity-map shortcut for a
        # to-one below a collection; ours finds every comment author already held.
        assert counter.count == (4 if db.fast_path else 5), counter.statements
    assert [a.id for a in page] == [1, 2, 3, 4]
    for article in page:
        want = expected[article.id]
        assert sorted(u.username for u in article.author.followers) == want["followers"]
        assert sorted((c.body, c.author.username) for c in article.comments) == want["comments"]
    assert [len(a.comments) for a in page] == [2, 1, 0, 0]


async def test_load_combines_with_options(db: DatabaseManager) -> None:
    expected = await expected_articles(db)
    async with db.session() as session:
        with count_queries(db) as counter:
            page = await ArticleRepository(session).list(
                filters={"id__in": [1, 2]},
                options=[selectinload(Article.comments)],
                load=["author"],
            )
        assert counter.count == 3, counter.statements
    async with db.session() as session:
        with count_queries(db) as counter:
            one = await ArticleRepository(session).get_by_id(
                1, options=[selectinload(Article.comments)], load=["tags"]
            )
        assert counter.count == 3, counter.statements
    assert [(a.author.username, len(a.comments)) for a in page] == [
        (expected[1]["author"], 2),
        (expected[2]["author"], 1),
    ]
    assert one is not None
    assert sorted(t.name for t in one.tags) == expected[1]["tags"]
    assert len(one.comments) == 2


async def test_objects_the_session_holds_keep_their_loaded_relationships(
    db: DatabaseManager,
) -> None:
    async with db.session() as session:
        articles = ArticleRepository(session)
        first = await articles.list(filters={"id__le": 3}, load=["author", "tags"])
        with count_queries(db) as counter:
            again = await articles.list(filters={"id__le": 3}, load=["author", "tags"])
        # The same objects. The fast path does not read loaded relationships again; the
        # ORM's selectin loaders do (and leave the same objects in place).
        assert counter.count == (1 if db.fast_path else 3), counter.statements
        assert [id(a) for a in again] == [id(a) for a in first]
        assert all(a.author is b.author for a, b in zip(first, again, strict=True))


async def test_a_to_one_the_session_holds_is_not_read_again(db: DatabaseManager) -> None:
    async with db.session() as session:
        jake = await ConduitUserRepository(session).get_by_id(1)
        with count_queries(db) as counter:
            page = await ArticleRepository(session).list(filters={"author_id": 1}, load=["author"])
        # The fast path takes a to-one the session holds from it; the ORM reads it again.
        assert counter.count == (1 if db.fast_path else 2), counter.statements
    assert page and all(a.author is jake for a in page)


async def test_load_inside_a_transaction_sees_its_writes(db: DatabaseManager) -> None:
    async with db.session() as session:
        articles = ArticleRepository(session)
        new = await articles.create(
            {"slug": "fresh", "title": "Fresh", "author_id": 6, "created_at": conduit_app.BASE_TIME}
        )
        await articles.link("tags", new.id, [1, 2])
        found = await articles.get_by(slug="fresh", load=["author", "tags"])
        assert found is new
        assert found.author.username == "eve"
        assert sorted(t.name for t in found.tags) == ["dragons", "training"]
        new.title = "Changed"  # not flushed yet: the read flushes it first, keeping it
        again = await articles.get_by_id(new.id, load=["comments"])
        assert again is new and again.title == "Changed" and again.comments == []
        await session.rollback()


async def test_more_rows_than_one_batch_take_one_statement_per_batch(
    seeded: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = await expected_articles(seeded)
    monkeypatch.setattr(loading, "BATCH", 8)
    async with seeded.session() as session:
        with count_queries(seeded) as counter:
            page = await ArticleRepository(session).list(limit=20, load=["tags"])
        assert counter.count == 1 + 3, counter.statements  # 20 articles: batches of 8, 8, 4
    assert {a.id: sorted(t.name for t in a.tags) for a in page} == {
        i: expected[i]["tags"] for i in range(1, 21)
    }


# -- annotate= --------------------------------------------------------------------------------


async def test_annotate_counts_agree_with_count_links(db: DatabaseManager) -> None:
    expected = await expected_articles(db)
    counted = {"favorites_count": "favorited_by", "tag_count": "tags", "comment_count": "comments"}
    async with db.session() as session:
        articles = ArticleRepository(session)
        with count_queries(db) as counter:
            page = await articles.list(limit=30, order_by=NEWEST, annotate=counted)
        assert counter.count == 1, counter.statements
        ids = [a.id for a in page]
        links = {name: await articles.count_links(key, ids) for name, key in counted.items()}
    assert len(page) == conduit_app.ARTICLE_COUNT
    for article in page:
        for name in counted:
            assert getattr(article, name) == links[name][article.id], (article.id, name)
        assert article.favorites_count == expected[article.id]["favorites"]
        assert article.comment_count == len(expected[article.id]["comments"])
    assert {a.favorites_count for a in page} >= {0, 1, 2}  # some have none, some several


async def test_annotate_a_self_referential_relationship(db: DatabaseManager) -> None:
    async with db.session() as session:
        users = ConduitUserRepository(session)
        with count_queries(db) as counter:
            everyone = await users.list(
                annotate={"follower_count": "followers", "following_count": "following"}
            )
        assert counter.count == 1, counter.statements
        ids = [u.id for u in everyone]
        followers = await users.count_links("followers", ids)
        following = await users.count_links("following", ids)
    assert [u.follower_count for u in everyone] == [followers[i] for i in ids]
    assert [u.following_count for u in everyone] == [following[i] for i in ids]
    by_name = {u.username: (u.follower_count, u.following_count) for u in everyone}
    assert by_name["cat"] == (2, 3)  # eve and cat herself; jake, ann and herself
    assert by_name["dan"] == (0, 0)


async def test_annotate_with_filters_load_and_paginate(db: DatabaseManager) -> None:
    expected = await expected_articles(db)
    async with db.session() as session:
        articles = ArticleRepository(session)
        with count_queries(db) as counter:
            page = await articles.paginate(
                2,
                4,
                filters={"tags__name": "dragons"},
                order_by=NEWEST,
                load=["author", "tags"],
                annotate={"favorites_count": "favorited_by"},
            )
        assert counter.count == 4, counter.statements  # articles+counts, authors, tags, total
    dragons = sorted((i for i, a in expected.items() if "dragons" in a["tags"]), reverse=True)
    assert page.total == len(dragons)
    assert [a.id for a in page.items] == dragons[4:8]
    for article in page.items:
        assert article.favorites_count == expected[article.id]["favorites"]
        assert article.author.username == expected[article.id]["author"]


async def test_annotate_inside_a_transaction_sees_its_writes(db: DatabaseManager) -> None:
    async with db.session() as session:
        articles = ArticleRepository(session)
        await articles.link("favorited_by", 1, [1, 2, 3, 4, 5, 6])
        (first,) = await articles.list(filters={"id": 1}, annotate={"n": "favorited_by"})
        assert first.n == 6
        await session.rollback()


async def test_annotate_flags_agree_with_linked_and_stay_one_statement(
    db: DatabaseManager,
) -> None:
    """The RealWorld list's ``favorited`` and ``author.following`` for a reader, in the
    page's own statement: the same answers as two ``linked()`` calls."""
    everyone = await expected_articles(db)
    async with db.session() as session:
        articles = ArticleRepository(session)
        users = ConduitUserRepository(session)
        by_name = {u.username: u.id for u in await users.list()}
        for reader in by_name.values():
            flags = {
                "favorites_count": "favorited_by",
                "favorited": Linked("favorited_by", reader),
                "following": Linked("author__followers", reader),
                "author_articles": "author__articles",
            }
            with count_queries(db) as counter:
                page = await articles.list(limit=30, order_by=NEWEST, annotate=flags)
            assert counter.count == 1, counter.statements
            ids = [a.id for a in page]
            favorited = await articles.linked("favorited_by", ids, reader)
            following = await users.linked("followers", {a.author_id for a in page}, reader)
            written = await users.count_links("articles", {a.author_id for a in page})
            for article in page:
                assert article.favorited is (article.id in favorited)
                assert article.following is (article.author_id in following)
                assert article.author_articles == written[article.author_id]
                assert article.favorites_count == everyone[article.id]["favorites"]
    # Somebody follows somebody and favorited something: the flags are not all False.
    assert any(a["followers"] for a in everyone.values())
    assert any(a["favorites"] for a in everyone.values())


async def test_annotate_flags_on_paginate_and_keyset(db: DatabaseManager) -> None:
    async with db.session() as session:
        articles = ArticleRepository(session)
        reader = (await ConduitUserRepository(session).get_one_by(username="cat")).id
        flags = {"favorited": Linked("favorited_by", reader)}
        favorited = await articles.linked("favorited_by", range(1, 100), reader)
        assert favorited  # cat favorited something
        with count_queries(db) as counter:
            page = await articles.paginate(offset=0, limit=50, order_by=NEWEST, annotate=flags)
        assert counter.count == 2, counter.statements  # the page with its flags, the total
        keyset = await articles.keyset(limit=50, order_by=NEWEST, annotate=flags)
    assert {a.id for a in page.items if a.favorited} == favorited
    assert {a.id for a in keyset.items if a.favorited} == favorited


async def test_annotate_a_flag_for_an_id_no_row_can_hold(db: DatabaseManager) -> None:
    huge = 2**40  # beyond the 32-bit id column: sent, it would be an overflow error
    async with db.session() as session:
        with count_queries(db) as counter:
            page = await ArticleRepository(session).list(
                limit=5, annotate={"favorited": Linked("favorited_by", huge)}
            )
    assert counter.count == 1
    assert [a.favorited for a in page] == [False] * 5


# -- bad input: ValueError before any SQL ----------------------------------------------------

BAD: dict[str, tuple[Callable[[ArticleRepository], Awaitable[Any]], str]] = {
    "load a string": (lambda r: r.list(load="author"), "load takes a list of relationship"),
    "load unknown": (
        lambda r: r.list(load=["nope"]),
        "Article has no relationship 'nope' to load; relationships: author, comments, "
        "favorited_by, tags",
    ),
    "load a column": (lambda r: r.list(load=["title"]), "no relationship 'title'"),
    "load nested unknown": (
        lambda r: r.list(load=["author__nope"]),
        "ConduitUser has no relationship 'nope' to load (in 'author__nope'); relationships: "
        "articles, followers, following",
    ),
    "load not a name": (lambda r: r.list(load=[1]), "load takes relationship names"),
    "load a mapping": (lambda r: r.list(load={"author": 1}), "load takes a list"),
    "load nine": (
        lambda r: r.list(
            load=[
                "author",
                "tags",
                "comments",
                "favorited_by",
                "author__articles",
                "author__followers",
                "author__following",
                "tags__articles",
                "comments__author",
            ]
        ),
        "load names more than 8 relationships",
    ),
    "load too deep": (
        lambda r: r.list(load=["author__articles__author__articles"]),
        "at most 3 are loaded",
    ),
    "load on get_by_id": (lambda r: r.get_by_id(1, load=["nope"]), "no relationship 'nope'"),
    "load on get_one": (lambda r: r.get_one(1, load=["nope"]), "no relationship 'nope'"),
    "load on get_by": (lambda r: r.get_by(slug="x", load=["nope"]), "no relationship 'nope'"),
    "load on get_one_by": (lambda r: r.get_one_by(id=1, load=["x"]), "no relationship 'x'"),
    "load on paginate": (lambda r: r.paginate(load=["nope"]), "no relationship 'nope'"),
    "annotate a list": (lambda r: r.list(annotate=["tags"]), "annotate takes a mapping"),
    "annotate unknown": (
        lambda r: r.list(annotate={"n": "nope"}),
        "Article cannot use 'nope': Article has no such relationship to count; usable: "
        "comments, favorited_by, tags",
    ),
    "annotate a to-one": (
        lambda r: r.list(annotate={"n": "author"}),
        "Article.author is many-to-one",
    ),
    "annotate a path": (
        lambda r: r.list(annotate={"n": "tags__name"}),
        "got 'tags__name'; allowed: author__<relationship>",
    ),
    "annotate a column name": (
        lambda r: r.list(annotate={"title": "tags"}),
        "annotate cannot set Article.title: Article already has an attribute of that name",
    ),
    "annotate a method name": (
        lambda r: r.list(annotate={"awaitable_attrs": "tags"}),
        "already has an attribute",
    ),
    "annotate a private name": (lambda r: r.list(annotate={"_n": "tags"}), "not starting with '_'"),
    "annotate a keyword": (lambda r: r.list(annotate={"class": "tags"}), "a Python identifier"),
    "annotate a flag to a list": (
        lambda r: r.list(annotate={"f": Linked("favorited_by", [1, 2])}),
        "must be one ConduitUser id",
    ),
    "annotate a flag to None": (
        lambda r: r.list(annotate={"f": Linked("favorited_by", None)}),
        "must be one ConduitUser id",
    ),
    "annotate a flag on a column": (
        lambda r: r.list(annotate={"f": Linked("title", 1)}),
        "Article cannot use 'title'",
    ),
    "annotate through a to-many": (
        lambda r: r.list(annotate={"n": "tags__articles"}),
        "through one many-to-one relationship of Article on its own foreign key",
    ),
    "annotate two steps": (
        lambda r: r.list(annotate={"n": Linked("author__articles__tags", 1)}),
        "allowed: author__<relationship>",
    ),
    "annotate a number": (
        lambda r: r.list(annotate={"n": 3}),
        "annotate['n'] takes a relationship of Article to count or Linked(relationship, id)",
    ),
    "annotate on paginate": (
        lambda r: r.paginate(annotate={"n": "author"}),
        "many-to-one",
    ),
}


@pytest.mark.parametrize("call,message", BAD.values(), ids=BAD.keys())
async def test_bad_input_raises_before_any_sql(
    seeded: DatabaseManager, call: Callable[[ArticleRepository], Awaitable[Any]], message: str
) -> None:
    async with seeded.session() as session:
        with count_queries(seeded) as counter, pytest.raises(ValueError) as caught:
            await call(ArticleRepository(session))
        assert counter.statements == []
    assert message in str(caught.value)


async def test_a_response_model_reads_loaded_relationships_and_counts(
    db: DatabaseManager,
) -> None:
    class TagOut(BaseModel):
        model_config = ConfigDict(from_attributes=True)
        name: str

    class ArticleOut(BaseModel):
        model_config = ConfigDict(from_attributes=True)
        slug: str
        tags: list[TagOut]
        favorites_count: int

    async with db.session() as session:
        (article,) = await ArticleRepository(session).list(
            filters={"slug": "article-04"},
            load=["tags"],
            annotate={"favorites_count": "favorited_by"},
        )
    out = ArticleOut.model_validate(article)
    assert out.model_dump() == {
        "slug": "article-04",
        "tags": [{"name": "dragons"}, {"name": "training"}],
        "favorites_count": 3,
    }


# -- relationships only the ORM loads as declared -----------------------------------------------


class OrderedBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Post(SoftDeleteMixin, OrderedBase):
    __tablename__ = "ld_posts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    #: Ordered: the fast path's loader does not order, so this takes the ORM path.
    notes: Mapped[list[Note]] = relationship(order_by=lambda: Note.position.desc())
    plain_notes: Mapped[list[Note]] = relationship(viewonly=True)
    #: Self-referential one-to-many: the children are rows of the parent's own table.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("ld_posts.id"), nullable=True)
    replies: Mapped[list[Post]] = relationship()


class Note(OrderedBase):
    __tablename__ = "ld_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("ld_posts.id"))
    position: Mapped[int] = mapped_column(Integer)


class Posts(BaseRepository[Post]):
    pass


async def test_an_ordered_relationship_is_loaded_in_its_order(make_db: MakeDb) -> None:
    db = await make_db(OrderedBase.metadata)
    async with db.session() as session:
        session.add_all([Post(id=1, title="a"), Post(id=2, title="b")])
        await session.flush()
        session.add_all(
            [Note(id=i, post_id=2 - i % 2, position=p) for i, p in enumerate([3, 9, 1, 7, 5], 1)]
        )
    for load in (["notes"], ["notes", "plain_notes"]):
        async with db.session() as session:
            with count_queries(db) as counter:
                posts = await Posts(session).list(load=load)
                one = await Posts(session).get_by_id(1, load=load)
            assert counter.count == 2 * (1 + len(load)), counter.statements
        assert [[n.position for n in p.notes] for p in posts] == [[5, 3, 1], [9, 7]]
        assert one is posts[0]
        if "plain_notes" in load:
            assert [sorted(n.id for n in p.plain_notes) for p in posts] == [[1, 3, 5], [2, 4]]
    async with db.session() as session:
        with count_queries(db) as counter:
            (fast,) = await Posts(session).list(filters={"id": 2}, load=["plain_notes"])
        assert counter.count == 2
        with count_queries(db) as counter:
            again = await Posts(session).get_by_id(2, load=["plain_notes"])
        # Held, with the relationship loaded: nothing to read on the fast path.
        assert again is fast and counter.count == (0 if db.fast_path else 2)


async def test_a_self_referential_one_to_many(make_db: MakeDb) -> None:
    db = await make_db(OrderedBase.metadata)
    slow = await make_db(fast_path=False, default=False)
    async with db.session() as session:
        session.add_all([Post(id=1, title="root"), Post(id=2, title="other")])
        await session.flush()
        session.add_all([Post(id=i, title=f"r{i}", parent_id=1) for i in (3, 4, 5)])
        await session.flush()
        session.add(Post(id=6, title="r3a", parent_id=3))
    for manager in (db, slow):
        async with manager.session() as session:
            with count_queries(manager) as counter:
                posts = await Posts(session).list(
                    load=["replies"], annotate={"reply_count": "replies"}
                )
            assert counter.count == 2, counter.statements
        assert [(p.id, p.reply_count) for p in posts] == [
            (1, 3),
            (2, 0),
            (3, 1),
            (4, 0),
            (5, 0),
            (6, 0),
        ]
        assert [sorted(r.id for r in p.replies) for p in posts] == [[3, 4, 5], [], [6], [], [], []]


async def test_the_scope_applies_to_the_rows_not_to_what_they_load_or_count(
    make_db: MakeDb,
) -> None:
    """Soft-deleted rows are left out of the list, as without load=; loaded relationships
    and counts reach related rows whatever their deleted_at, as paths and count_links do."""
    db = await make_db(OrderedBase.metadata)
    async with db.session() as session:
        session.add_all([Post(id=1, title="root"), Post(id=2, title="other")])
        await session.flush()
        session.add_all([Post(id=i, title=f"r{i}", parent_id=1) for i in (3, 4)])
    async with db.session() as session:
        await Posts(session).soft_delete(3)
    async with db.session() as session:
        posts = Posts(session)
        live = await posts.list(load=["replies"], annotate={"reply_count": "replies"})
        assert [(p.id, p.reply_count) for p in live] == [(1, 2), (2, 0), (4, 0)]
        assert sorted(r.id for r in live[0].replies) == [3, 4]
        counts = await posts.count_links("replies", [1])
        assert counts == {1: live[0].reply_count}
        gone = await posts.get_by_id(3, load=["replies"])
        held = await posts.get_by_id(3, load=["replies"], with_deleted=True)
        assert gone is None and held is not None and held.replies == []


async def test_keyset_takes_load_and_annotate(db: DatabaseManager) -> None:
    expected = await expected_articles(db)
    seen: list[int] = []
    token = None
    async with db.session() as session:
        articles = ArticleRepository(session)
        while True:
            with count_queries(db) as counter:
                page = await articles.keyset(
                    token,
                    limit=7,
                    order_by=NEWEST,
                    load=["author", "tags"],
                    annotate={"favorites_count": "favorited_by"},
                )
            assert counter.count == 3, counter.statements  # rows with counts, authors, tags
            seen += [a.id for a in page.items]
            for article in page.items:
                assert article.author.username == expected[article.id]["author"]
                assert sorted(t.name for t in article.tags) == expected[article.id]["tags"]
                assert article.favorites_count == expected[article.id]["favorites"]
            token = page.next
            if token is None:
                break
    async with db.session() as session:  # a fresh identity map: no author loaded yet
        with count_queries(db) as counter:
            loaded = await ArticleRepository(session).keyset(
                filters={"id__le": 4}, order_by=NEWEST, load=["comments__author"]
            )
        assert counter.count == 3, counter.statements  # rows, comments, their authors
    assert seen == sorted(expected, reverse=True)
    assert [a.id for a in loaded.items] == [4, 3, 2, 1]
    assert any(expected[i]["comments"] for i in (1, 2, 3, 4))  # a check of the data
    for article in loaded.items:
        comments = sorted((c.body, c.author.username) for c in article.comments)
        assert comments == expected[article.id]["comments"]
    with pytest.raises(ValueError, match="load"):
        async with db.session() as session:
            await ArticleRepository(session).keyset(load=["no_such_relationship"])
