"""The session store bounds what it stores and keeps digests and data out of logs and errors.

On SQLite, PostgreSQL and MariaDB. "Nothing written" is checked against the table from a
fresh session; "not logged" against the records of SQLAlchemy's own ``echo`` logger, with a
control statement showing that parameters of other statements do reach that log.
"""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import MetaData, func, select, text
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase

from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import ConfigurationError
from aegis_shared.models import NAMING_CONVENTION
from aegis_shared.sessions import (
    ServerSessionMixin,
    SessionDataTooLargeError,
    SessionStore,
    session_key,
)
from aegis_shared.sessions.store import DEFAULT_MAX_DATA_BYTES
from aegis_shared.testing import count_queries
from tests.conftest import MakeDb


class PrivacyBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PrivateSession(ServerSessionMixin, PrivacyBase):
    __tablename__ = "pv_sessions"


MARKER = "marker-7f3a9c-never-logged"


@pytest.fixture
async def db(make_db: MakeDb) -> DatabaseManager:
    return await make_db(PrivacyBase.metadata)


async def stored_data(db: DatabaseManager) -> list[dict[str, Any]]:
    async with db.session() as session:
        return list((await session.scalars(select(PrivateSession.data))).all())


# -- size limit ---------------------------------------------------------------------------


async def test_data_up_to_the_limit_is_stored_and_larger_data_is_refused(
    db: DatabaseManager,
) -> None:
    store = SessionStore(db, PrivateSession, max_data_bytes=100)
    # {"k":"…"} is 8 bytes of compact JSON around the value.
    fits = await store.create({"k": "x" * 92})
    assert (await stored_data(db)) == [{"k": "x" * 92}]

    with count_queries(db) as counter, pytest.raises(SessionDataTooLargeError) as caught:
        await store.create({"k": MARKER + "x" * (93 - len(MARKER))})
    assert counter.statements == []
    assert (caught.value.size, caught.value.limit) == (101, 100)
    assert "101 bytes" in str(caught.value) and "limit of 100 bytes" in str(caught.value)
    assert MARKER not in str(caught.value)
    assert isinstance(caught.value, ValueError)

    with count_queries(db) as counter, pytest.raises(SessionDataTooLargeError):
        await store.save(fits.id, {"k": "y" * 93})
    assert counter.statements == []
    assert (await stored_data(db)) == [{"k": "x" * 92}]
    assert await store.save(fits.id, {"k": "z" * 92}) is True
    assert (await stored_data(db)) == [{"k": "z" * 92}]


async def test_size_is_counted_in_utf8_bytes(db: DatabaseManager) -> None:
    store = SessionStore(db, PrivateSession, max_data_bytes=100)
    await store.create({"k": "é" * 46})  # 92 bytes
    with pytest.raises(SessionDataTooLargeError) as caught:
        await store.create({"k": "é" * 47})  # 94 bytes: 8 + 94 = 102
    assert caught.value.size == 102
    assert len(await stored_data(db)) == 1


async def test_the_default_limit_refuses_a_20_mib_value(db: DatabaseManager) -> None:
    store = SessionStore(db, PrivateSession)
    assert store.max_data_bytes == DEFAULT_MAX_DATA_BYTES == 64 * 1024
    with pytest.raises(SessionDataTooLargeError):
        await store.create({"blob": "x" * (20 * 1024 * 1024)})
    assert await stored_data(db) == []


async def test_data_that_is_not_json_is_refused_naming_its_type_only(db: DatabaseManager) -> None:
    store = SessionStore(db, PrivateSession)

    class Secretive:
        def __repr__(self) -> str:
            return MARKER

    with pytest.raises(TypeError, match="only JSON values") as caught:
        await store.create({"k": Secretive()})
    assert "Secretive" in str(caught.value) and MARKER not in str(caught.value)
    assert await stored_data(db) == []


@pytest.mark.parametrize("bad", [0, 1, -5, True, 1.5, "64k", None])
async def test_max_data_bytes_must_be_a_whole_number(db: DatabaseManager, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_data_bytes"):
        SessionStore(db, PrivateSession, max_data_bytes=bad)


# -- parameters out of logs and errors ----------------------------------------------------------


async def test_echo_logs_the_store_statements_without_their_parameters(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db = await make_db(PrivacyBase.metadata, echo=True)
    store = SessionStore(db, PrivateSession, touch_interval=timedelta(0))
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    created = await store.create({"note": MARKER})
    digests = [session_key(created.id)]
    assert await store.get(created.id) is not None  # one SELECT (fast path) + one UPDATE
    assert await store.extend(created.id)
    assert await store.save(created.id, {"note": MARKER, "more": MARKER})
    rotated = await store.rotate(created.id)
    assert rotated is not None and rotated.data["note"] == MARKER
    digests.append(session_key(rotated.id))
    assert await store.delete(rotated.id)

    log = caplog.text
    for statement in ("INSERT INTO pv_sessions", "SELECT", "UPDATE pv_sessions", "DELETE FROM"):
        assert statement in log
    assert "[fast path] [SQL parameters hidden due to hide_parameters=True]" in log
    assert "SQL parameters hidden due to hide_parameters=True" in log
    assert MARKER not in log
    for digest in digests:
        assert digest not in log

    # Control: the same log shows the parameters of statements that are not the store's.
    async with db.session() as session:
        await session.execute(
            select(func.count())
            .select_from(PrivateSession)
            .where(PrivateSession.session_id == "control-value-42")
        )
    assert "control-value-42" in caplog.text
    assert db.engine.sync_engine.hide_parameters is False


async def test_cleanup_logs_its_batches_without_the_session_keys(
    make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    db = await make_db(PrivacyBase.metadata, echo=True)
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    store = SessionStore(db, PrivateSession, clock=lambda: clock[0])
    created = [await store.create({"note": MARKER}) for _ in range(3)]
    clock[0] += timedelta(days=30)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    assert await store.cleanup_expired(batch_size=2) == 3
    assert "DELETE FROM pv_sessions" in caplog.text
    for stored in created:
        assert session_key(stored.id) not in caplog.text


async def test_a_failing_store_statement_carries_no_parameters(db: DatabaseManager) -> None:
    store = SessionStore(db, PrivateSession)
    live = await store.create({"note": "before"})
    digest = session_key(live.id)
    await db.drop_all(PrivacyBase.metadata)

    failures: list[BaseException] = []
    for call in (
        store.get(live.id),  # the fast read fails, then the ORM read raises
        store.save(live.id, {"note": MARKER}),
        store.create({"note": MARKER}),
        store.rotate(live.id),
        store.delete(live.id),
    ):
        with pytest.raises(Exception) as caught:
            await call
        failures.append(caught.value)
    for failure in failures:
        told = "".join(traceback.format_exception(failure))
        assert "pv_sessions" in told  # the statement is there: the table is missing
        assert digest not in told
        assert MARKER not in told
        assert "hide_parameters=True" in told


async def test_other_statements_on_the_engine_keep_their_parameters_in_errors(
    db: DatabaseManager,
) -> None:
    SessionStore(db, PrivateSession)  # building a store changes nothing for the others
    with pytest.raises(Exception) as caught:
        async with db.session() as session:
            await session.execute(text("SELECT * FROM pv_missing WHERE x = :x"), {"x": "ctl-99"})
    assert "ctl-99" in "".join(traceback.format_exception(caught.value))
