"""``profile``: where our reads, lists and object-returning bulk insert spend their time,
against the ORM doing the same.

Under pyinstrument (cProfile when pyinstrument is missing): 3,000 reads through
``BenchUnitOfWork`` + ``get_by_id`` against 3,000 through a new ``AsyncSession`` +
``session.get``; 600 ``list(filters=..., limit=50)`` calls against the ORM's select; a
20,000-row ``create_many(rows)`` against ORM ``add_all`` + flush; a 100,000-row
``create_many(rows, returning=False)`` against asyncpg's COPY. Client (with the
profiler's thread) and PostgreSQL backend on separate CPUs. Writes
``bench/results/profile-<name>.txt``: inclusive time per function, self time per function
and the top of the call tree.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import random
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from aegis_shared.database import DatabaseManager
from bench.common import (
    CATEGORIES,
    ITEM_COLUMNS,
    PG_URL,
    RESULTS_DIR,
    ROOT,
    SEED_ROWS,
    as_tuples,
    asyncpg_dsn,
    make_rows,
    pin_backend,
    pin_engine,
    pin_self,
    placements,
    recreate_database,
    run_sequentially,
    truncate_items,
    unpin_self,
)
from bench.models import BenchUnitOfWork, Item

CUMULATIVE_LINES = 60
#: Frames of the harness itself, left out of the inclusive list.
_HARNESS = (
    "<thread>",
    "<frozen runpy>",
    "bench/__main__.py",
    "bench/common.py",
    "uvloop/",
    "asyncio/runners.py",
)
_WORK = ("_read", "_list", "_bulk")
FLAT_LINES = 30
TREE_LINES = 80


def _cumulative(root: Any, calls: int, top: int) -> list[str]:
    """Inclusive time per function over the whole tree (greenlet branches included),
    each function counted once per call path; the ``top`` largest."""
    totals: dict[tuple[str, str], float] = {}

    def walk(frame: Any, on_path: frozenset[tuple[str, str]]) -> None:
        if frame.is_synthetic:
            return
        name = f"{frame.class_name + '.' if frame.class_name else ''}{frame.function}"
        key = (name, f"{frame.file_path_short}:{frame.line_no}")
        harness = key[1].startswith(_HARNESS) or (
            key[1].startswith("bench/profile.py") and not frame.function.endswith(_WORK)
        )
        if key not in on_path and not harness:
            totals[key] = totals.get(key, 0.0) + frame.time
        for child in frame.children:
            walk(child, on_path | {key})

    walk(root, frozenset())
    rows = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:top]
    lines = [f"{'seconds':>8} {'us/call':>8}  function  (file:line)"]
    lines += [
        f"{seconds:8.3f} {seconds / calls * 1e6:8.1f}  {name}  ({where})"
        for (name, where), seconds in rows
    ]
    return lines


async def _profile(name: str, title: str, work: Callable[[], Awaitable[Any]], calls: int) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    if Profiler is not None:
        profiler = Profiler(interval=0.0005, async_mode="enabled")
        profiler.start()
        await work()
        session = profiler.stop()
        root = session.root_frame()
        flat = profiler.output_text(flat=True, show_all=True).splitlines()
        tree = profiler.output_text(show_all=False).splitlines()
        text = "\n".join(
            [
                f"# {title}",
                f"# pyinstrument: {session.duration:.3f} s wall, {session.cpu_time:.3f} s CPU, "
                f"{calls} calls",
                "",
                "# inclusive time per function, all call paths (top lines). SQLAlchemy runs its",
                "# sync code in greenlets, which the profiler records as separate stacks, so",
                "# greenlet_spawn's time is not inside the caller's. Waits for the server show",
                "# under asyncpg's execute and fetch. Sampling inflates the absolute times;",
                "# compare shares.",
                *_cumulative(root, calls, CUMULATIVE_LINES),
                "",
                "# self time per function (top lines)",
                *flat[:FLAT_LINES],
                "",
                "# call tree, library frames folded (top lines)",
                *tree[:TREE_LINES],
            ]
        )
    else:
        profile = cProfile.Profile()
        profile.enable()
        await work()
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(50)
        text = f"# {title}\n# cProfile ({calls} calls), sorted by cumulative time\n{out.getvalue()}"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"profile-{name}.txt"
    path.write_text(text.replace(str(ROOT) + os.sep, "").replace(str(ROOT), ".") + "\n")
    print(f"  {title}: written to {path.relative_to(ROOT)}")


async def run(
    reads: int = 3_000, lists: int = 600, rows: int = 20_000, copy_rows: int = 100_000
) -> None:
    await recreate_database()
    placement = placements()["split"]
    pin_self(placement)
    rng = random.Random(7)
    ids = [rng.randint(1, SEED_ROWS) for _ in range(reads)]
    db = DatabaseManager(PG_URL, pool_size=10, max_overflow=0)
    pin_engine(db.engine, placement)
    engine = create_async_engine(PG_URL, pool_size=10, max_overflow=0)
    pin_engine(engine, placement)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def ours_read(id: int) -> Any:
        async with BenchUnitOfWork(db) as uow:
            return await uow.items.get_by_id(id)

    async def orm_read(id: int) -> Any:
        async with sessions() as session:
            return await session.get(Item, id)

    categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(lists)]

    async def ours_list(category: str) -> Any:
        async with BenchUnitOfWork(db) as uow:
            return await uow.items.list(filters={"category": category}, limit=50)

    async def orm_list(category: str) -> Any:
        statement = select(Item).where(Item.category == category).order_by(Item.id).limit(50)
        async with sessions() as session:
            return list((await session.scalars(statement)).all())

    data = make_rows(rows)

    async def ours_bulk() -> None:
        async with BenchUnitOfWork(db) as uow:
            await uow.items.create_many(data)
            await uow.commit()

    async def orm_bulk() -> None:
        async with sessions() as session:
            session.add_all([Item(**row) for row in data])
            await session.flush()
            await session.commit()

    copy_data = make_rows(copy_rows)
    copy_tuples = as_tuples(copy_data)
    conn = await asyncpg.connect(asyncpg_dsn())
    pin_backend(conn.get_server_pid(), placement)

    async def ours_copy_bulk() -> None:
        async with BenchUnitOfWork(db) as uow:
            await uow.items.create_many(copy_data, returning=False)
            await uow.commit()

    async def asyncpg_copy_bulk() -> None:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "bench_items", records=copy_tuples, columns=ITEM_COLUMNS
            )

    try:
        for read in (ours_read, orm_read):
            await run_sequentially(read, ids[:300])  # warm-up
        await _profile(
            "ours-get_by_id",
            f"ours: {reads} x BenchUnitOfWork(db) + get_by_id",
            lambda: run_sequentially(ours_read, ids),
            reads,
        )
        await _profile(
            "orm-session-get",
            f"SA ORM: {reads} x new AsyncSession + session.get",
            lambda: run_sequentially(orm_read, ids),
            reads,
        )
        for list_call in (ours_list, orm_list):
            await run_sequentially(list_call, categories[:60])  # warm-up
        await _profile(
            "ours-list",
            f"ours: {lists} x BenchUnitOfWork(db) + list(filters=..., limit=50)",
            lambda: run_sequentially(ours_list, categories),
            lists,
        )
        await _profile(
            "orm-list",
            f"SA ORM: {lists} x new AsyncSession + select(Item)...limit(50)",
            lambda: run_sequentially(orm_list, categories),
            lists,
        )
        await truncate_items()
        await _profile(
            "ours-create_many", f"ours: create_many({rows:,} dicts) + commit", ours_bulk, rows
        )
        await truncate_items()
        await _profile(
            "orm-add_all", f"SA ORM: add_all({rows:,} Items) + flush + commit", orm_bulk, rows
        )
        await truncate_items()
        await _profile(
            "ours-create_many-returning-false",
            f"ours: create_many({copy_rows:,} dicts, returning=False) + commit",
            ours_copy_bulk,
            copy_rows,
        )
        await truncate_items()
        await _profile(
            "asyncpg-copy",
            f"asyncpg: copy_records_to_table({copy_rows:,} tuples) in a transaction",
            asyncpg_copy_bulk,
            copy_rows,
        )
    finally:
        await conn.close()
        await db.close()
        await engine.dispose()
        unpin_self()
