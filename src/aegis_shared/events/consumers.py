"""After-commit consumers: the transactional outbox on the event log itself.

A consumer is a named handler of one channel (send an email, update a cache). It runs
after COMMIT, from the log, so there is no second table to keep in step with the
publisher's: an event exists if and only if its transaction committed, and the consumer
reads it from there.

>>> @hub.consumer("welcome-mail", "users.created")
... async def send_welcome(event: Event) -> None:
...     await mailer.send(event.data["email"])      # must be idempotent: see below

Delivery is **at least once, in position order**: the position handled up to is stored
per (consumer, channel) in ``aegis_event_consumers`` and advanced only after the handler
returned. A process that dies between the handler and that update delivers the event
again once its lease expires, so handlers must be idempotent (a unique key, an upsert,
"already sent" checks).

Who handles: a **lease** on the consumer's row rather than ``SELECT ... FOR UPDATE SKIP
LOCKED``. A row lock lives in an open transaction, which would pin a pooled connection for
the whole time a handler sends its email, and SQLite has no such lock. The lease is a
conditional UPDATE (``lease_owner`` / ``lease_until``) in a short transaction of its own,
the same statement on every backend; the handler runs with no connection held. A process
renews its lease before each attempt and with each acknowledgement; one that crashed
stops renewing and another takes over after ``lease`` seconds. Lease times are this
process's clock: keep ``lease`` well above the clock skew between hosts and above a
handler's longest run.

Failures: each event is tried up to ``max_attempts`` times with exponential backoff
(tenacity); then it is recorded in ``aegis_event_dead_letters`` (consumer, channel,
position, attempts, the error's class and a trimmed message, never the event's data) and
the consumer moves on. :meth:`Consumer.dead_letters`, :meth:`Consumer.retry_dead_letter`
and :meth:`Consumer.skip_dead_letter` look at them and settle them. A handler's failure
never reaches the publisher: its transaction committed before the handler ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.events.publish import check_channel
from aegis_shared.events.reading import MAX_READ, Event, EventsTrimmedError, read_events
from aegis_shared.events.tables import MAX_CHANNEL_LENGTH, consumers_table, dead_letters_table
from aegis_shared.models.types import utcnow

if TYPE_CHECKING:
    from aegis_shared.events.hub import EventHub

logger = logging.getLogger("aegis_shared.events")

Handler = Callable[[Event], Awaitable[None]]

_NAME = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{MAX_CHANNEL_LENGTH}}}")
#: Longest error message kept in a dead letter, in characters.
MAX_ERROR_MESSAGE: Final = 500
#: Events read per claim: a bounded batch, so a lease is renewed (acks) as it goes.
_BATCH: Final = min(100, MAX_READ)
# Anything that looks like a credential in a URL or a key=value pair, blanked before an
# error message is stored: handlers' errors (HTTP clients, SMTP) often carry them.
_SECRET = re.compile(
    r"(?i)(://[^/\s:@]*:)[^@\s]*(@)|((?:password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*)\S+"
)


def check_consumer_name(name: object) -> str:
    """``name`` itself if it is a valid consumer name; ``ValueError`` naming the form."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(
            f"invalid consumer name {name!r}: a consumer name is 1 to {MAX_CHANNEL_LENGTH} "
            'characters among letters, digits and _ . : - (for example "welcome-mail")'
        )
    return name


def safe_error(exc: BaseException) -> tuple[str, str]:
    """The class name and a trimmed message of ``exc`` with credential-looking parts
    blanked, as stored in a dead letter."""
    message = _SECRET.sub(lambda m: f"{m[1]}***{m[2]}" if m[1] else f"{m[3]}***", str(exc))
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 3] + "..."
    return type(exc).__name__[:200], message


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a consumer gave up on: where it is, how many attempts, the last error."""

    id: int
    consumer: str
    channel: str
    position: int
    attempts: int
    error_class: str
    error_message: str
    failed_at: datetime


class _LeaseLost(Exception):
    """Another process holds the consumer's lease now (ours expired): stop, it goes on."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Exception) and not isinstance(exc, _LeaseLost)


class _Store:
    """The SQL of one consumer's row: claim, acknowledge, release; short transactions."""

    def __init__(self, db: DatabaseManager, consumer: str, channel: str, lease: float) -> None:
        self.db = db
        self.consumer = consumer
        self.channel = channel
        self.lease = timedelta(seconds=lease)
        #: Unique per Consumer object, so two hubs in one process are two holders.
        self.owner = uuid.uuid4().hex
        c = consumers_table.c
        self._key = (c.consumer == consumer, c.channel == channel)

    async def _held(self, session: AsyncSession) -> int | None:
        # Read back rather than trust rowcount: MariaDB counts changed rows, not matched.
        c = consumers_table.c
        row = (await session.execute(select(c.position, c.lease_owner).where(*self._key))).one()
        return int(row.position) if row.lease_owner == self.owner else None

    async def claim(self) -> int | None:
        """Take or renew the lease: the stored position, or None when another holds it."""
        c = consumers_table.c
        now = utcnow()
        async with self.db.background_session() as session:
            await session.execute(
                update(consumers_table)
                .where(
                    *self._key,
                    or_(
                        c.lease_owner.is_(None),
                        c.lease_owner == self.owner,
                        c.lease_until < now,
                    ),
                )
                .values(lease_owner=self.owner, lease_until=now + self.lease)
            )
            return await self._held(session)

    async def ensure_row(self) -> None:
        """Create the consumer's row at position 0 if it is not there yet."""
        async with self.db.background_session() as session:
            if await session.scalar(select(func.count()).where(*self._key)):
                return
        with contextlib.suppress(IntegrityError):  # another process made it first
            async with self.db.background_session() as session:
                await session.execute(
                    insert(consumers_table).values(
                        consumer=self.consumer, channel=self.channel, position=0
                    )
                )

    async def ack(self, done: int, position: int, dead: DeadLetter | None = None) -> None:
        """Store ``position`` as handled (after ``done``) and renew the lease, recording
        ``dead`` in the same transaction; ``_LeaseLost`` when the lease went elsewhere."""
        c = consumers_table.c
        async with self.db.background_session() as session:
            await session.execute(
                update(consumers_table)
                .where(*self._key, c.lease_owner == self.owner, c.position == done)
                .values(position=position, lease_until=utcnow() + self.lease)
            )
            if await self._held(session) != position:
                await session.rollback()
                raise _LeaseLost
            if dead is not None:
                await session.execute(
                    insert(dead_letters_table).values(
                        consumer=dead.consumer,
                        channel=dead.channel,
                        position=dead.position,
                        attempts=dead.attempts,
                        error_class=dead.error_class,
                        error_message=dead.error_message,
                        failed_at=dead.failed_at,
                    )
                )

    async def release(self) -> None:
        """Give the lease back (idle, or stopping), so another process need not wait."""
        c = consumers_table.c
        async with self.db.background_session() as session:
            await session.execute(
                update(consumers_table)
                .where(*self._key, c.lease_owner == self.owner)
                .values(lease_owner=None, lease_until=None)
            )


class Consumer:
    """A running after-commit handler of one channel; made by :meth:`EventHub.consume`.

    ``max_attempts``: tries per event before it is dead-lettered. ``backoff_min`` /
    ``backoff_max``: seconds between tries (doubling). ``lease``: seconds another process
    waits before taking over from one that stopped renewing (crashed). ``idle_check``:
    seconds between checks for work besides the hub's wake-ups (a lease that expired
    elsewhere, a wake-up lost while this consumer was held off).
    """

    def __init__(
        self,
        hub: EventHub,
        name: str,
        channel: str,
        handler: Handler,
        *,
        max_attempts: int = 5,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        lease: float = 60.0,
        idle_check: float | None = None,
    ) -> None:
        check_consumer_name(name)
        check_channel(channel)
        if not callable(handler):
            raise TypeError(f"consumer {name!r}: the handler must be an async function")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts!r} must be an int >= 1")
        idle = lease / 2 if idle_check is None else idle_check
        for label, value in (
            ("backoff_min", backoff_min),
            ("backoff_max", backoff_max),
            ("lease", lease),
            ("idle_check", idle),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{label}={value!r} must be a number of seconds > 0")
        if backoff_max < backoff_min:
            raise ValueError("backoff_max must be >= backoff_min")
        self.hub = hub
        self.name = name
        self.channel = channel
        self.handler = handler
        self.max_attempts = max_attempts
        self.backoff_min = float(backoff_min)
        self.backoff_max = float(backoff_max)
        self.idle_check = float(idle)
        self._store = _Store(hub.db, name, channel, float(lease))
        self._wake = asyncio.Event()
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        #: Handler calls made, failed ones included (for tests and metrics).
        self.calls = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start handling (the hub does it when the consumer is registered)."""
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"aegis-consumer:{self.name}")
        self._watch = loop.create_task(self._follow(), name=f"aegis-consumer-wake:{self.name}")

    async def stop(self) -> None:
        """Stop: a handler running now is cancelled (its event is delivered again later,
        at least once), the tasks are awaited and the lease given back. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        tasks = [t for t in (self._task, self._watch) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._task is not None:
            try:
                await self._store.release()
            except Exception as exc:  # it expires on its own after ``lease`` seconds
                logger.warning("consumer %s could not release its lease: %s", self.name, exc)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._task is not None and not self._task.done()

    async def position(self) -> int:
        """The position this consumer has handled up to in its channel (0: none yet)."""
        c = consumers_table.c
        async with self.hub.db.engine.connect() as conn:
            value = await conn.scalar(select(c.position).where(*self._store._key))
        return int(value or 0)

    # -- the loop ------------------------------------------------------------------------

    async def _follow(self) -> None:
        # The hub's subscription is only the wake-up (its reader costs one read per
        # wake-up per process, shared with every subscriber); the events are read from
        # the stored position, under the lease, by _drain.
        while not self._stopped:
            try:
                async with self.hub.subscribe(self.channel) as wakes:
                    async for _ in wakes:
                        self._wake.set()
                return  # the hub closed
            except RuntimeError:
                return  # the hub closed before we subscribed
            except Exception as exc:
                logger.warning("consumer %s lost its wake-ups: %s; retrying", self.name, exc)
                await asyncio.sleep(self.hub.retry_delay)

    async def _run(self) -> None:
        while not self._stopped:
            try:
                await self._store.ensure_row()
                break
            except Exception as exc:
                logger.warning("consumer %s cannot reach its row: %s; retrying", self.name, exc)
                await asyncio.sleep(self.hub.retry_delay)
        while not self._stopped:
            self._wake.clear()
            try:
                await self._drain()
            except _LeaseLost:
                logger.warning("consumer %s lost its lease to another process", self.name)
            except Exception as exc:
                logger.warning("consumer %s failed to read or acknowledge: %s", self.name, exc)
                await asyncio.sleep(self.hub.retry_delay)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.idle_check)

    async def _drain(self) -> None:
        """Handle what follows the stored position while this process holds the lease."""
        while not self._stopped:
            done = await self._store.claim()
            if done is None:
                return  # another process holds the lease; idle_check tries again
            try:
                events = await read_events(self.hub.db, self.channel, after=done, limit=_BATCH)
            except EventsTrimmedError as trimmed:
                logger.error(
                    "consumer %s: events of %s after %d were trimmed before it handled them; "
                    "it goes on after %d",
                    self.name,
                    self.channel,
                    done,
                    trimmed.resume_after,
                )
                await self._store.ack(done, trimmed.resume_after)
                continue
            if not events:
                await self._store.release()
                return
            for event in events:
                dead = await self._handle(event)
                await self._store.ack(done, event.position, dead)
                done = event.position

    async def _handle(self, event: Event) -> DeadLetter | None:
        """Run the handler with retries; a dead letter when every attempt failed."""
        # tenacity rather than a loop of our own: its exponential wait and attempt count
        # are the library's everywhere else too (see database/retry.py).
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_min, max=self.backoff_max),
            # Only the handler's own failures are retried: a lost lease ends this pass at
            # once, and a cancellation (stop) must not be taken for a failed attempt.
            retry=retry_if_exception(_retryable),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    # Renewed before each retry: backoff must not outlast the lease.
                    if attempt.retry_state.attempt_number > 1 and await self._store.claim() is None:
                        raise _LeaseLost
                    self.calls += 1
                    await self.handler(event)
            return None
        except RetryError as exhausted:
            error = exhausted.last_attempt.exception()
            assert error is not None
            error_class, message = safe_error(error)
            logger.error(
                "consumer %s gave up on %s position %d after %d attempts (%s); dead-lettered",
                self.name,
                event.channel,
                event.position,
                self.max_attempts,
                error_class,
            )
            return DeadLetter(
                0,
                self.name,
                event.channel,
                event.position,
                self.max_attempts,
                error_class,
                message,
                utcnow(),
            )

    # -- dead letters --------------------------------------------------------------------

    async def dead_letters(self) -> list[DeadLetter]:
        """This consumer's dead letters, oldest position first."""
        return await list_dead_letters(self.hub.db, consumer=self.name, channel=self.channel)

    async def retry_dead_letter(self, dead_letter_id: int) -> bool:
        """Run the handler once more on a dead-lettered event: True and the dead letter
        removed when it succeeds; False, with its attempts and error updated, when not.
        ``LookupError`` when there is no such dead letter of this consumer (or its event
        was trimmed: skip it then)."""
        d = dead_letters_table.c
        async with self.hub.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(d.position).where(
                        d.id == dead_letter_id,
                        d.consumer == self.name,
                        d.channel == self.channel,
                    )
                )
            ).one_or_none()
        if row is None:
            raise LookupError(
                f"consumer {self.name!r} has no dead letter {dead_letter_id}: list them with "
                "dead_letters()"
            )
        position = int(row.position)
        events = await read_events(self.hub.db, self.channel, after=position - 1, limit=1)
        if not events or events[0].position != position:
            raise LookupError(
                f"the event at position {position} of {self.channel!r} is no longer in the "
                f"log (retention): skip_dead_letter({dead_letter_id}) instead"
            )
        try:
            self.calls += 1
            await self.handler(events[0])
        except Exception as exc:
            error_class, message = safe_error(exc)
            async with self.hub.db.background_session() as session:
                await session.execute(
                    update(dead_letters_table)
                    .where(d.id == dead_letter_id)
                    .values(
                        attempts=d.attempts + 1,
                        error_class=error_class,
                        error_message=message,
                        failed_at=utcnow(),
                    )
                )
            return False
        await skip_dead_letter(self.hub.db, dead_letter_id)
        return True

    async def skip_dead_letter(self, dead_letter_id: int) -> bool:
        """Forget a dead letter without handling it; False when there was none."""
        return await skip_dead_letter(self.hub.db, dead_letter_id)


async def list_dead_letters(
    db: DatabaseManager, *, consumer: str | None = None, channel: str | None = None
) -> list[DeadLetter]:
    """Dead letters, of one consumer and/or channel when given, oldest first."""
    d = dead_letters_table.c
    statement = select(dead_letters_table).order_by(d.consumer, d.channel, d.position)
    if consumer is not None:
        statement = statement.where(d.consumer == check_consumer_name(consumer))
    if channel is not None:
        statement = statement.where(d.channel == check_channel(channel))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(statement)).all()
    return [
        DeadLetter(
            int(r.id),
            r.consumer,
            r.channel,
            int(r.position),
            int(r.attempts),
            r.error_class,
            r.error_message,
            r.failed_at,
        )
        for r in rows
    ]


async def skip_dead_letter(db: DatabaseManager, dead_letter_id: int) -> bool:
    """Remove dead letter ``dead_letter_id`` (handled elsewhere, or not worth it); False
    when there was none."""
    async with db.background_session() as session:
        result = await session.execute(
            delete(dead_letters_table).where(dead_letters_table.c.id == dead_letter_id)
        )
        return bool(cast(CursorResult[Any], result).rowcount)


async def consumed_floor(db: DatabaseManager, channel: str) -> int | None:
    """The lowest position handled by the consumers of ``channel`` (None: it has none).

    For retention: events above it are not yet handled by some consumer, so a trim of
    ``channel`` should cut no higher than this."""
    c = consumers_table.c
    async with db.engine.connect() as conn:
        value = await conn.scalar(select(func.min(c.position)).where(c.channel == channel))
    return None if value is None else int(value)
