"""Static proof (``mypy --strict``) that ``provide_services`` infers each service's type.

Checked by ``make lint`` (``mypy src tests/typing``); pytest never collects it. Every
``assert_type`` below fails the lint if the overloads in
``aegis_shared.database.providers`` infer ``Any`` or a wrong type.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import assert_type

from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import provide_services


class UsersService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session


class RolesService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session


class TeamsService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session


class TokensService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session


class AuditService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session


class BillingService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session


# Async-generator providers, as seed 004 writes them.
async def provide_users_service(db_session: AsyncSession) -> AsyncGenerator[UsersService, None]:
    yield UsersService(db_session)


async def provide_roles_service(db_session: AsyncSession) -> AsyncGenerator[RolesService, None]:
    yield RolesService(db_session)


async def provide_teams_service(db_session: AsyncSession) -> AsyncGenerator[TeamsService, None]:
    yield TeamsService(db_session)


async def provide_tokens_service(
    db_session: AsyncSession,
) -> AsyncGenerator[TokensService, None]:
    yield TokensService(db_session)


async def provide_audit_service(db_session: AsyncSession) -> AsyncGenerator[AuditService, None]:
    yield AuditService(db_session)


async def provide_billing_service(
    db_session: AsyncSession,
) -> AsyncGenerator[BillingService, None]:
    yield BillingService(db_session)


# A plain callable provider and a coroutine-function provider.
def make_roles_service(db_session: AsyncSession) -> RolesService:
    return RolesService(db_session)


async def build_teams_service(db_session: AsyncSession) -> TeamsService:
    return TeamsService(db_session)


async def one_provider() -> None:
    async with provide_services(provide_users_service) as services:
        assert_type(services, tuple[UsersService])
    async with provide_services(provide_users_service) as (users,):
        assert_type(users, UsersService)


async def two_providers() -> None:
    async with provide_services(provide_users_service, provide_roles_service) as services:
        assert_type(services, tuple[UsersService, RolesService])
    async with provide_services(provide_users_service, provide_roles_service) as (users, roles):
        assert_type(users, UsersService)
        assert_type(roles, RolesService)


async def three_providers() -> None:
    async with provide_services(
        provide_users_service, provide_roles_service, provide_teams_service
    ) as (users, roles, teams):
        assert_type(users, UsersService)
        assert_type(roles, RolesService)
        assert_type(teams, TeamsService)


async def six_providers() -> None:
    async with provide_services(
        provide_users_service,
        provide_roles_service,
        provide_teams_service,
        provide_tokens_service,
        provide_audit_service,
        provide_billing_service,
    ) as services:
        assert_type(
            services,
            tuple[
                UsersService,
                RolesService,
                TeamsService,
                TokensService,
                AuditService,
                BillingService,
            ],
        )
        users, roles, teams, tokens, audit, billing = services
        assert_type(users, UsersService)
        assert_type(roles, RolesService)
        assert_type(teams, TeamsService)
        assert_type(tokens, TokensService)
        assert_type(audit, AuditService)
        assert_type(billing, BillingService)


async def session_sources(session: AsyncSession, request: object) -> None:
    async with provide_services(provide_users_service, session=session) as (users,):
        assert_type(users, UsersService)
    async with provide_services(provide_users_service, connection=request) as (users,):
        assert_type(users, UsersService)


async def class_providers() -> None:
    async with provide_services(UsersService) as (users,):
        assert_type(users, UsersService)
    async with provide_services(UsersService, RolesService, TeamsService) as (
        users,
        roles,
        teams,
    ):
        assert_type(users, UsersService)
        assert_type(roles, RolesService)
        assert_type(teams, TeamsService)


async def callable_providers() -> None:
    async with provide_services(make_roles_service) as (roles,):
        assert_type(roles, RolesService)
    async with provide_services(UsersService, make_roles_service) as (users, roles):
        assert_type(users, UsersService)
        assert_type(roles, RolesService)


async def coroutine_function_providers() -> None:
    # provide_services awaits what a coroutine function returns: the service, not a coroutine.
    async with provide_services(build_teams_service) as (teams,):
        assert_type(teams, TeamsService)
    async with provide_services(provide_users_service, build_teams_service) as (users, teams):
        assert_type(users, UsersService)
        assert_type(teams, TeamsService)
