"""The seed 000/001 flows end to end on the embedded SQLite default (``make demo``).

Run it with another database by setting DATABASE_URL, e.g.
``DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/test python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import selectinload

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis_shared.config import Settings
from aegis_shared.database import (
    BackgroundUnitOfWork,
    BaseRepository,
    DatabaseManager,
    TransactionManager,
    UnitOfWork,
    configure_database,
    with_db_retry,
)
from aegis_shared.errors.exceptions import (
    DuplicateEntityError,
    EntityNotFoundError,
    RelationshipNotLoadedError,
)
from examples.quickstart_models import Base, Policy, User, UserAccessLog


class UserRepository(BaseRepository[User]):
    async def get_by_email(self, email: str) -> User | None:
        result = await self.session.execute(select(User).where(User.email == email))
        return result.scalar_one_or_none()


class PolicyRepository(BaseRepository[Policy]):
    pass


class UserAccessLogRepository(BaseRepository[UserAccessLog]):
    pass


class AppUnitOfWork(UnitOfWork):
    users: UserRepository
    policies: PolicyRepository
    user_access_logs: UserAccessLogRepository


class BackgroundAppUnitOfWork(BackgroundUnitOfWork):
    user_access_logs: UserAccessLogRepository


def step(text: str) -> None:
    print(f"-> {text}")


async def main() -> None:
    settings = Settings()
    db = configure_database(DatabaseManager.from_settings(settings))
    step(f"database: {db!r}")
    await db.drop_all(Base.metadata)
    await db.create_all(Base.metadata)

    # Seed 001: a standalone session commits on success.
    async with db.session() as session:
        users = UserRepository(session)
        user = await users.create(User(email="user@example.com", name="John Doe"))
        step(f"created user id={user.id} at {user.created_at:%H:%M:%S} UTC")
        await users.update(user.id, name="Jane Doe")
        found = await users.get_by_email("user@example.com")
        step(f"renamed to {found.name if found else None!r}")
        rows = (await session.execute("SELECT count(*) FROM users")).scalar_one()
        step(f"plain SQL string works: {rows} user(s)")

    # Seed 001: TransactionManager, with a SAVEPOINT that fails on its own.
    async with db.session() as session:
        tm = TransactionManager(session)
        async with tm.transaction():
            policy = await PolicyRepository(session).create(Policy(user_id=user.id, title="P1"))
            tm.on_commit(lambda: step("on_commit: policy saved"))
            try:
                async with tm.transaction():
                    await UserRepository(session).create({"email": "user@example.com", "name": "X"})
            except DuplicateEntityError as exc:
                step(f"inner block rolled back alone: {exc.message.split(':')[0]}")
        step(f"policy id={policy.id} committed")

    # Seed 000: a unit of work commits explicitly; leaving without commit rolls back.
    async with AppUnitOfWork() as uow:
        await uow.user_access_logs.create({"user_id": user.id, "path": "/logs"})
        await uow.commit()
    async with AppUnitOfWork() as uow:
        await uow.user_access_logs.create({"user_id": user.id, "path": "/never-saved"})
    async with BackgroundAppUnitOfWork() as uow:
        saved = await uow.user_access_logs.count()
        step(f"access logs saved: {saved} (the uncommitted one was rolled back)")

    # Loading safety: a clear error instead of MissingGreenlet.
    async with AppUnitOfWork() as uow:
        loaded = await uow.users.get_one(user.id)
        try:
            _ = loaded.policies
        except RelationshipNotLoadedError as exc:
            step(f"lazy load refused: {str(exc).split('.')[0]}.{str(exc).split('.')[1]}...")
        eager = await uow.users.get_one(user.id, options=[selectinload(User.policies)])
        step(f"with selectinload: {[p.title for p in eager.policies]}")
        try:
            await uow.users.get_one(42)
        except EntityNotFoundError as exc:
            step(f"not found: {exc}")

    @with_db_retry(max_attempts=3, backoff_factor=2)
    async def count_users() -> int:
        async with db.session() as session:
            return await UserRepository(session).count()

    step(f"users (with retry): {await count_users()}")
    step(f"pools: {db.pool_status()}")
    await db.close()
    step("done")


if __name__ == "__main__":
    asyncio.run(main())
