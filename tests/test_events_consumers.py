"""After-commit consumers on every backend: once per committed event and never for a
rolled-back one, a stored position that survives a restart, retries, dead letters (and
settling them), two processes sharing a consumer, re-delivery after a crash and after a
crashed holder's lease expires, and a close that leaves no task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import update

from aegis_shared.database import DatabaseManager
from aegis_shared.events import (
    Event,
    EventHub,
    RetentionPolicy,
    consumed_floor,
    consumers_table,
    list_dead_letters,
    publish,
    read_events,
    trim_events,
)
from aegis_shared.events.consumers import Consumer, check_consumer_name, safe_error
from aegis_shared.models.types import utcnow

TIMEOUT = 10
FAST: dict[str, Any] = {"backoff_min": 0.01, "backoff_max": 0.02, "idle_check": 0.1}


async def send(db: DatabaseManager, channel: str, *values: Any) -> None:
    for value in values:
        async with db.session() as session:
            await publish(session, channel, value)


async def until(condition: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (polls plain attributes)
            await asyncio.sleep(0.01)


async def acknowledged(consumer: Consumer, position: int) -> None:
    """Wait until ``consumer`` has stored ``position``: it acknowledges an event just after
    its handler returns, so a test that saw the handler run may read the row too early."""
    async with asyncio.timeout(TIMEOUT):
        while await consumer.position() != position:  # noqa: ASYNC110 (polls a table)
            await asyncio.sleep(0.01)


def hub_for(db: DatabaseManager) -> EventHub:
    return EventHub(db, poll_min=0.02, poll_max=0.1, safety_poll=0.2)


async def test_handler_runs_once_per_committed_event_never_for_a_rolled_back_one(
    edb: DatabaseManager,
) -> None:
    seen: list[tuple[int, Any]] = []
    async with hub_for(edb) as hub:

        @hub.consumer("cache", "orders", **FAST)
        async def handle(event: Event) -> None:
            seen.append((event.position, event.data))

        await send(edb, "orders", "a")
        with pytest.raises(RuntimeError):
            async with edb.session() as session:
                await publish(session, "orders", "rolled back")
                raise RuntimeError("abort")
        await send(edb, "orders", "b", "c")
        await until(lambda: len(seen) == 3)
        await asyncio.sleep(0.3)  # several idle checks: nothing handled twice
        consumer = hub._consumers[0]
        assert await consumer.position() == 3
    assert seen == [(1, "a"), (2, "b"), (3, "c")]
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("aegis-")]


async def test_position_survives_a_restart(edb: DatabaseManager) -> None:
    seen: list[int] = []

    async def handle(event: Event) -> None:
        seen.append(event.position)

    async with hub_for(edb) as hub:
        consumer = hub.consume("mail", "users", handle, **FAST)
        await send(edb, "users", 1, 2)
        # Acknowledged, not only handled: stopping between the two delivers it again.
        await acknowledged(consumer, 2)
    await send(edb, "users", 3, 4)  # while no consumer runs
    async with hub_for(edb) as hub:
        hub.consume("mail", "users", handle, **FAST)
        await until(lambda: len(seen) == 4)
        await asyncio.sleep(0.2)
    assert seen == [1, 2, 3, 4]


async def test_a_handler_that_fails_then_succeeds_is_retried(edb: DatabaseManager) -> None:
    calls: list[int] = []

    async def flaky(event: Event) -> None:
        calls.append(event.position)
        if len(calls) <= 2:
            raise ConnectionError("mail server down")

    async with hub_for(edb) as hub:
        consumer = hub.consume("mail", "users", flaky, max_attempts=3, **FAST)
        await send(edb, "users", "x")
        await until(lambda: len(calls) == 3)
        await until(lambda: consumer.calls == 3)
        await asyncio.sleep(0.2)
        await acknowledged(consumer, 1)
        assert await consumer.dead_letters() == []
    assert calls == [1, 1, 1]


async def test_an_always_failing_event_is_dead_lettered_and_later_ones_handled(
    edb: DatabaseManager,
) -> None:
    handled: list[int] = []
    broken = {1}

    async def handle(event: Event) -> None:
        if event.position in broken:
            raise ValueError("bad address; smtp://mailer:hunter2@mail.example password=abc")
        handled.append(event.position)

    async with hub_for(edb) as hub:
        consumer = hub.consume("mail", "users", handle, max_attempts=3, **FAST)
        await send(edb, "users", "a", "b")
        await until(lambda: handled == [2])
        dead = await consumer.dead_letters()
        assert [(d.position, d.attempts, d.error_class) for d in dead] == [(1, 3, "ValueError")]
        assert "hunter2" not in dead[0].error_message
        assert "abc" not in dead[0].error_message
        assert consumer.calls == 4
        await acknowledged(consumer, 2)
        # Retry still failing: kept, with one more attempt; then fixed: handled, removed.
        assert await consumer.retry_dead_letter(dead[0].id) is False
        assert (await consumer.dead_letters())[0].attempts == 4
        broken.clear()
        assert await consumer.retry_dead_letter(dead[0].id) is True
        assert handled == [2, 1]
        assert await list_dead_letters(edb) == []
        with pytest.raises(LookupError):
            await consumer.retry_dead_letter(dead[0].id)
        # Skip: forgotten without handling.
        broken.add(3)
        await send(edb, "users", "c")
        await until(lambda: consumer.calls == 8)
        async with asyncio.timeout(TIMEOUT):
            while not (dead := await consumer.dead_letters()):  # noqa: ASYNC110 (polls a table)
                await asyncio.sleep(0.01)
        assert await consumer.skip_dead_letter(dead[0].id) is True
        assert await consumer.skip_dead_letter(dead[0].id) is False
        assert await consumed_floor(edb, "users") == 3


async def test_two_processes_handle_each_event_once(
    edb: DatabaseManager, other: DatabaseManager
) -> None:
    seen: list[tuple[str, int]] = []

    def handler(who: str) -> Any:
        async def handle(event: Event) -> None:
            seen.append((who, event.position))
            await asyncio.sleep(0.005)

        return handle

    async with hub_for(edb) as one, hub_for(other) as two:
        one.consume("cache", "orders", handler("one"), **FAST)
        two.consume("cache", "orders", handler("two"), **FAST)
        for n in range(20):
            await send(edb if n % 2 else other, "orders", n)
        await until(lambda: len(seen) >= 20)
        await asyncio.sleep(0.3)
    assert sorted(p for _, p in seen) == list(range(1, 21))


async def test_a_crash_between_handler_and_ack_redelivers(
    edb: DatabaseManager, other: DatabaseManager
) -> None:
    first: list[int] = []
    second: list[int] = []
    started = asyncio.Event()

    async def hangs(event: Event) -> None:
        first.append(event.position)
        started.set()
        await asyncio.sleep(3600)  # the process dies here, before its acknowledgement

    async def handle(event: Event) -> None:
        second.append(event.position)

    hub = hub_for(edb)
    hub.consume("mail", "users", hangs, lease=0.5, **FAST)
    await send(edb, "users", "x")
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
    await hub.close()
    async with hub_for(other) as hub2:
        hub2.consume("mail", "users", handle, lease=0.5, **FAST)
        await until(lambda: second == [1])
    assert first == [1]


async def test_a_crashed_holders_lease_expires(edb: DatabaseManager) -> None:
    seen: list[int] = []

    async def handle(event: Event) -> None:
        seen.append(event.position)

    await send(edb, "users", "x")
    async with hub_for(edb) as hub:
        consumer = hub.consume("mail", "users", handle, lease=0.5, **FAST)
        await until(lambda: seen == [1])
        # Another process takes the lease and dies holding it.
        async with edb.background_session() as session:
            await session.execute(
                update(consumers_table).values(
                    lease_owner="dead-process", lease_until=utcnow() + consumer._store.lease
                )
            )
        await send(edb, "users", "y")
        await asyncio.sleep(0.2)
        assert seen == [1]  # held off while the lease is live
        await until(lambda: seen == [1, 2])  # then taken over


async def test_bad_input_is_refused(edb: DatabaseManager) -> None:
    async def handle(event: Event) -> None:
        pass

    with pytest.raises(ValueError, match="consumer name"):
        check_consumer_name("no spaces")
    async with hub_for(edb) as hub:
        with pytest.raises(ValueError, match="consumer name"):
            hub.consume("", "orders", handle)
        with pytest.raises(ValueError, match="channel"):
            hub.consume("cache", "bad channel", handle)
        with pytest.raises(ValueError, match="max_attempts"):
            hub.consume("cache", "orders", handle, max_attempts=0)
        hub.consume("cache", "orders", handle)
        with pytest.raises(ValueError, match="already"):
            hub.consume("cache", "orders", handle)
    with pytest.raises(RuntimeError, match="closed"):
        hub.consume("cache2", "orders", handle)
    name, message = safe_error(RuntimeError("x" * 2000))
    assert name == "RuntimeError" and len(message) == 500


async def test_retention_keeps_what_a_consumer_has_not_handled_and_its_dead_letters(
    edb: DatabaseManager,
) -> None:
    gate = asyncio.Event()
    handled: list[int] = []

    async def handle(event: Event) -> None:
        if event.position == 2:
            raise ValueError("always")
        if event.position >= 4:
            await gate.wait()  # a slow mailer: 4 and later wait
        handled.append(event.position)

    keep_one = RetentionPolicy(max_count=1)
    async with hub_for(edb) as hub:
        consumer = hub.consume("mail", "users", handle, max_attempts=1, **FAST)
        await send(edb, "users", "a", "b", "c", "d", "e")
        await until(lambda: handled == [1, 3])
        async with asyncio.timeout(TIMEOUT):
            while await consumed_floor(edb, "users") != 3:  # noqa: ASYNC110 (polls a table)
                await asyncio.sleep(0.01)
        # max_count=1 alone would keep only 5; 2 is a dead letter (retried from the log),
        # 4 and 5 are not handled yet: 2..5 stay, 1 goes.
        assert await trim_events(edb, keep_one) == 1
        assert [e.position for e in await read_events(edb, "users", after=1)] == [2, 3, 4, 5]
        (dead,) = await list_dead_letters(edb)
        assert await consumer.skip_dead_letter(dead.id) is True
        assert await trim_events(edb, keep_one) == 2  # 2 and 3 now: 4 is still unhandled
        gate.set()
        await until(lambda: handled == [1, 3, 4, 5])
        async with asyncio.timeout(TIMEOUT):
            while await consumed_floor(edb, "users") != 5:  # noqa: ASYNC110 (polls a table)
                await asyncio.sleep(0.01)
        assert await trim_events(edb, keep_one) == 1  # 4; 5 is the one the policy keeps
