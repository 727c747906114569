"""The suite's own primary and streaming standby (tests/replication.py): the standby
replays the primary's writes, lag comes on demand, and a stopped standby starts again."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from aegis_shared.database import DatabaseManager
from tests.replication import Pair


async def _replay_lsn(standby: DatabaseManager) -> int:
    async with standby.engine.connect() as conn:
        lsn = await conn.scalar(text("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn"))
    return int(lsn)


async def test_the_standby_replays_the_primary_and_lags_on_demand(
    replication_pair: Pair,
) -> None:
    primary = DatabaseManager(replication_pair.primary, pool_size=2)
    standby = DatabaseManager(replication_pair.standby, pool_size=2)
    try:
        async with standby.engine.connect() as conn:
            assert await conn.scalar(text("SELECT pg_is_in_recovery()")) is True
        async with primary.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS setup_probe (n int)"))
            await conn.execute(text("INSERT INTO setup_probe VALUES (1)"))
        async with primary.engine.connect() as conn:
            written = int(await conn.scalar(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")))
        async with asyncio.timeout(10):
            while await _replay_lsn(standby) < written:  # noqa: ASYNC110 (another server)
                await asyncio.sleep(0.02)

        replication_pair.set_apply_delay(1.0)
        try:
            await asyncio.sleep(0.2)  # the reload takes effect
            async with primary.engine.begin() as conn:
                await conn.execute(text("INSERT INTO setup_probe VALUES (2)"))
            async with standby.engine.connect() as conn:  # held back: the old state
                assert await conn.scalar(text("SELECT count(*) FROM setup_probe")) == 1
            async with asyncio.timeout(10):
                while True:
                    async with standby.engine.connect() as conn:
                        count = await conn.scalar(text("SELECT count(*) FROM setup_probe"))
                    if count == 2:
                        break
                    await asyncio.sleep(0.05)
        finally:
            replication_pair.set_apply_delay(0)
    finally:
        await primary.close()
        await standby.close()
