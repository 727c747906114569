"""The RealWorld "Conduit" article list and feed, written with repository calls only.

What an application's handlers would hold (``GET /api/articles`` and
``GET /api/articles/feed``): no ``select()`` here, only ``BaseRepository`` calls on the
Conduit model of tests/conduit_models.py, and the response shaped as the spec's "Multiple
Articles" JSON. A page of 20 articles with authors, tags, favorites and follows costs
four statements (tests/test_conduit.py checks it on every backend):

1. the articles, each with its favorites count and, for a reader, whether the reader
   favorited it and follows its author (``paginate(offset=, limit=, load=...,
   annotate={..., "favorited": Linked("favorited_by", me), "following":
   Linked("author__followers", me)})``),
2. their authors and 3. their tags (the two ``load=`` relationships),
4. the total (the page's second statement).

:func:`make_app` serves both over FastAPI.

Also :func:`seed`: a data set with ties in ``created_at``, articles without tags or
favorites, a user with no articles, a user who follows themselves, and a few comments.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Depends, FastAPI, Header
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import DatabaseManager, Linked, UnitOfWork, get_session
from aegis_shared.web import DatabaseSessionMiddleware, install_error_handlers
from tests.conduit_models import (
    Article,
    ArticleRepository,
    CommentRepository,
    ConduitUser,
    ConduitUserRepository,
    TagRepository,
)


class ConduitUnitOfWork(UnitOfWork):
    """The app's repositories, declared once: on the request's session in a handler
    (``ConduitUnitOfWork.wrap(session)``), or on its own in background work."""

    articles: ArticleRepository
    users: ConduitUserRepository


#: Newest first; articles created in the same instant by id, newest (highest) first, so
#: every page of a listing is well defined.
ORDER = ("-created_at", "-id")


async def list_articles(
    session: AsyncSession,
    current_user_id: int | None = None,
    *,
    tag: str | None = None,
    author: str | None = None,
    favorited: str | None = None,
    limit: int = 20,
    offset: int = 0,
) -> dict[str, Any]:
    """``GET /api/articles?tag=&author=&favorited=&limit=&offset=``."""
    filters: dict[str, Any] = {}
    if tag is not None:
        filters["tags__name"] = tag
    if author is not None:
        filters["author__username"] = author
    if favorited is not None:
        filters["favorited_by__username"] = favorited
    return await _articles(session, current_user_id, filters, limit, offset)


async def feed(
    session: AsyncSession, current_user_id: int, *, limit: int = 20, offset: int = 0
) -> dict[str, Any]:
    """``GET /api/articles/feed``: articles by the authors the reader follows."""
    return await _articles(
        session, current_user_id, {"author__followers__id": current_user_id}, limit, offset
    )


async def _articles(
    session: AsyncSession,
    me: int | None,
    filters: dict[str, Any],
    limit: int,
    offset: int,
) -> dict[str, Any]:
    uow = ConduitUnitOfWork.wrap(session)
    articles = uow.articles
    annotate: dict[str, str | Linked] = {"favorites_count": "favorited_by"}
    if me is not None:
        annotate["favorited"] = Linked("favorited_by", me)
        annotate["following"] = Linked("author__followers", me)
    page = await articles.paginate(
        offset=offset,
        limit=limit,
        filters=filters,
        order_by=ORDER,
        load=["author", "tags"],
        annotate=annotate,
    )
    # An anonymous reader has favorited nothing and follows nobody.
    return {
        "articles": [
            article_json(a, me is not None and a.favorited, me is not None and a.following)
            for a in page.items
        ],
        "articlesCount": page.total,
    }


def article_json(article: Article, favorited: bool, following: bool) -> dict[str, Any]:
    """One article of a "Multiple Articles" response (the spec leaves ``body`` out)."""
    return {
        "slug": article.slug,
        "title": article.title,
        "description": article.description,
        "tagList": sorted(tag.name for tag in article.tags),
        "createdAt": article.created_at.isoformat(),
        "updatedAt": article.updated_at.isoformat(),
        "favorited": favorited,
        "favoritesCount": article.favorites_count,
        "author": profile_json(article.author, following),
    }


def profile_json(user: ConduitUser, following: bool) -> dict[str, Any]:
    return {
        "username": user.username,
        "bio": user.bio,
        "image": user.image,
        "following": following,
    }


def make_app() -> FastAPI:
    """The two endpoints over HTTP: the request's session from ``Depends(get_session)``
    under ``DatabaseSessionMiddleware``. The reader's id comes in ``X-User-Id``, standing
    in for the spec's JWT (authentication is not what these tests are about)."""
    app = FastAPI()
    app.add_middleware(DatabaseSessionMiddleware)
    install_error_handlers(app)

    @app.get("/api/articles")
    async def articles(
        session: AsyncSession = Depends(get_session),  # noqa: B008
        x_user_id: int | None = Header(default=None),
        tag: str | None = None,
        author: str | None = None,
        favorited: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> dict[str, Any]:
        return await list_articles(
            session,
            x_user_id,
            tag=tag,
            author=author,
            favorited=favorited,
            limit=limit,
            offset=offset,
        )

    @app.get("/api/articles/feed")
    async def articles_feed(
        session: AsyncSession = Depends(get_session),  # noqa: B008
        x_user_id: int = Header(),
        limit: int = 20,
        offset: int = 0,
    ) -> dict[str, Any]:
        return await feed(session, x_user_id, limit=limit, offset=offset)

    return app


async def follow(session: AsyncSession, follower_id: int, followed_id: int) -> None:
    """``POST /api/profiles/:username/follow``; following oneself is refused, as the spec's
    reference implementations do."""
    if follower_id == followed_id:
        raise ValueError("a user cannot follow themselves")
    await ConduitUserRepository(session).link("following", follower_id, [followed_id])


# -- the data set --------------------------------------------------------------------------

USERS = [  # (username, bio, image); ids 1..6 in this order
    ("jake", "I work at statefarm", "https://i.example/jake.png"),
    ("ann", "Writer", None),
    ("bob", None, None),
    ("cat", "Cats", "https://i.example/cat.png"),
    ("dan", None, "https://i.example/dan.png"),
    ("eve", "No articles", None),
]
FOLLOWS = [(1, 2), (1, 3), (2, 1), (3, 2), (4, 1), (4, 2), (6, 4)]
#: Inserted by link() directly: the app refuses it (:func:`follow`), the listing must
#: still show such data without a fault (cat's own articles read as ``following``).
SELF_FOLLOW = (4, 4)
TAGS = ["dragons", "training", "zoo", "python", "unused"]
ARTICLE_COUNT = 26
COMMENTS = [("Nice one!", 1, 2), ("nice, but long", 1, 3), ("Meh", 2, 1)]  # body, article, author
BASE_TIME = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def article_spec(i: int) -> dict[str, Any]:
    """Article ``i`` (0-based; id ``i + 1``): author, time (pairs share an instant), tags
    (none for every fourth), favoriting users (none for every seventh)."""
    tags = [] if i % 4 == 0 else sorted({TAGS[i % 3], TAGS[(i * 7) % 4]})
    fans = [] if i % 7 == 0 else [u for u in range(1, 7) if (i + u) % (2 + i % 3) == 0]
    return {
        "slug": f"article-{i + 1:02d}",
        "title": f"Article {i + 1}",
        "description": f"About {i + 1}",
        "author_id": i % 5 + 1,  # eve (6) writes nothing
        "created_at": BASE_TIME + timedelta(minutes=i // 2),
        "tags": tags,
        "fans": fans,
    }


async def seed(db: DatabaseManager) -> None:
    """The Conduit data set above, written through the repositories."""
    async with db.session() as session:
        users = ConduitUserRepository(session)
        await users.create_many(
            [
                {"username": n, "email": f"{n}@example.com", "bio": b, "image": im}
                for n, b, im in USERS
            ]
        )
        for follower, followed in FOLLOWS:
            await follow(session, follower, followed)
        await users.link("following", SELF_FOLLOW[0], [SELF_FOLLOW[1]])
        tags = await TagRepository(session).create_many([{"name": name} for name in TAGS])
        tag_ids = {tag.name: tag.id for tag in tags}
        articles = ArticleRepository(session)
        specs = [article_spec(i) for i in range(ARTICLE_COUNT)]
        created = await articles.create_many(
            [
                {k: spec[k] for k in ("slug", "title", "description", "author_id", "created_at")}
                for spec in specs
            ]
        )
        for article, spec in zip(created, specs, strict=True):
            assert article.id == int(spec["slug"].rsplit("-", 1)[1])
            await articles.set_links("tags", article.id, [tag_ids[t] for t in spec["tags"]])
            await articles.link("favorited_by", article.id, spec["fans"])
        await CommentRepository(session).create_many(
            [{"body": body, "article_id": a, "author_id": u} for body, a, u in COMMENTS]
        )
