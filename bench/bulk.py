"""``bulk``: 100,000 rows into an empty ``bench_items``, each load committed.

Every contender gets the same pre-built rows (a list of dicts; asyncpg the same values as
tuples). Before each load the table is emptied (``TRUNCATE ... RESTART IDENTITY``) and
after it the row count is checked; neither is timed. The ORM's ``add_all`` + flush loads
20,000 rows (its rate is per row, so it compares directly). One CPU placement: client and
its PostgreSQL backend on separate CPUs, so the server's work does not steal the client's.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from aegis_shared.database import DatabaseManager
from bench.common import (
    ITEM_COLUMNS,
    PG_URL,
    Goal,
    Measurement,
    as_tuples,
    asyncpg_dsn,
    count_items,
    evaluate_goals,
    fill_server_version,
    make_rows,
    pin_backend,
    pin_engine,
    pin_self,
    pinning_worked,
    placements,
    print_goals,
    print_table,
    recreate_database,
    timed,
    truncate_items,
    unpin_self,
    write_results,
)
from bench.models import BenchUnitOfWork, Item

COPY = "asyncpg: copy_records_to_table"
EXECUTEMANY = "asyncpg: executemany"
SA_INSERT = "SA: session.execute(insert(Item), rows)"
ORM_ADD = "SA ORM: add_all + flush"
OURS_COUNT = "ours: create_many(returning=False)"
OURS_OBJECTS = "ours: create_many(rows)"
INSERT_SQL = (
    "INSERT INTO bench_items (name, category, price, in_stock, created_at) "
    "VALUES ($1, $2, $3, $4, $5)"
)


async def run(rows: int = 100_000, orm_rows: int = 20_000, rounds: int = 3) -> None:
    await recreate_database(seed_rows=0)
    await fill_server_version()
    placement = placements()["split"]
    print(f"placement {placement.name}: {placement.description}")
    pin_self(placement)
    warm_rows = 2_000
    data = make_rows(rows)
    tuples = as_tuples(data)
    # Every load reads its input from here, sliced before any timing starts.
    dicts_by_size = {n: data[:n] for n in (warm_rows, orm_rows, rows)}
    tuples_by_size = {n: tuples[:n] for n in (warm_rows, orm_rows, rows)}

    conn = await asyncpg.connect(asyncpg_dsn())
    pin_backend(conn.get_server_pid(), placement)
    engine = create_async_engine(PG_URL, pool_size=2, max_overflow=0)
    pin_engine(engine, placement)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    db = DatabaseManager(PG_URL, pool_size=2, max_overflow=0)
    pin_engine(db.engine, placement)

    async def copy(n: int) -> None:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "bench_items", records=tuples_by_size[n], columns=ITEM_COLUMNS
            )

    async def executemany(n: int) -> None:
        async with conn.transaction():
            await conn.executemany(INSERT_SQL, tuples_by_size[n])

    async def sa_insert(n: int) -> None:
        async with sessions() as session:
            await session.execute(insert(Item), dicts_by_size[n])
            await session.commit()

    async def orm_add(n: int) -> None:
        async with sessions() as session:
            session.add_all([Item(**row) for row in dicts_by_size[n]])
            await session.flush()
            await session.commit()

    async def ours_count(n: int) -> None:
        async with BenchUnitOfWork(db) as uow:
            written = await uow.items.create_many(dicts_by_size[n], returning=False)
            await uow.commit()
        if written != n:
            raise SystemExit(f"create_many(returning=False) said {written} rows, not {n}")

    async def ours_objects(n: int) -> None:
        async with BenchUnitOfWork(db) as uow:
            items = await uow.items.create_many(dicts_by_size[n])
            await uow.commit()
        if len(items) != n or items[-1].id != n:
            raise SystemExit("create_many(rows) did not return persistent objects with ids")

    held = "one held connection, in a transaction"
    loads: list[tuple[Measurement, Callable[[int], Awaitable[Any]], int]] = [
        (Measurement("bulk", COPY, "rows/s", note=held), copy, rows),
        (Measurement("bulk", EXECUTEMANY, "rows/s", note=held), executemany, rows),
        (
            Measurement("bulk", SA_INSERT, "rows/s", note="ORM bulk INSERT (insertmanyvalues)"),
            sa_insert,
            rows,
        ),
        (
            Measurement("bulk", ORM_ADD, "rows/s", note=f"{orm_rows:,} rows, Item(**row) each"),
            orm_add,
            orm_rows,
        ),
        (
            Measurement(
                "bulk", OURS_COUNT, "rows/s", note="COPY in the unit of work's transaction"
            ),
            ours_count,
            rows,
        ),
        (
            Measurement("bulk", OURS_OBJECTS, "rows/s", note="persistent Item objects with ids"),
            ours_objects,
            rows,
        ),
    ]
    try:
        print(f"warming up every contender ({warm_rows:,} rows each) ...")
        for measurement, load, _ in loads:
            await truncate_items()
            await load(warm_rows)
            if await count_items() != warm_rows:
                raise SystemExit(f"{measurement.contender} did not write {warm_rows} rows")
        for round_no in range(rounds):
            shift = round_no % len(loads)
            for measurement, load, count in loads[shift:] + loads[:shift]:
                await truncate_items()
                gc.collect()
                seconds = await timed(lambda load=load, count=count: load(count))
                found = await count_items()
                if found != count:
                    raise SystemExit(f"{measurement.contender} left {found} rows, not {count}")
                measurement.rates.append(count / seconds)
            print(f"  round {round_no + 1}/{rounds} done")
    finally:
        await conn.close()
        await engine.dispose()
        await db.close()
        unpin_self()
    results = [measurement for measurement, _, _ in loads]
    baselines = {"bulk": COPY}
    goals = evaluate_goals(
        results,
        [Goal("bulk: ours (returning=False) / asyncpg COPY", "bulk", OURS_COUNT, COPY, 0.8)],
    )
    print_table(f"bulk: {rows:,} rows per load, median of {rounds} rounds", results, baselines)
    print_goals(goals)
    write_results(
        "bulk",
        results,
        goals,
        {
            "rows": rows,
            "orm_rows": orm_rows,
            "warmup_rows": warm_rows,
            "rounds": rounds,
            "placement": placement.description,
            "backends_pinned": pinning_worked(),
        },
        baselines,
    )
