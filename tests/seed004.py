"""Seed 004's services, providers, guard (``current_user_from_token``) and job
(``cleanup_auth_tokens``) rewritten with ``provide_services``, on the suite's models:
shared by the FastAPI tests (test_seed_examples.py) and the Litestar ones
(test_litestar*.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import provide_services
from tests.models import Post, UserAccessLogRepository
from tests.models import User as AppUser
from tests.models import UserRepository as AppUserRepository


class UsersService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.repository = AppUserRepository(session)

    async def create(self, data: dict) -> AppUser:
        return await self.repository.create(data)

    async def get_one_or_none(self, email: str) -> AppUser | None:
        users = await self.repository.list(filters={"email": email}, limit=1)
        return users[0] if users else None


class RolesService:
    """Stands in for the seed's roles service, on the suite's posts table."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, user: AppUser, title: str) -> Post:
        post = Post(user_id=user.id, title=title)
        self.session.add(post)
        await self.session.flush()
        return post


class TokensService:
    """Stands in for the seed's token services: cleanup_expired_tokens() counts access logs
    of one path and deletes them."""

    def __init__(self, session: AsyncSession, path: str) -> None:
        self.session = session
        self.path = path

    async def cleanup_expired_tokens(self) -> int:
        logs = UserAccessLogRepository(self.session)
        expired = await logs.list(filters={"path": self.path})
        for log in expired:
            await logs.delete(log.id)
        return len(expired)


async def provide_users_service(db_session: AsyncSession) -> AsyncGenerator[UsersService, None]:
    yield UsersService(db_session)


async def provide_roles_service(db_session: AsyncSession) -> AsyncGenerator[RolesService, None]:
    yield RolesService(db_session)


async def provide_email_verification_service(
    db_session: AsyncSession,
) -> AsyncGenerator[TokensService, None]:
    yield TokensService(db_session, "/verify")


async def provide_password_reset_service(
    db_session: AsyncSession,
) -> AsyncGenerator[TokensService, None]:
    yield TokensService(db_session, "/reset")


async def provide_refresh_token_service(
    db_session: AsyncSession,
) -> AsyncGenerator[TokensService, None]:
    yield TokensService(db_session, "/refresh")


# jobs.py, with provide_services
async def cleanup_auth_tokens(_: Any) -> dict[str, int]:
    async with provide_services(
        provide_email_verification_service,
        provide_password_reset_service,
        provide_refresh_token_service,
    ) as (verification_service, reset_service, refresh_service):
        verification_count = await verification_service.cleanup_expired_tokens()
        reset_count = await reset_service.cleanup_expired_tokens()
        refresh_count = await refresh_service.cleanup_expired_tokens()

    return {
        "verification": verification_count,
        "reset": reset_count,
        "refresh": refresh_count,
    }


@dataclass
class Token:
    """Stands in for the seed's decoded JWT (``litestar.security.jwt.Token``)."""

    sub: str


# guards.py, with provide_services and the request's session (``connection``: a Litestar
# ASGIConnection or a Starlette Request)
async def current_user_from_token(token: Any, connection: Any) -> AppUser | None:
    async with provide_services(provide_users_service, connection=connection) as (service,):
        user = await service.get_one_or_none(email=token.sub)
    return user if user and not user.is_deleted else None
