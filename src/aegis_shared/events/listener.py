"""PostgreSQL wake-ups: one dedicated connection per hub, outside the pool, that LISTENs.

Why not a pooled connection: LISTEN is session state, so the connection would be pinned
for the life of the process (and behind a transaction pooler such as pgbouncer it would
not work at all: give the hub a direct URL then). Why asyncpg directly: the pool's
connections are SQLAlchemy's to reset and recycle; this one lives as long as the hub.

asyncpg drops its listeners when the connection dies, so the loop here watches the
connection, reconnects with backoff, LISTENs again and then wakes every channel: what was
committed while it was away is read from the log. A lost NOTIFY costs latency, never an
event.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import URL

from aegis_shared.errors.redaction import mask_url
from aegis_shared.events.wakeups import NOTIFY_CHANNEL

logger = logging.getLogger("aegis_shared.events")


class Listener:
    """Keeps one LISTEN connection open; calls ``on_channel(name)`` for each wake-up from
    another connection and ``on_connected()`` after every (re)connection."""

    def __init__(
        self,
        url: URL,
        connect_kwargs: dict[str, Any],
        *,
        on_channel: Callable[[str], None],
        on_connected: Callable[[], None],
        connect_timeout: float,
        check_interval: float,
        backoff_min: float,
        backoff_max: float,
    ) -> None:
        # asyncpg.connect's keywords as the pool's engine passes them (host, user and TLS
        # from the URL and connect_args): not a DSN, whose unknown query parameters asyncpg
        # would send as server settings. Its own application name, to tell it apart.
        settings = dict(connect_kwargs.get("server_settings") or {})
        settings["application_name"] = "aegis-events"
        self._connect_kwargs = {**connect_kwargs, "server_settings": settings}
        self._safe = mask_url(url)
        self._on_channel = on_channel
        self._on_connected = on_connected
        self._connect_timeout = connect_timeout
        self._check_interval = check_interval
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._stopped = False
        #: Connections made so far (1 after the first, 2 after one reconnect, ...).
        self.connections = 0

    @property
    def pid(self) -> int | None:
        """The server process id of the listening connection while it is open."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return None
        return int(conn.get_server_pid())

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if pid == conn.get_server_pid():
            return  # our own NOTIFY (see send): this process's commit already woke the hub
        self._on_channel(payload)

    def _terminated(self, conn: Any) -> None:
        self._lost.set()

    def stop(self) -> None:
        """Make :meth:`run` return at its next step (the hub cancels it too)."""
        self._stopped = True
        self._lost.set()

    async def send(self, channels: list[str]) -> bool:
        """NOTIFY ``channels`` through the listening connection; False when it is down
        (the caller then sends through a pooled connection)."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        await conn.execute(
            "SELECT pg_notify($1, c) FROM unnest($2::text[]) AS c", NOTIFY_CHANNEL, channels
        )
        return True

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        delay = self._backoff_min
        while not self._stopped:
            try:
                await self._connect()
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                logger.warning(
                    "event hub cannot LISTEN on %s (%s); retrying in %.1f s", self._safe, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(self._backoff_max, delay * 2) * random.uniform(0.75, 1.0)
                delay = max(delay, self._backoff_min)
                continue
            delay = self._backoff_min
            if self._stopped:
                await self._drop()
                return
            self._on_connected()
            try:
                await self._watch()
            finally:
                await self._drop()
            if self._stopped:
                return
            logger.warning("event hub lost its LISTEN connection to %s; reconnecting", self._safe)

    async def _connect(self) -> None:
        self._lost.clear()
        conn = await asyncpg.connect(**{**self._connect_kwargs, "timeout": self._connect_timeout})
        try:
            conn.add_termination_listener(self._terminated)
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.connections += 1

    async def _watch(self) -> None:
        # The termination listener reports a closed connection; the periodic round trip
        # finds a half-open one (a peer that vanished without closing the socket).
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=self._check_interval)
                return
            except TimeoutError:
                pass
            conn = self._conn
            if conn is None or conn.is_closed():
                return
            try:
                await conn.execute("SELECT 1", timeout=self._connect_timeout)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        """Close the listening connection (the hub cancels :meth:`run` first)."""
        await self._drop()
