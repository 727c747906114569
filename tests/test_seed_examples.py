"""Every code example of seeds 000, 001 and 004, run as written on SQLite and PostgreSQL.

The examples are copied from the seeds with only their imports, connection URLs and
application-specific names adapted (and old-style ``List``/``Optional`` annotations
written as ``list``/``| None``, which ruff's pyupgrade rules require). Each test then
checks what the example promises, through the database itself.

Seed 001's models use their own ``declarative_base()`` and the table name ``users``, which
the suite's models (``tests/models.py``) use too; ``seed_db`` therefore drops every table of
the run's database before creating the seed's tables, and again afterwards.
"""

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Request
from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import declarative_base, relationship, selectinload, sessionmaker

from aegis_shared.config import Settings
from aegis_shared.database import BackgroundUnitOfWork as _BackgroundUnitOfWork
from aegis_shared.database import (
    BaseRepository,
    DatabaseManager,
    TransactionManager,
    get_session,
    provide_services,
    with_db_retry,
)
from aegis_shared.database import UnitOfWork as _UnitOfWork
from aegis_shared.errors.exceptions import (
    DatabaseConnectionError,
    DatabaseError,
    DuplicateEntityError,
    EntityNotFoundError,
    ForeignKeyViolationError,
    NotNullViolationError,
    UnitOfWorkStateError,
)
from aegis_shared.web import DatabaseSessionMiddleware
from tests.models import Post, UserAccessLog
from tests.models import User as AppUser
from tests.models import UserRepository as AppUserRepository
from tests.seed004 import (
    RolesService,
    UsersService,
    cleanup_auth_tokens,
    current_user_from_token,
    provide_roles_service,
    provide_users_service,
)

logger = logging.getLogger(__name__)

on_sqlite_and_postgres = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

MakeDb = Callable[..., Awaitable[DatabaseManager]]


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def _drop_every_table(url: URL) -> None:
    """Drop every table of the run's database, whichever metadata created it."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:

            def drop(sync_conn: Any) -> None:
                existing = MetaData()
                existing.reflect(sync_conn)
                existing.drop_all(sync_conn)

            await conn.run_sync(drop)
    finally:
        await engine.dispose()


@pytest.fixture
async def seed_db(make_db: MakeDb, db_url: URL) -> AsyncIterator[Callable[..., Any]]:
    """``await seed_db(metadata, **manager_kwargs)``: a configured default manager with
    fresh tables of ``metadata`` only (no other table of the same name in the way)."""

    async def make(metadata: MetaData, **kwargs: Any) -> DatabaseManager:
        await _drop_every_table(db_url)
        return await make_db(metadata, **kwargs)

    yield make
    await _drop_every_table(db_url)


async def _count(db: DatabaseManager, model: Any) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


# =========================================================================================
# Seed 001: models and repositories (section "2. Base Repository", with the relationship of
# "3. 관계 처리" so that the complex-query and relationship examples have their Policy)
# =========================================================================================

Base = declarative_base()


# 엔티티 정의
class User(Base):
    __tablename__ = "users"

    id = Column(Integer, primary_key=True)
    email = Column(String(255), unique=True, nullable=False)
    name = Column(String(100), nullable=False)
    created_at = Column(DateTime, default=datetime.utcnow)
    updated_at = Column(DateTime, default=datetime.utcnow, onupdate=datetime.utcnow)
    deleted_at = Column(DateTime, nullable=True)

    # 관계 정의
    policies = relationship("Policy", back_populates="user")


class Policy(Base):
    __tablename__ = "policies"

    id = Column(Integer, primary_key=True)
    user_id = Column(Integer, ForeignKey("users.id"))
    title = Column(String(200))

    # 관계 정의
    user = relationship("User", back_populates="policies")


# Repository 정의
class UserRepository(BaseRepository[User]):
    def __init__(self, session: AsyncSession):
        super().__init__(session, User)

    async def get_by_email(self, email: str) -> User | None:
        """이메일로 사용자 조회"""
        result = await self.session.execute(select(User).where(User.email == email))
        return result.scalar_one_or_none()

    async def get_active_users(self) -> list[User]:
        """활성 사용자 목록 조회"""
        return await self.list(filters={"deleted_at": None})


class PolicyRepository(BaseRepository[Policy]):
    pass


# 고급 기능 1. 복잡한 쿼리
class QueryUserRepository(BaseRepository[User]):
    async def get_users_with_policies(self, limit: int = 10):
        """정책을 가진 사용자 조회"""
        query = (
            select(User, func.count(Policy.id).label("policy_count"))
            .join(Policy, User.id == Policy.user_id)
            .group_by(User.id)
            .having(func.count(Policy.id) > 0)
            .limit(limit)
        )

        result = await self.session.execute(query)
        return result.all()

    async def search_users(self, search_term: str, filters: dict | None = None):
        """사용자 검색"""
        query = select(User)

        # 검색 조건
        if search_term:
            search_filter = or_(
                User.name.ilike(f"%{search_term}%"), User.email.ilike(f"%{search_term}%")
            )
            query = query.where(search_filter)

        # 추가 필터
        if filters:
            if filters.get("active_only"):
                query = query.where(User.deleted_at.is_(None))

            if filters.get("created_after"):
                query = query.where(User.created_at >= filters["created_after"])

        result = await self.session.execute(query)
        return result.scalars().all()


# 고급 기능 2. 배치 작업
class BatchUserRepository(BaseRepository[User]):
    async def create_users_batch(self, users_data: list[dict]) -> list[User]:
        """사용자 배치 생성"""
        users = [User(**data) for data in users_data]
        return await self.create_many(users)

    async def update_users_batch(self, updates: list[dict]):
        """사용자 배치 업데이트"""
        for update_data in updates:
            user_id = update_data.pop("id")
            await self.session.execute(update(User).where(User.id == user_id).values(**update_data))

        await self.session.flush()


# 고급 기능 3. 관계 처리
class RelationUserRepository(BaseRepository[User]):
    async def get_user_with_policies(self, user_id: int) -> User | None:
        """사용자와 정책을 함께 조회 (N+1 문제 방지)"""
        query = select(User).options(selectinload(User.policies)).where(User.id == user_id)

        result = await self.session.execute(query)
        return result.scalar_one_or_none()


def relationship_section() -> SimpleNamespace:
    """The models of "3. 관계 처리" exactly as written (``name`` nullable), with their own
    declarative base, and the repositories the TransactionManager example uses on them."""
    Base = declarative_base()

    class User(Base):
        __tablename__ = "users"

        id = Column(Integer, primary_key=True)
        email = Column(String(255), unique=True)
        name = Column(String(100))

        # 관계 정의
        policies = relationship("Policy", back_populates="user")

    class Policy(Base):
        __tablename__ = "policies"

        id = Column(Integer, primary_key=True)
        user_id = Column(Integer, ForeignKey("users.id"))
        title = Column(String(200))

        # 관계 정의
        user = relationship("User", back_populates="policies")

    class UserRepository(BaseRepository[User]):
        async def get_user_with_policies(self, user_id: int) -> User | None:
            """사용자와 정책을 함께 조회 (N+1 문제 방지)"""
            query = select(User).options(selectinload(User.policies)).where(User.id == user_id)

            result = await self.session.execute(query)
            return result.scalar_one_or_none()

    class PolicyRepository(BaseRepository[Policy]):
        pass

    return SimpleNamespace(
        Base=Base,
        User=User,
        Policy=Policy,
        UserRepository=UserRepository,
        PolicyRepository=PolicyRepository,
    )


# =========================================================================================
# Seed 001: 1. Database Manager
# =========================================================================================


@on_sqlite_and_postgres
async def test_001_database_manager_example(seed_db: Callable[..., Any], db_url: URL) -> None:
    setup = await seed_db(Base.metadata)
    async with setup.session() as session:
        session.add(User(email="seed@example.com", name="Seed"))

    # 데이터베이스 매니저 초기화
    db_manager = DatabaseManager(
        database_url=_url(db_url), pool_size=20, max_overflow=10, pool_timeout=30
    )

    # 세션 사용 (컨텍스트 매니저)
    async with db_manager.session() as session:
        # 데이터베이스 작업 수행
        result = await session.execute("SELECT * FROM users")
        users = result.fetchall()

        # 자동으로 커밋됨
        # 예외 발생 시 자동으로 롤백됨

    # 매니저 종료
    await db_manager.close()

    assert [(row.email, row.name) for row in users] == [("seed@example.com", "Seed")]
    assert db_manager.closed


@on_sqlite_and_postgres
async def test_001_database_manager_session_commits_and_rolls_back(
    seed_db: Callable[..., Any],
) -> None:
    db_manager = await seed_db(Base.metadata)

    async with db_manager.session() as session:
        await session.execute(
            "INSERT INTO users (email, name) VALUES (:email, :name)",
            {"email": "kept@example.com", "name": "Kept"},
        )

    with pytest.raises(RuntimeError, match="boom"):
        async with db_manager.session() as session:
            await session.execute(
                "INSERT INTO users (email, name) VALUES (:email, :name)",
                {"email": "lost@example.com", "name": "Lost"},
            )
            raise RuntimeError("boom")

    async with db_manager.session() as session:
        emails = (await session.execute("SELECT email FROM users")).scalars().all()
    assert emails == ["kept@example.com"]
    assert db_manager.pool_status()["main"]["checked_out"] == 0


# =========================================================================================
# Seed 001: 2. Base Repository
# =========================================================================================


@on_sqlite_and_postgres
async def test_001_base_repository_usage_example(seed_db: Callable[..., Any]) -> None:
    db_manager = await seed_db(Base.metadata)

    # 사용 예시
    async with db_manager.session() as session:
        user_repo = UserRepository(session)

        # 생성
        new_user = User(email="user@example.com", name="John Doe")
        created_user = await user_repo.create(new_user)
        assert created_user.id is not None
        assert isinstance(created_user.created_at, datetime)
        assert created_user.deleted_at is None

        # 조회
        user = await user_repo.get_by_id(created_user.id)
        user_by_email = await user_repo.get_by_email("user@example.com")
        assert user is created_user
        assert user_by_email is created_user

        # 업데이트
        updated_user = await user_repo.update(user.id, name="Jane Doe")
        assert updated_user.name == "Jane Doe"

        # 목록 조회 (페이지네이션)
        users = await user_repo.list(skip=0, limit=10)
        assert [u.email for u in users] == ["user@example.com"]

        # 필터링
        active_users = await user_repo.get_active_users()
        assert active_users == [user]

        # 개수 조회
        total_count = await user_repo.count()
        assert total_count == 1

        # 소프트 삭제
        await user_repo.soft_delete(user.id)
        assert user.deleted_at is not None
        assert await user_repo.get_active_users() == []
        assert await user_repo.count() == 0  # the reads leave it out
        assert await user_repo.count(with_deleted=True) == 1  # the row stays

        # 하드 삭제
        await user_repo.delete(user.id)
        assert await user_repo.get_by_id(created_user.id) is None

    assert await _count(db_manager, User) == 0


@on_sqlite_and_postgres
async def test_001_base_repository_changes_are_committed(seed_db: Callable[..., Any]) -> None:
    db_manager = await seed_db(Base.metadata)
    async with db_manager.session() as session:
        user_repo = UserRepository(session)
        created = await user_repo.create(User(email="user@example.com", name="John Doe"))
        await user_repo.update(created.id, name="Jane Doe")
        await user_repo.soft_delete(created.id)
        user_id = created.id

    async with db_manager.session() as session:
        stored = await UserRepository(session).get_by_email("user@example.com")
        assert stored is not None
        assert stored.id == user_id
        assert stored.name == "Jane Doe"
        assert stored.deleted_at is not None
        assert await UserRepository(session).get_active_users() == []


# =========================================================================================
# Seed 001: 3. Transaction Manager
# =========================================================================================


@on_sqlite_and_postgres
async def test_001_transaction_manager_example(seed_db: Callable[..., Any]) -> None:
    models = relationship_section()
    User, Policy = models.User, models.Policy
    UserRepository, PolicyRepository = models.UserRepository, models.PolicyRepository
    db_manager = await seed_db(models.Base.metadata)

    async with db_manager.session() as session:
        transaction_manager = TransactionManager(session)

        # 트랜잭션 사용
        async with transaction_manager.transaction():
            user_repo = UserRepository(session)
            policy_repo = PolicyRepository(session)

            # 여러 작업을 하나의 트랜잭션으로 묶음
            user = await user_repo.create(User(email="user@example.com"))
            policy = await policy_repo.create(Policy(user_id=user.id, title="New Policy"))

            # 모든 작업이 성공하면 커밋
            # 하나라도 실패하면 롤백
        assert not session.in_transaction()  # the block committed

    async with db_manager.session() as session:
        stored = await UserRepository(session).get_user_with_policies(user.id)
        assert stored is not None
        assert stored.email == "user@example.com"
        assert [(p.id, p.title) for p in stored.policies] == [(policy.id, "New Policy")]


@on_sqlite_and_postgres
async def test_001_transaction_manager_rolls_back_everything_when_one_step_fails(
    seed_db: Callable[..., Any],
) -> None:
    models = relationship_section()
    User, Policy = models.User, models.Policy
    UserRepository, PolicyRepository = models.UserRepository, models.PolicyRepository
    db_manager = await seed_db(models.Base.metadata)

    with pytest.raises(ForeignKeyViolationError):
        async with db_manager.session() as session:
            transaction_manager = TransactionManager(session)
            async with transaction_manager.transaction():
                user_repo = UserRepository(session)
                policy_repo = PolicyRepository(session)
                user = await user_repo.create(User(email="user@example.com"))
                assert user.id is not None
                # 하나라도 실패하면 롤백: this policy names a user that does not exist.
                await policy_repo.create(Policy(user_id=user.id + 1000, title="New Policy"))

    assert await _count(db_manager, User) == 0
    assert await _count(db_manager, Policy) == 0


@on_sqlite_and_postgres
async def test_001_transaction_manager_example_on_section_2_user_without_name(
    seed_db: Callable[..., Any],
) -> None:
    # With section 2's User (name NOT NULL) the example's User(email=...) is refused by the
    # database; the transaction then leaves nothing behind.
    db_manager = await seed_db(Base.metadata)
    with pytest.raises(NotNullViolationError):
        async with db_manager.session() as session:
            transaction_manager = TransactionManager(session)
            async with transaction_manager.transaction():
                user_repo = UserRepository(session)
                await user_repo.create(User(email="first@example.com", name="First"))
                await user_repo.create(User(email="user@example.com"))
    assert await _count(db_manager, User) == 0


# =========================================================================================
# Seed 001: 4. Database Retry
# =========================================================================================


@on_sqlite_and_postgres
async def test_001_with_db_retry_example(seed_db: Callable[..., Any]) -> None:
    db_manager = await seed_db(Base.metadata)

    @with_db_retry(max_attempts=3, backoff_factor=2)
    async def create_user_with_retry(user_data: dict):
        async with db_manager.session() as session:
            user_repo = UserRepository(session)
            return await user_repo.create(User(**user_data))

    # 사용
    try:
        user = await create_user_with_retry({"email": "user@example.com", "name": "John Doe"})
    except DatabaseConnectionError:
        print("데이터베이스 연결에 실패했습니다")
        raise

    assert user.id is not None
    async with db_manager.session() as session:
        stored = await UserRepository(session).get_by_email("user@example.com")
    assert stored is not None
    assert stored.name == "John Doe"


@on_sqlite_and_postgres
async def test_001_with_db_retry_example_when_the_database_is_unreachable(
    backend: str,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    unreachable = {
        "sqlite": f"sqlite+aiosqlite:///{tmp_path}/missing-dir/app.db",
        "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:1/app",
    }[backend]
    db_manager = DatabaseManager(database_url=unreachable)

    @with_db_retry(max_attempts=3, backoff_factor=2)
    async def create_user_with_retry(user_data: dict):
        async with db_manager.session() as session:
            user_repo = UserRepository(session)
            return await user_repo.create(User(**user_data))

    user = None
    caplog.set_level(logging.WARNING, logger="aegis_shared.database.retry")
    # 사용
    try:
        user = await create_user_with_retry({"email": "user@example.com", "name": "John Doe"})
    except DatabaseConnectionError:
        print("데이터베이스 연결에 실패했습니다")
    finally:
        await db_manager.close()

    assert user is None
    assert capsys.readouterr().out == "데이터베이스 연결에 실패했습니다\n"
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2  # three attempts: two failures retried, the third raised
    assert "on attempt 1 (DatabaseConnectionError" in retries[0]
    assert "on attempt 2 (DatabaseConnectionError" in retries[1]


# =========================================================================================
# Seed 001: 고급 기능
# =========================================================================================


@on_sqlite_and_postgres
async def test_001_complex_query_examples(seed_db: Callable[..., Any]) -> None:
    db_manager = await seed_db(Base.metadata)
    async with db_manager.session() as session:
        alice = User(email="alice@example.com", name="Alice Kim")
        bob = User(email="bob@corp.example", name="Bob Lee")
        carol = User(email="carol@example.com", name="Carol Park")
        session.add_all([alice, bob, carol])
        await session.flush()
        session.add_all(
            [
                Policy(user_id=alice.id, title="a1"),
                Policy(user_id=alice.id, title="a2"),
                Policy(user_id=bob.id, title="b1"),
            ]
        )
        carol.deleted_at = datetime.utcnow()

    async with db_manager.session() as session:
        repo = QueryUserRepository(session)

        rows = await repo.get_users_with_policies()
        assert sorted((user.email, count) for user, count in rows) == [
            ("alice@example.com", 2),
            ("bob@corp.example", 1),
        ]
        assert len(await repo.get_users_with_policies(limit=1)) == 1

        # ilike: case-insensitive on every backend, over name and email.
        found = await repo.search_users("KIM")
        assert [u.email for u in found] == ["alice@example.com"]
        found = await repo.search_users("example.com")
        assert sorted(u.email for u in found) == ["alice@example.com", "carol@example.com"]
        found = await repo.search_users("example.com", filters={"active_only": True})
        assert [u.email for u in found] == ["alice@example.com"]
        found = await repo.search_users("", filters={"active_only": True})
        assert sorted(u.email for u in found) == ["alice@example.com", "bob@corp.example"]
        future = datetime.utcnow() + timedelta(days=1)
        assert await repo.search_users("", filters={"created_after": future}) == []
        past = datetime.utcnow() - timedelta(days=1)
        assert len(await repo.search_users("", filters={"created_after": past})) == 3


@on_sqlite_and_postgres
async def test_001_batch_examples(seed_db: Callable[..., Any]) -> None:
    db_manager = await seed_db(Base.metadata)
    async with db_manager.session() as session:
        repo = BatchUserRepository(session)
        created = await repo.create_users_batch(
            [
                {"email": "a@example.com", "name": "A"},
                {"email": "b@example.com", "name": "B"},
                {"email": "c@example.com", "name": "C"},
            ]
        )
        assert [u.email for u in created] == ["a@example.com", "b@example.com", "c@example.com"]
        assert all(u.id is not None for u in created)
        ids = [u.id for u in created]

    async with db_manager.session() as session:
        repo = BatchUserRepository(session)
        await repo.update_users_batch(
            [{"id": ids[0], "name": "A2"}, {"id": ids[2], "name": "C2", "email": "c2@example.com"}]
        )

    async with db_manager.session() as session:
        stored = (await session.execute(select(User.email, User.name).order_by(User.id))).all()
    assert [tuple(row) for row in stored] == [
        ("a@example.com", "A2"),
        ("b@example.com", "B"),
        ("c2@example.com", "C2"),
    ]


@on_sqlite_and_postgres
async def test_001_batch_create_is_all_or_nothing(seed_db: Callable[..., Any]) -> None:
    db_manager = await seed_db(Base.metadata)
    with pytest.raises(DuplicateEntityError):
        async with db_manager.session() as session:
            await BatchUserRepository(session).create_users_batch(
                [
                    {"email": "same@example.com", "name": "A"},
                    {"email": "same@example.com", "name": "B"},
                ]
            )
    assert await _count(db_manager, User) == 0


@on_sqlite_and_postgres
async def test_001_relationship_example(seed_db: Callable[..., Any]) -> None:
    db_manager = await seed_db(Base.metadata)
    async with db_manager.session() as session:
        user = User(email="user@example.com", name="John Doe")
        other = User(email="other@example.com", name="Other")
        session.add_all([user, other])
        await session.flush()
        session.add_all([Policy(user_id=user.id, title="P1"), Policy(user_id=user.id, title="P2")])

    async with db_manager.session() as session:
        repo = RelationUserRepository(session)
        loaded = await repo.get_user_with_policies(user.id)
        assert loaded is not None
        # Loaded by the query: reading it runs no further SQL (no lazy load in async code).
        assert sorted(p.title for p in loaded.policies) == ["P1", "P2"]
        assert all(p.user is loaded for p in loaded.policies)
        lonely = await repo.get_user_with_policies(other.id)
        assert lonely is not None
        assert lonely.policies == []
        assert await repo.get_user_with_policies(user.id + other.id + 100) is None


@on_sqlite_and_postgres
async def test_001_relationship_example_on_its_own_models(seed_db: Callable[..., Any]) -> None:
    models = relationship_section()
    User, Policy, UserRepository = models.User, models.Policy, models.UserRepository
    db_manager = await seed_db(models.Base.metadata)
    async with db_manager.session() as session:
        user = User(email="user@example.com", name="John Doe")
        session.add(user)
        await session.flush()
        session.add(Policy(user_id=user.id, title="P1"))

    async with db_manager.session() as session:
        loaded = await UserRepository(session).get_user_with_policies(user.id)
        assert loaded is not None
        assert [p.title for p in loaded.policies] == ["P1"]


# =========================================================================================
# Seed 001: 설정
# =========================================================================================


@on_sqlite_and_postgres
async def test_001_settings_example(
    seed_db: Callable[..., Any],
    db_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    await seed_db(Base.metadata)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    # 환경 변수, as the seed lists them
    monkeypatch.setenv("DATABASE_URL", _url(db_url))
    monkeypatch.setenv("DATABASE_POOL_SIZE", "20")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "10")
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "30")
    monkeypatch.setenv("DATABASE_POOL_RECYCLE", "3600")
    monkeypatch.setenv("DATABASE_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("DATABASE_RETRY_BACKOFF", "2")

    settings = Settings()

    db_manager = DatabaseManager(
        database_url=settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        pool_recycle=settings.database_pool_recycle,
    )
    try:
        assert settings.database_url == _url(db_url)
        assert (settings.database_pool_size, settings.database_max_overflow) == (20, 10)
        assert settings.database_pool_timeout == 30
        assert settings.database_pool_recycle == 3600
        assert (settings.database_retry_attempts, settings.database_retry_backoff) == (3, 2)
        assert db_manager.pool_status()["main"]["size"] == 20
        async with db_manager.session() as session:
            assert (await session.execute("SELECT 1")).scalar() == 1
            await UserRepository(session).create(User(email="s@example.com", name="S"))
        async with db_manager.session() as session:
            assert await UserRepository(session).get_by_email("s@example.com") is not None
    finally:
        await db_manager.close()


async def test_001_alembic_env_example(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from alembic.config import Config

    from aegis_shared.models import Base

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://user:password@localhost/dbname")
    config = Config()

    settings = Settings()

    # Alembic 설정
    config.set_main_option("sqlalchemy.url", settings.database_url)
    target_metadata = Base.metadata

    assert config.get_main_option("sqlalchemy.url") == (
        "postgresql+asyncpg://user:password@localhost/dbname"
    )
    assert isinstance(target_metadata, MetaData)


# =========================================================================================
# Seed 001: 에러 처리
# =========================================================================================


@on_sqlite_and_postgres
async def test_001_error_handling_example(
    seed_db: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    db_manager = await seed_db(Base.metadata)
    caplog.set_level(logging.ERROR, logger=__name__)
    user_id = 999

    with pytest.raises(EntityNotFoundError) as raised:
        async with db_manager.session() as session:
            user_repo = UserRepository(session)

            try:
                user = await user_repo.get_by_id(user_id)
                if not user:
                    raise EntityNotFoundError("User", user_id)

            except DatabaseError as e:
                logger.error(f"Database error: {e}")
                raise
            except DuplicateEntityError as e:
                logger.warning(f"Duplicate entity: {e}")
                raise

    assert str(raised.value) == "User with id 999 not found"
    assert (raised.value.entity, raised.value.entity_id) == ("User", 999)
    assert [r.getMessage() for r in caplog.records if r.name == __name__] == [
        "Database error: User with id 999 not found"
    ]


@on_sqlite_and_postgres
async def test_001_error_handling_duplicate_is_a_database_error(
    seed_db: Callable[..., Any],
) -> None:
    # DuplicateEntityError is a DatabaseError, so the example's first except clause takes it.
    db_manager = await seed_db(Base.metadata)
    async with db_manager.session() as session:
        await UserRepository(session).create(User(email="dup@example.com", name="A"))
    caught: list[str] = []
    with pytest.raises(DuplicateEntityError):
        async with db_manager.session() as session:
            user_repo = UserRepository(session)
            try:
                await user_repo.create(User(email="dup@example.com", name="B"))
            except DatabaseError as e:
                caught.append(type(e).__name__)
                raise
    assert caught == ["DuplicateEntityError"]
    assert await _count(db_manager, User) == 1


# =========================================================================================
# Seed 001: 테스트 (the fixtures of the example, with the backend's URL on PostgreSQL)
# =========================================================================================


@pytest.fixture
async def test_db(backend: str, db_url: URL) -> AsyncIterator[Any]:
    """테스트용 데이터베이스 설정"""
    on_sqlite = backend == "sqlite"
    if not on_sqlite:
        await _drop_every_table(db_url)
    engine = create_async_engine("sqlite+aiosqlite:///:memory:" if on_sqlite else db_url)

    # 테이블 생성
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)

    # 세션 팩토리 생성
    session_factory = sessionmaker(engine, class_=AsyncSession)

    yield session_factory

    await engine.dispose()
    if not on_sqlite:
        await _drop_every_table(db_url)


@pytest.fixture
async def user_repo(test_db: Any) -> AsyncIterator[UserRepository]:
    """테스트용 사용자 Repository"""
    async with test_db() as session:
        yield UserRepository(session)


@on_sqlite_and_postgres
@pytest.mark.asyncio
async def test_create_user(user_repo: UserRepository) -> None:
    """사용자 생성 테스트"""
    user_data = {"email": "test@example.com", "name": "Test User"}

    user = User(**user_data)
    created_user = await user_repo.create(user)

    assert created_user.id is not None
    assert created_user.email == user_data["email"]
    assert created_user.name == user_data["name"]


@on_sqlite_and_postgres
@pytest.mark.asyncio
async def test_get_user_by_email(user_repo: UserRepository) -> None:
    """이메일로 사용자 조회 테스트"""
    # 사용자 생성
    user = User(email="test@example.com", name="Test User")
    await user_repo.create(user)

    # 이메일로 조회
    found_user = await user_repo.get_by_email("test@example.com")

    assert found_user is not None
    assert found_user.email == "test@example.com"


# =========================================================================================
# Seed 000: get_session with Depends, UnitOfWork, BackgroundUnitOfWork
# =========================================================================================


# user_access_log_repository.py
class UserAccessLogRepository(BaseRepository[UserAccessLog]):
    def __init__(self, session: AsyncSession) -> None:
        super().__init__(session)

    async def get_recent_logs(self, limit: int = 20) -> list[UserAccessLog]:
        """The newest access logs first."""
        return await self.list(limit=limit, order_by=["-created_at", "-id"])


# The seed's UnitOfWork, with the repository it uses declared (unit_of_work.py).
class UnitOfWork(_UnitOfWork):
    user_access_logs: UserAccessLogRepository


class BackgroundUnitOfWork(_BackgroundUnitOfWork):
    user_access_logs: UserAccessLogRepository


# router.py
router = APIRouter()


@router.get("/logs")
async def get_logs(session: AsyncSession = Depends(get_session)):  # noqa: B008
    repo = UserAccessLogRepository(session)
    return await repo.get_recent_logs()


# service.py 또는 background task
async def save_access_log(data: dict):
    async with UnitOfWork() as uow:
        await uow.user_access_logs.create(data)
        await uow.commit()


async def save_access_log_in_background(data: dict):
    async with BackgroundUnitOfWork() as uow:
        await uow.user_access_logs.create(data)
        await uow.commit()


def _client(app: FastAPI, **transport: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, **transport), base_url="http://test"
    )


async def _paths(db: DatabaseManager) -> list[str]:
    async with db.session() as session:
        return list(
            (await session.scalars(select(UserAccessLog.path).order_by(UserAccessLog.id))).all()
        )


@on_sqlite_and_postgres
async def test_000_router_get_logs_with_depends_get_session(db: DatabaseManager) -> None:
    async with db.session() as session:
        for path in ("/a", "/b", "/c"):
            await UserAccessLogRepository(session).create({"user_id": 7, "path": path})

    app = FastAPI()
    app.include_router(router)
    async with _client(app) as client:
        response = await client.get("/logs")

    assert response.status_code == 200
    logs = response.json()
    assert [log["path"] for log in logs] == ["/c", "/b", "/a"]
    assert {log["user_id"] for log in logs} == {7}
    assert db.pool_status()["main"]["checked_out"] == 0  # the request's session was closed


@on_sqlite_and_postgres
async def test_000_save_access_log_with_unit_of_work(db: DatabaseManager) -> None:
    await save_access_log({"user_id": 1, "path": "/login"})
    assert await _paths(db) == ["/login"]
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_000_unit_of_work_rolls_back_on_error_and_without_commit(
    db: DatabaseManager,
) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with UnitOfWork() as uow:
            await uow.user_access_logs.create({"user_id": 1, "path": "/error"})
            raise RuntimeError("boom")

    async with UnitOfWork() as uow:
        created = await uow.user_access_logs.create({"user_id": 1, "path": "/uncommitted"})
        assert created.id is not None  # it reached the database, in the open transaction

    assert await _paths(db) == []
    # __aexit__ closed the session: the unit of work refuses further use.
    with pytest.raises(UnitOfWorkStateError):
        uow.session  # noqa: B018
    with pytest.raises(UnitOfWorkStateError):
        uow.user_access_logs  # noqa: B018


@on_sqlite_and_postgres
async def test_000_background_unit_of_work_uses_the_separate_pool(make_db: MakeDb) -> None:
    db = await make_db(pool_size=1, max_overflow=0, pool_timeout=0.2)
    # Request traffic holds every connection of the main pool.
    async with db.engine.connect() as held:
        await held.execute(text("SELECT 1"))
        assert db.pool_status()["main"]["checked_out"] == 1

        await save_access_log_in_background({"user_id": 2, "path": "/background"})

        async with BackgroundUnitOfWork() as uow:
            await uow.user_access_logs.create({"user_id": 2, "path": "/second"})
            assert db.pool_status()["background"]["checked_out"] == 1
            assert db.pool_status()["main"]["checked_out"] == 1
            await uow.commit()

    assert await _paths(db) == ["/background", "/second"]
    assert db.pool_status()["background"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_000_background_task_saves_access_log(db: DatabaseManager) -> None:
    app = FastAPI()

    @app.get("/visit")
    async def visit(background_tasks: BackgroundTasks):
        background_tasks.add_task(save_access_log_in_background, {"user_id": 3, "path": "/visit"})
        return {"ok": True}

    async with _client(app) as client:
        response = await client.get("/visit")

    assert response.status_code == 200
    assert await _paths(db) == ["/visit"]


# =========================================================================================
# Seed 004: provide_services
# =========================================================================================


# cli/commands.py, with provide_services
async def _create_user(email: str, name: str) -> AppUser:
    async with provide_services(provide_users_service) as (users_service,):
        return await users_service.create(data={"email": email, "name": name})


async def _create_default_roles(email: str) -> None:
    async with provide_services(provide_users_service, provide_roles_service) as (
        users_service,
        roles_service,
    ):
        user = await users_service.get_one_or_none(email=email)
        assert user is not None
        await roles_service.create(user, "admin")
        await roles_service.create(user, "member")


@on_sqlite_and_postgres
async def test_004_standalone_commits_on_success_and_closes(db: DatabaseManager) -> None:
    user = await _create_user("cli@example.com", "Cli")
    await _create_default_roles("cli@example.com")

    async with db.session() as session:
        stored = await AppUserRepository(session).get_by_id(user.id)
        titles = (await session.scalars(select(Post.title).order_by(Post.id))).all()
    assert stored is not None
    assert stored.email == "cli@example.com"
    assert list(titles) == ["admin", "member"]

    async with provide_services(provide_users_service) as (users,):
        await users.create({"email": "x@example.com", "name": "X"})
    # The session was closed at the end of the block and refuses further use.
    with pytest.raises(Exception, match="closed"):
        await users.session.execute(select(1))
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_004_standalone_rolls_back_on_error(db: DatabaseManager) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with provide_services(provide_users_service, provide_roles_service) as (
            users,
            roles,
        ):
            user = await users.create({"email": "gone@example.com", "name": "Gone"})
            await roles.create(user, "admin")
            raise Boom()

    assert await _count(db, AppUser) == 0
    assert await _count(db, Post) == 0
    with pytest.raises(Exception, match="closed"):
        await users.session.execute(select(1))
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_004_three_providers_job(db: DatabaseManager) -> None:
    async with db.session() as session:
        logs = UserAccessLogRepository(session)
        for path in ("/verify", "/verify", "/reset", "/refresh", "/refresh", "/refresh", "/x"):
            await logs.create({"user_id": 1, "path": path})

    assert await cleanup_auth_tokens(None) == {"verification": 2, "reset": 1, "refresh": 3}
    assert await _paths(db) == ["/x"]


@on_sqlite_and_postgres
async def test_004_explicit_session_is_neither_committed_nor_closed(
    db: DatabaseManager,
) -> None:
    session = db.session_factory()
    try:
        async with provide_services(
            provide_users_service, provide_roles_service, session=session
        ) as (users, roles):
            assert users.session is session
            assert roles.session is session
            user = await users.create({"email": "caller@example.com", "name": "Caller"})
            await roles.create(user, "admin")

        # Still open, still in its transaction: provide_services neither committed nor closed.
        assert session.in_transaction()
        assert await session.scalar(select(func.count()).select_from(AppUser)) == 1
        await session.rollback()  # the caller decides: nothing was committed, so nothing stays
    finally:
        await session.close()

    assert await _count(db, AppUser) == 0
    assert await _count(db, Post) == 0


@on_sqlite_and_postgres
async def test_004_explicit_session_is_committed_by_its_owner(db: DatabaseManager) -> None:
    async with db.session() as session:
        async with provide_services(provide_users_service, session=session) as (users,):
            await users.create({"email": "owner@example.com", "name": "Owner"})
        await users.create({"email": "after@example.com", "name": "After"})  # still usable
    assert await _count(db, AppUser) == 2


@on_sqlite_and_postgres
async def test_004_connection_uses_the_request_session(db: DatabaseManager) -> None:
    app = FastAPI()
    app.add_middleware(DatabaseSessionMiddleware)

    @app.post("/users")
    async def create_user(
        request: Request,
        session: AsyncSession = Depends(get_session),  # noqa: B008
    ):
        async with provide_services(
            provide_users_service, provide_roles_service, connection=request
        ) as (users, roles):
            same = users.session is session and roles.session is session
            user = await users.create({"email": "req@example.com", "name": "Req"})
            await roles.create(user, "admin")
        # Not closed by provide_services: the request's session goes on working.
        count = await session.scalar(select(func.count()).select_from(AppUser))
        return {"same": same, "count": count, "in_transaction": session.in_transaction()}

    @app.get("/me")
    async def me(request: Request):
        user = await current_user_from_token(SimpleNamespace(sub="req@example.com"), request)
        return {"email": user.email if user else None}

    async with _client(app) as client:
        response = await client.post("/users")
        me_response = await client.get("/me")

    assert response.status_code == 200
    # Uncommitted when the handler returned; the middleware committed at the response.
    assert response.json() == {"same": True, "count": 1, "in_transaction": True}
    assert await _count(db, AppUser) == 1
    assert await _count(db, Post) == 1
    assert me_response.json() == {"email": "req@example.com"}
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_004_connection_without_middleware_is_refused(db: DatabaseManager) -> None:
    app = FastAPI()

    @app.get("/users")
    async def users(request: Request):
        async with provide_services(provide_users_service, connection=request):
            return {}

    async with _client(app) as client:
        with pytest.raises(RuntimeError, match="DatabaseSessionMiddleware"):
            await client.get("/users")


def test_004_value_error_messages() -> None:
    with pytest.raises(ValueError) as no_providers:
        provide_services()
    assert str(no_providers.value) == "At least one service provider is required"

    with pytest.raises(ValueError) as both:
        provide_services(provide_users_service, session=object(), connection=object())
    assert str(both.value) == "Cannot provide both 'session' and 'connection' - choose one"


@on_sqlite_and_postgres
async def test_004_value_errors_open_no_session(db: DatabaseManager) -> None:
    with pytest.raises(ValueError, match=r"^At least one service provider is required$"):
        async with provide_services():
            pass
    async with db.session() as session:
        with pytest.raises(
            ValueError, match=r"^Cannot provide both 'session' and 'connection' - choose one$"
        ):
            async with provide_services(
                provide_users_service, session=session, connection=object()
            ):
                pass
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_004_provider_failure_propagates_and_closes_entered_providers(
    db: DatabaseManager,
) -> None:
    events: list[str] = []

    class ProviderFailed(Exception):
        pass

    async def provide_tracked_users_service(
        db_session: AsyncSession,
    ) -> AsyncGenerator[UsersService, None]:
        events.append("users entered")
        try:
            yield UsersService(db_session)
        finally:
            events.append("users closed")

    async def provide_failing_service(db_session: AsyncSession) -> AsyncGenerator[Any, None]:
        raise ProviderFailed("cannot build the service")
        yield  # pragma: no cover

    def never_called(db_session: AsyncSession) -> Any:
        events.append("third provider called")

    with pytest.raises(ProviderFailed, match="cannot build the service"):
        async with provide_services(
            provide_tracked_users_service, provide_failing_service, never_called
        ):
            events.append("body ran")
    assert events == ["users entered", "users closed"]

    # A plain callable that fails propagates its own exception as well.
    def failing_callable(db_session: AsyncSession) -> Any:
        raise KeyError("missing setting")

    events.clear()
    with pytest.raises(KeyError, match="missing setting"):
        async with provide_services(provide_tracked_users_service, failing_callable):
            pass
    assert events == ["users entered", "users closed"]
    assert db.pool_status()["main"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_004_generator_providers_are_closed_after_the_block(db: DatabaseManager) -> None:
    events: list[str] = []

    async def provide_tracked_users_service(
        db_session: AsyncSession,
    ) -> AsyncGenerator[UsersService, None]:
        try:
            yield UsersService(db_session)
        finally:
            events.append("closed")

    async with provide_services(provide_tracked_users_service) as (users,):
        await users.create({"email": "t@example.com", "name": "T"})
        assert events == []
    assert events == ["closed"]
    assert await _count(db, AppUser) == 1


@on_sqlite_and_postgres
async def test_004_class_and_callable_providers(db: DatabaseManager) -> None:
    async with provide_services(UsersService, lambda s: RolesService(s)) as (users, roles):
        assert isinstance(users, UsersService)
        assert isinstance(roles, RolesService)
        assert users.session is roles.session
        user = await users.create({"email": "cls@example.com", "name": "Cls"})
        await roles.create(user, "admin")

    async def build_users_service(db_session: AsyncSession) -> UsersService:
        return UsersService(db_session)

    async with provide_services(build_users_service) as (built,):
        assert isinstance(built, UsersService)
        assert await built.get_one_or_none("cls@example.com") is not None

    assert await _count(db, AppUser) == 1
    assert await _count(db, Post) == 1
