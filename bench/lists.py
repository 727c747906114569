"""``lists``: ``list(filters={"category": c}, limit=50)`` and ``count(filters=...)``.

Ours against a new ORM session per call, Advanced Alchemy's repository (``get_many`` with
``LimitOffset`` and ``OrderBy``, ``count``) and, for reference, an asyncpg pool. Each
category holds 500 of the 10,000 rows; calls cycle through c0..c19. Sequential calls, in
both CPU placements, interleaved as in ``reads``.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from advanced_alchemy.filters import LimitOffset, OrderBy
from sqlalchemy import func, select

from bench.aa_models import AAItemRepository
from bench.common import (
    CATEGORIES,
    SEED_ROWS,
    Goal,
    Job,
    Measurement,
    PeerEngines,
    Placement,
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
from bench.models import BenchUnitOfWork, Item

POOL_SIZE = 10
LIMIT = 50
PER_CATEGORY = SEED_ROWS // len(CATEGORIES)

OURS = "ours: UnitOfWork + repository"
ORM = "SA ORM: new AsyncSession per call"
AA = "Advanced Alchemy: repository"
PG_POOL = "asyncpg pool"

LIST_SQL = (
    "SELECT id, name, category, price, in_stock, created_at FROM bench_items "
    "WHERE category = $1 ORDER BY id LIMIT $2"
)
COUNT_SQL = "SELECT count(*) FROM bench_items WHERE category = $1"


class Contenders(PeerEngines):
    """The four contenders' list and count calls on one placement."""

    # -- list ---------------------------------------------------------------------------------

    async def pg_list(self, category: str) -> list[Any]:
        async with self.pool.acquire() as conn:
            return list(await conn.fetch(LIST_SQL, category, LIMIT))

    async def orm_list(self, category: str) -> list[Any]:
        statement = select(Item).where(Item.category == category).order_by(Item.id).limit(LIMIT)
        async with self.sessions() as session:
            return list((await session.scalars(statement)).all())

    async def aa_list(self, category: str) -> list[Any]:
        async with self.aa_sessions() as session:
            repo = AAItemRepository(session=session)
            return list(
                await repo.get_many(
                    LimitOffset(limit=LIMIT, offset=0),
                    OrderBy(field_name="id", sort_order="asc"),
                    category=category,
                )
            )

    async def ours_list(self, category: str) -> list[Any]:
        async with BenchUnitOfWork(self.db) as uow:
            return await uow.items.list(filters={"category": category}, limit=LIMIT)

    # -- count --------------------------------------------------------------------------------

    async def pg_count(self, category: str) -> int:
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(COUNT_SQL, category))

    async def orm_count(self, category: str) -> int:
        statement = select(func.count()).select_from(Item).where(Item.category == category)
        async with self.sessions() as session:
            return int(await session.scalar(statement) or 0)

    async def aa_count(self, category: str) -> int:
        async with self.aa_sessions() as session:
            return await AAItemRepository(session=session).count(category=category)

    async def ours_count(self, category: str) -> int:
        async with BenchUnitOfWork(self.db) as uow:
            return await uow.items.count(filters={"category": category})

    def calls(self) -> dict[str, dict[str, Any]]:
        return {
            "list": {
                PG_POOL: self.pg_list,
                ORM: self.orm_list,
                AA: self.aa_list,
                OURS: self.ours_list,
            },
            "count": {
                PG_POOL: self.pg_count,
                ORM: self.orm_count,
                AA: self.aa_count,
                OURS: self.ours_count,
            },
        }


async def _check(calls: dict[str, dict[str, Any]]) -> None:
    """Every contender returns the same answer for c3 before anything is timed."""
    expected_ids = list(range(4, 4 + LIMIT * len(CATEGORIES), len(CATEGORIES)))
    for name, fn in calls["list"].items():
        rows = await fn("c3")
        ids = [row["id"] if isinstance(row, asyncpg.Record) else row.id for row in rows]
        if ids != expected_ids:
            raise SystemExit(
                f"{name} list('c3') returned ids {ids[:5]}..., not {expected_ids[:5]}..."
            )
    for name, fn in calls["count"].items():
        if await fn("c3") != PER_CATEGORY:
            raise SystemExit(f"{name} count('c3') is not {PER_CATEGORY}")


NOTES = {
    ("list", PG_POOL): "reference only: acquire + fetch",
    ("list", ORM): "select(Item).where(Item.category == c).order_by(Item.id).limit(50)",
    ("list", AA): "get_many(LimitOffset(50, 0), OrderBy('id', 'asc'), category=c)",
    ("list", OURS): 'list(filters={"category": c}, limit=50)',
    ("count", PG_POOL): "reference only: acquire + fetchval",
    ("count", ORM): "select(func.count()).select_from(Item).where(Item.category == c)",
    ("count", AA): "count(category=c)",
    ("count", OURS): 'count(filters={"category": c})',
}


async def _measure(
    placement: Placement, categories: list[str], rounds: int, slices: int, warmup: int
) -> list[Measurement]:
    pin_self(placement)
    contenders = Contenders(placement)
    await contenders.setup()
    try:
        calls = contenders.calls()
        await _check(calls)
        jobs = []
        for op, by_name in calls.items():
            unit = "lists/s" if op == "list" else "counts/s"
            for name, fn in by_name.items():
                await run_sequentially(fn, categories[:warmup])
                case = f"{op}, {placement.name}"
                jobs.append(
                    Job(Measurement(case, name, unit, note=NOTES[(op, name)]), fn, categories)
                )
        await interleave(jobs, rounds, slices, f"{placement.name}: ")
    finally:
        await contenders.close()
        unpin_self()
    return [job.measurement for job in jobs]


async def run(
    calls: int = 600,
    rounds: int = 3,
    slices: int = 3,
    warmup: int = 100,
    placement_names: tuple[str, ...] = ("split", "shared"),
) -> None:
    await recreate_database()
    await fill_server_version()
    categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(calls)]
    all_placements = placements()
    results: list[Measurement] = []
    goals: list[Goal] = []
    for name in placement_names:
        placement = all_placements[name]
        print(f"placement {placement.name}: {placement.description}")
        results += await _measure(placement, categories, rounds, slices, warmup)
        goals += [
            Goal(f"list ({name}): ours / SA ORM", f"list, {name}", OURS, ORM, 2.0),
            Goal(f"count ({name}): ours / SA ORM", f"count, {name}", OURS, ORM, 2.0),
        ]
    baselines = {m.case: ORM for m in results}
    evaluated = evaluate_goals(results, goals)
    print_table(
        f"lists: {calls} list(limit={LIMIT}) and {calls} count calls, median of {rounds} rounds",
        results,
        baselines,
    )
    print_goals(evaluated)
    write_results(
        "lists",
        results,
        evaluated,
        {
            "calls_per_round": calls,
            "limit": LIMIT,
            "rows_per_category": PER_CATEGORY,
            "pool_size": POOL_SIZE,
            "rounds": rounds,
            "slices_per_round": slices,
            "warmup_calls": warmup,
            "placements": {name: all_placements[name].description for name in placement_names},
            "backends_pinned": pinning_worked(),
        },
        baselines,
    )
