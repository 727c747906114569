"""Streaming replicas: which server a read-only session reads on, and read-your-writes.

A manager with ``replica_urls`` sends read-only work (``db.session(read_only=True)``,
``UnitOfWork(read_only=True)``) and a plain session's fast reads outside a transaction
(:mod:`~aegis_shared.database.fast_path`) to a healthy replica that has everything the
client must see, else to the primary. Everything else stays on the primary: a unit of work
that may write runs its first read and its last write there, and a plain session that read
on a replica and then writes repeats those reads on the primary first (a changed answer is
a ``TransactionConflictError``, whose retry reads on the primary).

**What a replica has.** A monitor task samples the primary's WAL position (one statement
per ``check_interval``, 0.25 s by default) and each replica's replay position. A replica
that has replayed past the primary's position sampled at time *t* has everything committed
before *t*; its lag is *now − t*. A replica that is down, promoted, or lags more than
``max_lag`` is skipped until a check finds it healthy again; each change is logged.

**Read-your-writes.** A session that wrote and committed on the primary records the
commit's time in the context (a ``ContextVar``: the rest of the request or task sees it),
and :class:`~aegis_shared.web.ReadYourWritesMiddleware` carries it to the same client's
next requests in a cookie. A read-only session goes to a replica only if the replica has
everything committed up to that time (plus :data:`CLOCK_SKEW`, for several hosts), else
to the primary: a client sees its own writes at once, other clients read from replicas.

Why a time and not the commit's WAL position: the position would cost a statement after
every writing commit, and it is the database's own data, which never goes to a client.
A time is known without asking, is the client's own information, and the monitor's
samples turn it into "has this replica caught up" at no extra cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from aegis_shared.errors.redaction import mask_url

logger = logging.getLogger("aegis_shared.database.replicas")

#: Seconds by which the clocks of the hosts that write and read may disagree: a replica
#: must have caught up to this much after a write before it serves that client.
CLOCK_SKEW: Final = 0.25
#: The longest a token may lie in the future (a client's clock, or a forged cookie): it
#: is cut to now plus this, so a client can at most keep its own reads on the primary.
_FUTURE_SLACK: Final = 1.0

_read_after: ContextVar[float | None] = ContextVar("aegis_read_after", default=None)


def read_after() -> float | None:
    """The time (``time.time()``) this context's reads must reflect: its last writing
    commit on the primary, or the token the client's request carried; ``None``: any."""
    return _read_after.get()


def require_read_after(moment: float | None) -> None:
    """Make this context's reads reflect everything committed up to ``moment`` (for a
    token a client sent; the middleware calls it). Never moves the requirement back."""
    if moment is None:
        return
    moment = min(float(moment), time.time() + _FUTURE_SLACK)
    current = _read_after.get()
    if current is None or moment > current:
        _read_after.set(moment)


def note_write_committed() -> None:
    """A session committed writes on the primary just now (the session calls it)."""
    require_read_after(time.time())


def parse_token(value: str | None) -> float | None:
    """The time in a read-your-writes token (milliseconds since the epoch), or ``None``
    for a missing or malformed one (which only means "no requirement")."""
    if not value or not value.isdigit() or len(value) > 16:
        return None
    return int(value) / 1000.0


def format_token(moment: float) -> str:
    """The token for ``moment``: whole milliseconds since the epoch, rounded up."""
    return str(int(moment * 1000) + 1)


@dataclass
class Replica:
    """One replica: its engine and what the last check found."""

    index: int
    url: URL
    engine: AsyncEngine
    sessions: Any  # the manager's sessionmaker on this engine
    healthy: bool = False
    #: The time up to which it has everything the primary committed (see module doc).
    caught_up_to: float | None = None
    reads: int = 0

    @property
    def name(self) -> str:
        """``replica-<n>``: what ``pool_status()`` and logs call it (never its host)."""
        return f"replica-{self.index}"

    def lag(self, now: float) -> float | None:
        """Seconds behind the primary, or ``None`` before the first successful check."""
        return None if self.caught_up_to is None else max(0.0, now - self.caught_up_to)


@dataclass
class ReplicaSet:
    """The replicas of one manager, their monitor, and the choice of one per session."""

    primary: AsyncEngine
    replicas: Sequence[Replica]
    max_lag: float
    check_interval: float
    check_timeout: float
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    _task: asyncio.Task[None] | None = None
    _first_check: asyncio.Event | None = None
    _next: int = 0
    _closed: bool = False
    primary_reads: int = 0

    async def choose(self, after: float | None) -> Replica | None:
        """A healthy replica that has everything committed up to ``after`` (plus the
        clock skew), or ``None`` for the primary. Starts the monitor on first use."""
        if self._closed:
            return None
        self.start()
        first = self._first_check
        if first is not None and not first.is_set():
            # The first read-only session waits for the first check (bounded), rather than
            # going to the primary before any replica could be known healthy.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first.wait(), self.check_timeout)
        needed = None if after is None else after + CLOCK_SKEW
        candidates = [
            r
            for r in self.replicas
            if r.healthy
            and (needed is None or (r.caught_up_to is not None and r.caught_up_to >= needed))
        ]
        if not candidates:
            self.primary_reads += 1
            if logger.isEnabledFor(logging.DEBUG):
                why = (
                    "no healthy replica"
                    if not any(r.healthy for r in self.replicas)
                    else "no replica has this context's writes yet"
                )
                logger.debug("read-only session on the primary: %s", why)
            return None
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        chosen.reads += 1
        logger.debug("read-only session on %s", chosen.name)
        return chosen

    def start(self) -> None:
        """Start the monitor (in the running event loop) unless it runs already. The
        earlier it runs, the sooner a lagging replica can be known to have a write."""
        if self._task is None and not self._closed:
            self._first_check = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._monitor(), name="aegis-replicas"
            )

    async def _monitor(self) -> None:
        while not self._closed:
            await self.check_once()
            assert self._first_check is not None
            self._first_check.set()
            await asyncio.sleep(self.check_interval)

    async def check_once(self) -> None:
        """Sample the primary's position, then check every replica against the samples."""
        try:
            # The time before asking: whatever committed before it is at or below the
            # position the server then reports.
            asked = time.time()
            async with asyncio.timeout(self.check_timeout):
                async with self.primary.connect() as conn:
                    value = await conn.scalar(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
            self._samples.append((asked, int(value)))
        except Exception as exc:
            # Without a fresh sample nothing new can be said about catching up; the
            # replicas keep their last state, and lag grows with the clock.
            logger.warning("replica monitor cannot read the primary's WAL position: %s", exc)
        await asyncio.gather(*(self._check(replica) for replica in self.replicas))

    async def _check(self, replica: Replica) -> None:
        try:
            async with asyncio.timeout(self.check_timeout):
                async with replica.engine.connect() as conn:
                    row = (
                        await conn.execute(
                            text(
                                "SELECT pg_is_in_recovery(), "
                                "pg_last_wal_replay_lsn() - '0/0'::pg_lsn"
                            )
                        )
                    ).one()
        except Exception as exc:
            self._mark(replica, f"unreachable ({type(exc).__name__})")
            return
        in_recovery, replayed = row
        if not in_recovery or replayed is None:
            self._mark(replica, "not a standby (promoted, or never one)")
            return
        caught_up = [t for t, lsn in self._samples if lsn <= int(replayed)]
        if caught_up:
            replica.caught_up_to = max(caught_up)
        lag = replica.lag(time.time())
        if lag is None:
            self._mark(replica, "no primary position to compare with yet")
        elif lag > self.max_lag:
            self._mark(replica, f"lags {lag:.1f} s, more than {self.max_lag:g} s")
        else:
            self._mark(replica, None)

    def _mark(self, replica: Replica, problem: str | None) -> None:
        """``problem`` (``None``: healthy) decides the replica's health; a change is logged."""
        healthy = problem is None
        if healthy != replica.healthy:
            if healthy:
                logger.info("%s (%s) rejoined: reads go to it again", replica.name, _safe(replica))
            else:
                logger.warning(
                    "%s (%s) skipped: %s; its reads go elsewhere",
                    replica.name,
                    _safe(replica),
                    problem,
                )
        replica.healthy = healthy

    def status(self) -> dict[str, dict[str, int]]:
        """Per replica: healthy (0/1), lag in ms (-1 unknown), reads routed to it."""
        now = time.time()
        out: dict[str, dict[str, int]] = {}
        for replica in self.replicas:
            lag = replica.lag(now)
            out[replica.name] = {
                "healthy": int(replica.healthy),
                "lag_ms": -1 if lag is None else int(lag * 1000),
                "reads": replica.reads,
            }
        return out

    async def close(self) -> None:
        """Stop the monitor and close the replicas' pools."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for replica in self.replicas:
            await replica.engine.dispose()


def _safe(replica: Replica) -> str:
    return mask_url(replica.url)
