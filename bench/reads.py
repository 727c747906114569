"""``reads``: one row by primary key, sequentially and from 50 tasks on a pool of 10.

Every contender reads the same 5,000 random ids, in two CPU placements (see
:func:`bench.common.placements`). Contenders run interleaved (:func:`bench.common.interleave`)
so drift hits all of them alike; the median of the rounds is reported.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from aegis_shared.database import DatabaseManager
from bench.aa_models import AAItemRepository
from bench.common import (
    PG_URL,
    SEED_ROWS,
    Goal,
    Job,
    Measurement,
    Placement,
    asyncpg_dsn,
    asyncpg_pin_init,
    evaluate_goals,
    fill_server_version,
    interleave,
    pin_backend,
    pin_engine,
    pin_self,
    pinning_worked,
    placements,
    print_goals,
    print_table,
    recreate_database,
    run_concurrently,
    run_sequentially,
    unpin_self,
    write_results,
)
from bench.models import BenchUnitOfWork, Item

POOL_SIZE = 10
SQL = "SELECT id, name, category, price, in_stock, created_at FROM bench_items WHERE id = $1"

OURS = "ours: UnitOfWork + get_by_id"
ORM = "SA ORM: AsyncSession.get"
AA = "Advanced Alchemy: repository.get"
PG_POOL = "asyncpg pool"
SA_POOL_FLOOR = "SA pool + asyncpg fetchrow"
BASELINE = PG_POOL


class Contender:
    name: str
    concurrent = True
    note = ""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement

    async def setup(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def read(self, id: int) -> Any:
        raise NotImplementedError


class AsyncpgHeld(Contender):
    name = "asyncpg: held connection, prepared"
    concurrent = False
    note = "one connection, so sequential only"

    async def setup(self) -> None:
        self.conn = await asyncpg.connect(asyncpg_dsn())
        pin_backend(self.conn.get_server_pid(), self.placement)
        self.stmt = await self.conn.prepare(SQL)

    async def close(self) -> None:
        await self.conn.close()

    async def read(self, id: int) -> Any:
        return await self.stmt.fetchrow(id)


class AsyncpgPool(Contender):
    name = PG_POOL
    note = "acquire + fetchrow + release; release runs asyncpg's reset query"
    reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None

    async def setup(self) -> None:
        self.pool = await asyncpg.create_pool(
            asyncpg_dsn(),
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            reset=self.reset,
            init=asyncpg_pin_init(self.placement),
        )

    async def close(self) -> None:
        await self.pool.close()

    async def read(self, id: int) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(SQL, id)


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


class AsyncpgPoolNoReset(AsyncpgPool):
    name = "asyncpg pool, no reset query"
    note = "reference only: create_pool(reset=no-op), one round trip per read"
    reset = staticmethod(_no_reset)


_core_statement = select(Item.__table__).where(Item.__table__.c.id == bindparam("id"))


class SAContender(Contender):
    """Plain SQLAlchemy: one engine (pool of 10) per contender."""

    async def setup(self) -> None:
        self.engine: AsyncEngine = create_async_engine(PG_URL, pool_size=POOL_SIZE, max_overflow=0)
        pin_engine(self.engine, self.placement)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def close(self) -> None:
        await self.engine.dispose()


class CoreHeld(SAContender):
    name = "SA Core: held connection"
    concurrent = False
    note = "one connection, so sequential only"

    async def setup(self) -> None:
        await super().setup()
        self.conn = await self.engine.connect()

    async def close(self) -> None:
        await self.conn.close()
        await super().close()

    async def read(self, id: int) -> Any:
        return (await self.conn.execute(_core_statement, {"id": id})).first()


class CorePerRead(SAContender):
    name = "SA Core: engine.connect() per read"
    note = "BEGIN, SELECT, ROLLBACK"

    async def read(self, id: int) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(_core_statement, {"id": id})).first()


class OrmSession(SAContender):
    name = ORM
    note = "new AsyncSession per read"

    async def read(self, id: int) -> Any:
        async with self.sessions() as session:
            return await session.get(Item, id)


class AdvancedAlchemy(SAContender):
    name = AA
    note = "new AsyncSession + SQLAlchemyAsyncRepository per read"

    async def read(self, id: int) -> Any:
        async with self.sessions() as session:
            return await AAItemRepository(session=session).get(id)


class SAPoolDriver(SAContender):
    name = SA_POOL_FLOOR
    note = (
        "reference only: engine.raw_connection() + asyncpg fetchrow + close, no session; "
        "the floor for any read through SQLAlchemy's pool"
    )

    async def read(self, id: int) -> Any:
        connection = await self.engine.raw_connection()
        try:
            return await connection.driver_connection.fetchrow(SQL, id)
        finally:
            connection.close()


class Ours(Contender):
    name = OURS
    note = "new BenchUnitOfWork(db) per read"

    async def setup(self) -> None:
        self.db = DatabaseManager(PG_URL, pool_size=POOL_SIZE, max_overflow=0)
        pin_engine(self.db.engine, self.placement)

    async def close(self) -> None:
        await self.db.close()

    async def read(self, id: int) -> Any:
        async with BenchUnitOfWork(self.db) as uow:
            return await uow.items.get_by_id(id)


class OursThroughPgbouncer(Ours):
    name = "ours through pgbouncer (transaction mode)"
    note = (
        "the same reads, DATABASE_PGBOUNCER=true, through pgbouncer 1.18 (default_pool_size "
        "20, tests/pgbouncer.py); its server connections cannot be pinned: issue 13"
    )

    async def setup(self) -> None:
        from sqlalchemy.engine import make_url

        from tests import pgbouncer

        if pgbouncer.binary() is None:
            raise SystemExit(f"bench reads needs pgbouncer: {pgbouncer.INSTALL_HINT}")
        self.stack = contextlib.ExitStack()
        bouncer = self.stack.enter_context(pgbouncer.running(make_url(PG_URL), pool_size=20))
        self.db = DatabaseManager(
            bouncer, pool_size=POOL_SIZE, max_overflow=0, pgbouncer=True, direct_url=PG_URL
        )

    async def close(self) -> None:
        await super().close()
        self.stack.close()


CONTENDERS: list[type[Contender]] = [
    AsyncpgHeld,
    AsyncpgPool,
    AsyncpgPoolNoReset,
    CoreHeld,
    CorePerRead,
    OrmSession,
    AdvancedAlchemy,
    SAPoolDriver,
    Ours,
    OursThroughPgbouncer,
]


def _name_of(row: Any) -> Any:
    if isinstance(row, asyncpg.Record):
        return row["name"]
    if hasattr(row, "_mapping"):
        return row._mapping["name"]
    return getattr(row, "name", None)


def _goals(placement: str) -> list[Goal]:
    seq, conc = f"sequential, {placement}", f"50 tasks, {placement}"
    return [
        Goal(f"reads seq ({placement}): ours / SA ORM", seq, OURS, ORM, 3.0),
        Goal(f"reads seq ({placement}): ours / Advanced Alchemy", seq, OURS, AA, 3.0),
        Goal(f"reads seq ({placement}): ours / asyncpg pool", seq, OURS, PG_POOL, 0.75),
        Goal(f"reads 50 tasks ({placement}): ours / SA ORM", conc, OURS, ORM, 3.0),
        Goal(f"reads 50 tasks ({placement}): ours / Advanced Alchemy", conc, OURS, AA, 3.0),
        Goal(f"reads 50 tasks ({placement}): ours / asyncpg pool", conc, OURS, PG_POOL, 0.75),
    ]


async def _measure(
    placement: Placement, ids: list[int], tasks: int, rounds: int, slices: int, warmup: int
) -> list[Measurement]:
    pin_self(placement)
    contenders = [cls(placement) for cls in CONTENDERS]
    jobs = [
        Job(
            Measurement(f"sequential, {placement.name}", c.name, "reads/s", note=c.note),
            c.read,
            ids,
        )
        for c in contenders
    ] + [
        Job(
            Measurement(f"{tasks} tasks, {placement.name}", c.name, "reads/s", note=c.note),
            c.read,
            ids,
            tasks,
        )
        for c in contenders
        if c.concurrent
    ]
    try:
        for c in contenders:
            await c.setup()
            if _name_of(await c.read(1)) != "item 0":
                raise SystemExit(f"{c.name} did not read row 1 as seeded")
        for c in contenders:
            await run_sequentially(c.read, ids[:warmup])
            if c.concurrent:
                await run_concurrently(c.read, ids[:warmup], tasks)
        await interleave(jobs, rounds, slices, f"{placement.name}: ")
    finally:
        for c in contenders:
            await c.close()
        unpin_self()
    return [job.measurement for job in jobs]


async def run(
    reads: int = 5_000,
    tasks: int = 50,
    rounds: int = 3,
    slices: int = 5,
    warmup: int = 300,
    placement_names: tuple[str, ...] = ("split", "shared"),
) -> None:
    await recreate_database()
    await fill_server_version()
    rng = random.Random(42)
    ids = [rng.randint(1, SEED_ROWS) for _ in range(reads)]
    all_placements = placements()
    results: list[Measurement] = []
    goals: list[Goal] = []
    for name in placement_names:
        placement = all_placements[name]
        print(f"placement {placement.name}: {placement.description}")
        results += await _measure(placement, ids, tasks, rounds, slices, warmup)
        goals += _goals(placement.name)
    baselines = {m.case: BASELINE for m in results}
    evaluated = evaluate_goals(results, goals)
    print_table(f"reads: {reads} primary-key reads, median of {rounds} rounds", results, baselines)
    print_goals(evaluated)
    write_results(
        "reads",
        results,
        evaluated,
        {
            "reads": reads,
            "concurrent_tasks": tasks,
            "pool_size": POOL_SIZE,
            "rounds": rounds,
            "slices_per_round": slices,
            "warmup_reads": warmup,
            "ids": f"random.Random(42).randint(1, {SEED_ROWS}), {reads} of them",
            "placements": {name: all_placements[name].description for name in placement_names},
            "backends_pinned": pinning_worked(),
        },
        baselines,
    )
