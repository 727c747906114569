"""``queries``: the rich reads of issue 11 on a Conduit-style schema.

1,000 users (each following 10), 20,000 articles (20 per author, 3 of 50 tags each, 0-7
favorites each), in their own tables (:mod:`bench.conduit_models`). Two calls, each in four
versions: ours (a new ``ConduitUnitOfWork`` per call, repository calls only), the SQLAlchemy
ORM written as its documentation shows (a new ``AsyncSession`` per call), Advanced
Alchemy's repository (its ``get_one_or_none`` and ``list`` with its filter objects) and, for
reference, an asyncpg pool running the SQL by hand:

* **get_by slug**: ``get_by(slug=s)``, one article by a unique column.
* **list, two lookups and a path**: ``list(filters={"views__ge": 100, "created_at__lt": t,
  "author__username": u}, order_by="-created_at", limit=20)``: an author's articles,
  filtered on two columns and on a relationship path (an ``EXISTS`` in every version).
* **Conduit article list**: RealWorld's ``GET /api/articles?tag=t`` for a signed-in reader:
  the newest 20 of a tag's ~1,200 articles, each with its author, tags, favorites count,
  ``favorited`` and ``author.following``, and the total, as the spec's JSON. Ours in
  repository calls only (``paginate(offset=, limit=, load=, annotate=)`` with the count and
  both flags as ``annotate=``: four statements); the ORM as its documentation would write
  it (one select of the articles with correlated subqueries for the count and both flags,
  ``joinedload`` of the author, ``selectinload`` of the tags, and a count: three
  statements). No asyncpg
  or Advanced Alchemy version (the goal is against the ORM).

Sequential calls in both CPU placements, interleaved rounds as in ``reads``; every
contender's answer is checked against the others' before anything is timed.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from advanced_alchemy.filters import LimitOffset, OrderBy
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import joinedload, selectinload

from aegis_shared.database import Linked
from bench.common import (
    PG_URL,
    Goal,
    Job,
    Measurement,
    PeerEngines,
    Placement,
    asyncpg_dsn,
    evaluate_goals,
    fill_server_version,
    interleave,
    pin_self,
    pinning_worked,
    placements,
    print_goals,
    print_table,
    recreate_database,
    run_sequentially,
    unpin_self,
    write_results,
)
from bench.conduit_models import (
    Article,
    Author,
    Base,
    ConduitUnitOfWork,
    Tag,
    article_tags,
    favorites,
    follows,
)

POOL_SIZE = 10
USERS = 1_000
ARTICLES = 20_000
TAGS = 50
FOLLOWS_EACH = 10
LIMIT = 20
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
#: ``created_at__lt`` of the list: leaves out the newest quarter of the articles.
BEFORE = BASE_TIME + timedelta(minutes=ARTICLES * 3 // 4)

OURS = "ours: UnitOfWork + repository"
ORM = "SA ORM: new AsyncSession per call"
AA = "Advanced Alchemy: repository"
PG_POOL = "asyncpg pool"
CONDUIT = "Conduit article list"

GET_SQL = (
    "SELECT id, slug, title, description, views, created_at, author_id "
    "FROM bench_cd_articles WHERE slug = $1"
)
LIST_SQL = (
    "SELECT a.id, a.slug, a.title, a.description, a.views, a.created_at, a.author_id "
    "FROM bench_cd_articles a WHERE a.views >= $1 AND a.created_at < $2 AND EXISTS "
    "(SELECT 1 FROM bench_cd_users u WHERE u.id = a.author_id AND u.username = $3) "
    "ORDER BY a.created_at DESC LIMIT $4"
)


class AAArticleRepository(SQLAlchemyAsyncRepository[Article]):
    model_type = Article


async def seed() -> None:
    """Create the schema's tables in the benchmark database and fill them."""
    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()
    users = [(u, f"user{u}", f"bio of {u}", f"https://img/{u}.png") for u in range(1, USERS + 1)]
    tags = [(t, f"tag{t}") for t in range(1, TAGS + 1)]
    articles = [
        (
            a,
            f"article-{a}",
            f"Title {a}",
            f"About {a}",
            (a * 37 + (a // USERS) * 53) % 1000,  # varies within an author too
            BASE_TIME + timedelta(minutes=a),
            (a % USERS) + 1,
        )
        for a in range(1, ARTICLES + 1)
    ]
    tagged = [(a, ((a * 7 + k * 13) % TAGS) + 1) for a in range(1, ARTICLES + 1) for k in range(3)]
    liked = {
        (((a * 7 + k * 131) % USERS) + 1, a) for a in range(1, ARTICLES + 1) for k in range(a % 8)
    }
    followed = {(u, ((u + k * 97) % USERS) + 1) for u in range(1, USERS + 1) for k in range(1, 11)}
    conn = await asyncpg.connect(asyncpg_dsn())
    try:
        for table, rows, columns in (
            (Author.__tablename__, users, ["id", "username", "bio", "image"]),
            ("bench_cd_tags", tags, ["id", "name"]),
            (
                Article.__tablename__,
                articles,
                ["id", "slug", "title", "description", "views", "created_at", "author_id"],
            ),
            (article_tags.name, tagged, ["article_id", "tag_id"]),
            (favorites.name, sorted(liked), ["user_id", "article_id"]),
            (follows.name, sorted(followed), ["follower_id", "followed_id"]),
        ):
            await conn.copy_records_to_table(table, records=rows, columns=columns)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


class Contenders(PeerEngines):
    """Every contender's calls on one placement."""

    # -- get_by slug --------------------------------------------------------------------------

    async def pg_get(self, slug: str) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(GET_SQL, slug)

    async def orm_get(self, slug: str) -> Any:
        async with self.sessions() as session:
            return await session.scalar(select(Article).where(Article.slug == slug))

    async def aa_get(self, slug: str) -> Any:
        async with self.aa_sessions() as session:
            return await AAArticleRepository(session=session).get_one_or_none(slug=slug)

    async def ours_get(self, slug: str) -> Any:
        async with ConduitUnitOfWork(self.db) as uow:
            return await uow.articles.get_by(slug=slug)

    # -- list with two lookups and a relationship path -------------------------------------

    async def pg_list(self, username: str) -> list[Any]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(LIST_SQL, 100, BEFORE, username, LIMIT))

    async def orm_list(self, username: str) -> list[Any]:
        statement = (
            select(Article)
            .where(
                Article.views >= 100,
                Article.created_at < BEFORE,
                Article.author.has(Author.username == username),
            )
            .order_by(Article.created_at.desc())
            .limit(LIMIT)
        )
        async with self.sessions() as session:
            return list((await session.scalars(statement)).all())

    async def aa_list(self, username: str) -> list[Any]:
        async with self.aa_sessions() as session:
            return list(
                await AAArticleRepository(session=session).list(
                    Article.views >= 100,
                    Article.created_at < BEFORE,
                    Article.author.has(Author.username == username),
                    OrderBy(field_name="created_at", sort_order="desc"),
                    LimitOffset(limit=LIMIT, offset=0),
                )
            )

    async def ours_list(self, username: str) -> list[Any]:
        async with ConduitUnitOfWork(self.db) as uow:
            return await uow.articles.list(
                filters={
                    "views__ge": 100,
                    "created_at__lt": BEFORE,
                    "author__username": username,
                },
                order_by="-created_at",
                limit=LIMIT,
            )

    # -- the Conduit article list ------------------------------------------------------------

    async def orm_conduit(self, args: tuple[int, str]) -> dict[str, Any]:
        me, tag = args
        tagged = Article.tags.any(Tag.name == tag)
        favorites_count = (
            select(func.count())
            .where(favorites.c.article_id == Article.id)
            .correlate(Article)
            .scalar_subquery()
        )
        favorited = exists().where(favorites.c.article_id == Article.id, favorites.c.user_id == me)
        following = exists().where(
            follows.c.followed_id == Article.author_id, follows.c.follower_id == me
        )
        statement = (
            select(Article, favorites_count, favorited, following)
            .where(tagged)
            .options(joinedload(Article.author), selectinload(Article.tags))
            .order_by(Article.created_at.desc(), Article.id.desc())
            .limit(LIMIT)
        )
        async with self.sessions() as session:
            rows = (await session.execute(statement)).all()
            total = await session.scalar(select(func.count()).select_from(Article).where(tagged))
        return {
            "articles": [_article_json(a, count, fav, fol) for a, count, fav, fol in rows],
            "articlesCount": total,
        }

    async def ours_conduit(self, args: tuple[int, str]) -> dict[str, Any]:
        me, tag = args
        async with ConduitUnitOfWork(self.db) as uow:
            page = await uow.articles.paginate(
                offset=0,
                limit=LIMIT,
                filters={"tags__name": tag},
                order_by=("-created_at", "-id"),
                load=["author", "tags"],
                annotate={
                    "favorites_count": "favorited_by",
                    "favorited": Linked("favorited_by", me),
                    "following": Linked("author__followers", me),
                },
            )
        return {
            "articles": [
                _article_json(a, a.favorites_count, a.favorited, a.following) for a in page.items
            ],
            "articlesCount": page.total,
        }

    def calls(self) -> dict[str, dict[str, Any]]:
        return {
            "get_by slug": {
                PG_POOL: self.pg_get,
                ORM: self.orm_get,
                AA: self.aa_get,
                OURS: self.ours_get,
            },
            "list, two lookups and a path": {
                PG_POOL: self.pg_list,
                ORM: self.orm_list,
                AA: self.aa_list,
                OURS: self.ours_list,
            },
            CONDUIT: {ORM: self.orm_conduit, OURS: self.ours_conduit},
        }


def _article_json(article: Any, count: int, favorited: bool, following: bool) -> dict[str, Any]:
    """One article of RealWorld's "Multiple Articles" response."""
    author = article.author
    return {
        "slug": article.slug,
        "title": article.title,
        "description": article.description,
        "tagList": sorted(tag.name for tag in article.tags),
        "createdAt": article.created_at.isoformat(),
        "favorited": bool(favorited),
        "favoritesCount": count,
        "author": {
            "username": author.username,
            "bio": author.bio,
            "image": author.image,
            "following": bool(following),
        },
    }


def _answer(result: Any) -> Any:
    """What two contenders must agree on: the ids, or the whole JSON of a Conduit list."""
    if isinstance(result, dict):
        return result
    rows = result if isinstance(result, list) else [result]
    return [row["id"] if isinstance(row, asyncpg.Record) else row.id for row in rows]


async def _check(calls: dict[str, dict[str, Any]], args: dict[str, list[Any]]) -> None:
    """Every contender gives the same answer, and a non-empty one, before any timing."""
    for case, by_name in calls.items():
        for arg in args[case][:5]:
            answers = {name: _answer(await fn(arg)) for name, fn in by_name.items()}
            expected = next(iter(answers.values()))
            if not expected or (isinstance(expected, dict) and not expected["articles"]):
                raise SystemExit(f"{case}({arg!r}) matches nothing: the data set is wrong")
            for name, ids in answers.items():
                if ids != expected:
                    raise SystemExit(f"{name}: {case}({arg!r}) gave {ids}, not {expected}")


NOTES = {
    (CONDUIT, ORM): (
        "select(Article, count subquery, favorited EXISTS, following EXISTS)"
        ".options(joinedload(author), selectinload(tags)) + a count: 3 statements"
    ),
    (CONDUIT, OURS): (
        "paginate(offset=0, limit=20, filters={'tags__name': t}, load=['author', 'tags'], "
        "annotate={'favorites_count': 'favorited_by', 'favorited': Linked('favorited_by', me), "
        "'following': Linked('author__followers', me)}): 4 statements"
    ),
    ("get_by slug", PG_POOL): "reference only: acquire + fetchrow",
    ("get_by slug", ORM): "session.scalar(select(Article).where(Article.slug == s))",
    ("get_by slug", AA): "get_one_or_none(slug=s)",
    ("get_by slug", OURS): "get_by(slug=s)",
    ("list, two lookups and a path", PG_POOL): "reference only: acquire + fetch, EXISTS by hand",
    ("list, two lookups and a path", ORM): (
        "select(Article).where(views >= 100, created_at < t, "
        "Article.author.has(Author.username == u)).order_by(created_at.desc()).limit(20)"
    ),
    ("list, two lookups and a path", AA): (
        "list(Article.views >= 100, Article.created_at < t, Article.author.has(...), "
        "OrderBy('created_at', 'desc'), LimitOffset(20, 0))"
    ),
    ("list, two lookups and a path", OURS): (
        'list(filters={"views__ge": 100, "created_at__lt": t, "author__username": u}, '
        'order_by="-created_at", limit=20)'
    ),
}


async def _measure(
    placement: Placement, args: dict[str, list[Any]], rounds: int, slices: int, warmup: int
) -> list[Measurement]:
    pin_self(placement)
    contenders = Contenders(placement)
    await contenders.setup()
    try:
        calls = contenders.calls()
        await _check(calls, args)
        jobs = []
        for case, by_name in calls.items():
            for name, fn in by_name.items():
                await run_sequentially(fn, args[case][:warmup])
                measurement = Measurement(
                    f"{case}, {placement.name}", name, "calls/s", note=NOTES[(case, name)]
                )
                jobs.append(Job(measurement, fn, args[case]))
        await interleave(jobs, rounds, slices, f"{placement.name}: ")
    finally:
        await contenders.close()
        unpin_self()
    return [job.measurement for job in jobs]


async def run(
    calls: int = 900,
    rounds: int = 3,
    slices: int = 3,
    warmup: int = 100,
    placement_names: tuple[str, ...] = ("split", "shared"),
) -> None:
    await recreate_database(seed_rows=0)
    await seed()
    await fill_server_version()
    rng = random.Random(42)
    args = {
        "get_by slug": [f"article-{rng.randint(1, ARTICLES)}" for _ in range(calls)],
        "list, two lookups and a path": [f"user{rng.randint(1, USERS)}" for _ in range(calls)],
        CONDUIT: [(rng.randint(1, USERS), f"tag{rng.randint(1, TAGS)}") for _ in range(calls // 3)],
    }
    all_placements = placements()
    results: list[Measurement] = []
    goals: list[Goal] = []
    for name in placement_names:
        placement = all_placements[name]
        print(f"placement {placement.name}: {placement.description}")
        results += await _measure(placement, args, rounds, slices, warmup)
        for case in args:
            if case == CONDUIT:
                goals.append(
                    Goal(f"{case} ({name}): ours / SA ORM", f"{case}, {name}", OURS, ORM, 2.0)
                )
                continue
            goals += [
                Goal(f"{case} ({name}): ours / SA ORM", f"{case}, {name}", OURS, ORM, 3.0),
                Goal(f"{case} ({name}): ours / Advanced Alchemy", f"{case}, {name}", OURS, AA, 3.0),
            ]
    baselines = {m.case: ORM for m in results}
    evaluated = evaluate_goals(results, goals)
    print_table(
        f"queries: {calls} calls of each, sequential, median of {rounds} rounds",
        results,
        baselines,
    )
    print_goals(evaluated)
    write_results(
        "queries",
        results,
        evaluated,
        {
            "calls_per_round": calls,
            "users": USERS,
            "articles": ARTICLES,
            "tags": TAGS,
            "limit": LIMIT,
            "pool_size": POOL_SIZE,
            "rounds": rounds,
            "slices_per_round": slices,
            "warmup_calls": warmup,
            "placements": {name: all_placements[name].description for name in placement_names},
            "backends_pinned": pinning_worked(),
        },
        baselines,
    )
