"""The Conduit article list and feed (tests/conduit_app.py, repository calls only) against
the RealWorld spec's "Multiple Articles" response, in four statements, on SQLite,
PostgreSQL and MariaDB, with the fast path on and off.

Every response is compared with one built here, independently, from plain SQLAlchemy ORM
queries over the whole data set (filtered, ordered and sliced in Python). The data has
ties in ``created_at``, articles without tags or favorites, a user with no articles and
one who follows themselves (see :func:`tests.conduit_app.seed`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from aegis_shared.database import DatabaseManager
from aegis_shared.testing import assert_max_queries
from tests import conduit_app
from tests.conduit_models import Article, ConduitBase, follows
from tests.conftest import MakeDb

#: (limit, offset) of the pages read for every case: the first page, the second (26
#: articles: a short one), a small page that starts and ends inside created_at ties, one
#: past the end.
PAGES = [(20, 0), (20, 20), (5, 3), (3, 100)]
#: (current user id or None, label): anonymous, jake, cat (follows herself), eve (writes
#: nothing, follows cat).
READERS = [(None, "anonymous"), (1, "jake"), (4, "cat"), (6, "eve")]

Predicate = Callable[[Article, "Oracle"], bool]

FILTERS: dict[str, tuple[dict[str, str], Predicate]] = {
    "all": ({}, lambda a, o: True),
    "tag": ({"tag": "dragons"}, lambda a, o: "dragons" in {t.name for t in a.tags}),
    "unused tag": ({"tag": "unused"}, lambda a, o: False),
    "author": ({"author": "ann"}, lambda a, o: a.author.username == "ann"),
    "author without articles": ({"author": "eve"}, lambda a, o: False),
    "unknown author": ({"author": "nobody"}, lambda a, o: False),
    "favorited": (
        {"favorited": "bob"},
        lambda a, o: "bob" in {u.username for u in a.favorited_by},
    ),
    "tag and favorited": (
        {"tag": "training", "favorited": "ann"},
        lambda a, o: (
            "training" in {t.name for t in a.tags} and "ann" in {u.username for u in a.favorited_by}
        ),
    ),
}


class Oracle:
    """Every article, its author, tags and favoriting users, and every follow, read with
    plain ORM queries; the expected responses are built from these alone."""

    def __init__(self, articles: list[Article], follow_rows: set[tuple[int, int]]) -> None:
        self.articles = articles
        self.follows = follow_rows

    def response(self, me: int | None, keep: Predicate, limit: int, offset: int) -> dict[str, Any]:
        matching = [a for a in self.articles if keep(a, self)]
        matching.sort(key=lambda a: (a.created_at, a.id), reverse=True)
        return {
            "articles": [self.article(a, me) for a in matching[offset : offset + limit]],
            "articlesCount": len(matching),
        }

    def article(self, a: Article, me: int | None) -> dict[str, Any]:
        fans = {u.id for u in a.favorited_by}
        return {
            "slug": a.slug,
            "title": a.title,
            "description": a.description,
            "tagList": sorted(t.name for t in a.tags),
            "createdAt": a.created_at.isoformat(),
            "updatedAt": a.updated_at.isoformat(),
            "favorited": me is not None and me in fans,
            "favoritesCount": len(fans),
            "author": {
                "username": a.author.username,
                "bio": a.author.bio,
                "image": a.author.image,
                "following": me is not None and (me, a.author.id) in self.follows,
            },
        }


@pytest.fixture
async def seeded(make_db: MakeDb) -> DatabaseManager:
    manager = await make_db(ConduitBase.metadata)
    await conduit_app.seed(manager)
    return manager


@pytest.fixture(params=["fast", "orm"])
async def db(request: pytest.FixtureRequest, seeded: DatabaseManager, make_db: MakeDb) -> Any:
    if request.param == "fast":
        return seeded
    return await make_db(fast_path=False, default=False)


@pytest.fixture
async def oracle(seeded: DatabaseManager) -> Oracle:
    async with seeded.session() as session:
        articles = await session.scalars(
            select(Article).options(
                selectinload(Article.author),
                selectinload(Article.tags),
                selectinload(Article.favorited_by),
            )
        )
        rows = await session.execute(select(follows.c.follower_id, follows.c.followed_id))
        return Oracle(list(articles.all()), {(int(a), int(b)) for a, b in rows.all()})


def test_the_data_has_what_the_cases_need(oracle: Oracle) -> None:
    times = [a.created_at for a in oracle.articles]
    assert len(set(times)) < len(times)  # ties in created_at
    assert any(not a.tags for a in oracle.articles)
    assert any(not a.favorited_by for a in oracle.articles)
    assert (4, 4) in oracle.follows  # cat follows herself
    assert not any(a.author_id == 6 for a in oracle.articles)  # eve writes nothing


@pytest.mark.parametrize("me,who", READERS, ids=[who for _, who in READERS])
@pytest.mark.parametrize("name", FILTERS)
async def test_article_list(
    db: DatabaseManager, oracle: Oracle, me: int | None, who: str, name: str
) -> None:
    params, keep = FILTERS[name]
    for limit, offset in PAGES:
        async with db.session() as session:
            with assert_max_queries(4, db):
                response = await conduit_app.list_articles(
                    session, me, limit=limit, offset=offset, **params
                )
        assert response == oracle.response(me, keep, limit, offset), (limit, offset)


@pytest.mark.parametrize("me", [1, 4, 5, 6], ids=["jake", "cat", "dan follows nobody", "eve"])
async def test_feed(db: DatabaseManager, oracle: Oracle, me: int) -> None:
    def followed(article: Article, o: Oracle) -> bool:
        return (me, article.author_id) in o.follows

    for limit, offset in PAGES:
        async with db.session() as session:
            with assert_max_queries(4, db):
                response = await conduit_app.feed(session, me, limit=limit, offset=offset)
        assert response == oracle.response(me, followed, limit, offset), (limit, offset)


async def test_a_full_page_is_four_statements_for_readers_and_anonymous(
    db: DatabaseManager,
) -> None:
    async with db.session() as session:
        with assert_max_queries(4, db) as counter:
            response = await conduit_app.list_articles(session, 1)
    assert len(response["articles"]) == 20
    # articles with counts and both flags, authors, tags, total
    assert counter.count == 4, counter.statements
    async with db.session() as session:
        with assert_max_queries(4, db) as counter:
            await conduit_app.list_articles(session)
    assert counter.count == 4, counter.statements


async def test_the_feed_of_a_self_follower_includes_her_own_articles(
    db: DatabaseManager, oracle: Oracle
) -> None:
    async with db.session() as session:
        response = await conduit_app.feed(session, 4, limit=50)
    authors = {a["author"]["username"] for a in response["articles"]}
    assert authors == {"jake", "ann", "cat"}
    assert all(a["author"]["following"] for a in response["articles"])


async def test_following_oneself_is_refused_by_the_app(seeded: DatabaseManager) -> None:
    async with seeded.session() as session:
        with pytest.raises(ValueError, match="cannot follow themselves"):
            await conduit_app.follow(session, 1, 1)


async def test_over_http(seeded: DatabaseManager, oracle: Oracle) -> None:
    """The same responses through FastAPI (``Depends(get_session)``, the middleware, JSON
    on the wire), still at most four statements per request."""
    transport = httpx.ASGITransport(app=conduit_app.make_app())
    requests: list[tuple[str, dict[str, str], int | None, Predicate]] = [
        ("/api/articles", {}, None, FILTERS["all"][1]),
        ("/api/articles", {"tag": "dragons", "limit": "5"}, 1, FILTERS["tag"][1]),
        ("/api/articles", {"favorited": "bob", "offset": "2"}, 4, FILTERS["favorited"][1]),
        ("/api/articles/feed", {}, 4, lambda a, o: (4, a.author_id) in o.follows),
    ]
    async with httpx.AsyncClient(transport=transport, base_url="http://conduit") as client:
        for path, params, me, keep in requests:
            headers = {} if me is None else {"X-User-Id": str(me)}
            with assert_max_queries(4, seeded):
                response = await client.get(path, params=params, headers=headers)
            assert response.status_code == 200, response.text
            limit, offset = int(params.get("limit", 20)), int(params.get("offset", 0))
            assert response.json() == oracle.response(me, keep, limit, offset), path
