"""Each backend answers through a DatabaseManager."""

from aegis_shared.database import DatabaseManager


async def test_health_check(db: DatabaseManager) -> None:
    assert await db.health_check() is True
    async with db.session() as session:
        assert (await session.execute("SELECT 1")).scalar() == 1
