"""``SessionStore``: server-side sessions in the application's own database (seed 002).

Every method is its own short unit of work on the manager, so a store can be shared by
all requests and background tasks. The database clock is never used: times come from the
store's ``clock``, so expiry is the same on every backend (and tests can move time).

Why writes look the way they do:

* A live session is read with one SELECT by primary key, outside any transaction
  (the library's fast path). It is written back only when ``touch_interval`` has passed
  since the last write, so most reads write nothing.
* Every write to an existing session is ``UPDATE ... WHERE session_id = :key AND
  expires_at > :now``, never an upsert: a request that finishes after a logout, a
  rotation or an expiry changes no row, and cannot bring the old session back.
* The store's statements carry session digests and session data, so they run on an
  engine that hides its parameters: ``echo=True`` logs them as hidden, and a failing
  statement's error (and so its traceback) does not include them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Table, bindparam, case, delete, func, insert, select, update
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from aegis_shared.database import DatabaseManager, fast_path
from aegis_shared.errors.exceptions import ConfigurationError
from aegis_shared.models.types import UTCDateTime, utcnow
from aegis_shared.sessions.cleanup import delete_expired, rows_matched
from aegis_shared.sessions.ids import _digest, is_session_id, new_session_id
from aegis_shared.sessions.models import ServerSessionMixin, check_session_model, child_tables

#: Largest ``batch_size`` of :meth:`SessionStore.cleanup_expired`: a batch is meant to be
#: one short transaction (and on SQLite and MariaDB one IN list of that many keys).
MAX_CLEANUP_BATCH: Final = 10_000

#: Default largest session document (its compact JSON text, UTF-8) a store accepts: a
#: session is read on every request, so a large one costs every request.
DEFAULT_MAX_DATA_BYTES: Final = 64 * 1024


class SessionDataTooLargeError(ValueError):
    """Session data is larger than the store's ``max_data_bytes``; nothing was written.

    ``size`` and ``limit`` are in bytes of compact JSON text. Keep large things in tables
    of their own (a ``SessionChildMixin`` model) and only their ids in the session.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"session data is {size} bytes of JSON, above this store's limit of {limit} "
            "bytes; nothing was written. Store large values in their own table (a "
            "SessionChildMixin model) and keep only their ids in the session, or raise "
            "SessionStore(max_data_bytes=...)"
        )


@dataclass(frozen=True, slots=True)
class StoredSession:
    """One live session as the store read or wrote it.

    ``id`` is the id the client holds (new after :meth:`SessionStore.create` and
    :meth:`SessionStore.rotate`); ``data`` is a copy: change it and pass it to
    :meth:`SessionStore.save` to store it.
    """

    id: str
    data: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    last_accessed: datetime


@dataclass(frozen=True, slots=True)
class SessionStats:
    """Counts of :meth:`SessionStore.stats` at one moment."""

    #: Sessions not yet expired.
    active: int
    #: Rows of every child model of the session model (``SessionChildMixin``).
    child_rows: int
    #: Expired sessions that :meth:`SessionStore.cleanup_expired` has not deleted yet.
    expired_waiting: int
    #: ``created_at`` of the oldest active session, ``None`` when there is none.
    oldest_created_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Record:
    data: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    last_accessed: datetime

    @classmethod
    def of(cls, values: Mapping[Any, Any]) -> _Record:
        data = values["data"]
        return cls(
            data=dict(data) if data else {},
            created_at=values["created_at"],
            expires_at=values["expires_at"],
            last_accessed=values["last_accessed"],
        )

    def session(
        self, session_id: str, *, expires_at: datetime | None = None, at: datetime | None = None
    ) -> StoredSession:
        return StoredSession(
            id=session_id,
            data=self.data,
            created_at=self.created_at,
            expires_at=self.expires_at if expires_at is None else expires_at,
            last_accessed=self.last_accessed if at is None else at,
        )


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` if it is a whole number from 1 to :data:`MAX_CLEANUP_BATCH`."""
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= MAX_CLEANUP_BATCH
    ):
        raise ValueError(
            f"batch_size must be a whole number from 1 to {MAX_CLEANUP_BATCH}, got {batch_size!r}"
        )
    return batch_size


def _hiding_parameters(engine: AsyncEngine) -> AsyncEngine:
    """A view of ``engine`` (same pool, dialect, listeners and options) whose statements
    are logged, and whose errors are built, without their parameters."""
    quiet = engine.execution_options()
    quiet.sync_engine.hide_parameters = True
    return quiet


def _positive(name: str, value: Any, *, zero: bool = False) -> timedelta:
    if not isinstance(value, timedelta) or value < timedelta(0) or (not zero and not value):
        bound = ">= timedelta(0)" if zero else "> timedelta(0)"
        raise ConfigurationError(
            f"SessionStore({name}={value!r}) is invalid: pass a timedelta {bound}, "
            "for example timedelta(hours=24)"
        )
    return value


class SessionStore:
    """Server-side sessions kept in ``model``'s table (a :class:`ServerSessionMixin` model).

    >>> store = SessionStore(db, UserFridgeSession)
    >>> session = await store.create({"cart": []})      # session.id goes in the cookie
    >>> session = await store.get(cookie_value)         # None: unknown, expired or malformed
    >>> await store.save(session.id, {**session.data, "cart": [1]})
    >>> session = await store.rotate(session.id)        # after login: new id, same data
    >>> await store.delete(session.id)                  # logout

    A session expires ``idle_timeout`` after its last use (sliding) and at the latest
    ``absolute_timeout`` after it was created, whatever its use. Use is written at most
    once per ``touch_interval``, so a session may expire up to ``touch_interval`` before
    ``idle_timeout`` has passed since its very last request, never after.
    """

    def __init__(
        self,
        db: DatabaseManager,
        model: type[ServerSessionMixin],
        *,
        idle_timeout: timedelta = timedelta(hours=24),
        absolute_timeout: timedelta = timedelta(days=7),
        touch_interval: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = utcnow,
        max_data_bytes: int = DEFAULT_MAX_DATA_BYTES,
    ) -> None:
        if not isinstance(db, DatabaseManager):
            raise TypeError(f"SessionStore needs a DatabaseManager, got {type(db).__name__}")
        mapper = check_session_model(model, "SessionStore(model=...)")
        self.idle_timeout = _positive("idle_timeout", idle_timeout)
        self.absolute_timeout = _positive("absolute_timeout", absolute_timeout)
        self.touch_interval = _positive("touch_interval", touch_interval, zero=True)
        if touch_interval >= idle_timeout:
            raise ConfigurationError(
                f"SessionStore(touch_interval={touch_interval}) must be shorter than "
                f"idle_timeout ({idle_timeout}): a session in use would expire between "
                "two writes of its use. Lower touch_interval (a few minutes is typical) "
                "or raise idle_timeout."
            )
        if not callable(clock):
            raise TypeError(f"SessionStore(clock=...) must be a callable, got {clock!r}")
        if (
            isinstance(max_data_bytes, bool)
            or not isinstance(max_data_bytes, int)
            or max_data_bytes < 2
        ):
            raise ConfigurationError(
                f"SessionStore(max_data_bytes={max_data_bytes!r}) is invalid: pass a whole "
                "number of bytes >= 2 (an empty session is 2), for example "
                f"{DEFAULT_MAX_DATA_BYTES}"
            )
        #: Largest session data accepted by create() and save(), in bytes of compact JSON.
        self.max_data_bytes = max_data_bytes
        self.db = db
        self._quiet = _hiding_parameters(db.engine)
        self._quiet_bind: Engine = self._quiet.sync_engine
        self._quiet_background: Engine = _hiding_parameters(db.background_engine).sync_engine
        self.model = model
        self._mapper = mapper
        self._clock = clock
        table = mapper.local_table
        assert isinstance(table, Table)  # a mixin model maps one table
        self.table = table
        self._readers: dict[Dialect, fast_path.ModelReader] = {}
        self._build_statements(table)

    def _build_statements(self, table: Table) -> None:
        # Built once: these run on every request.
        c = table.c
        moment = UTCDateTime()
        key = c.session_id == bindparam("p_key", type_=c.session_id.type)
        alive = c.expires_at > bindparam("p_now", type_=moment)
        self._insert_sql = insert(table)
        self._select_sql = select(*c).where(key)
        self._touch_sql = (
            update(table)
            .where(key, alive)
            .values(
                last_accessed=bindparam("p_at", type_=moment),
                expires_at=bindparam("p_expires", type_=moment),
            )
        )
        self._save_sql = (
            update(table).where(key, alive).values(data=bindparam("p_data", c.data.type))
        )
        self._rotate_sql = (
            update(table)
            .where(key, alive)
            .values(session_id=bindparam("p_new_key", type_=c.session_id.type))
        )
        self._delete_sql = delete(table).where(key)

    # -- time -------------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.utcoffset() is None:
            raise ValueError(
                f"SessionStore's clock returned {now!r}; it must return an aware datetime, "
                "for example datetime.now(UTC)"
            )
        return now

    def _expiry(self, created_at: datetime, now: datetime) -> datetime:
        """Sliding expiry from ``now``, never past the absolute lifetime."""
        return min(now + self.idle_timeout, created_at + self.absolute_timeout)

    # -- reading and writing ------------------------------------------------------------------

    def _reader(self, dialect: Dialect) -> fast_path.ModelReader | None:
        reader = self._readers.get(dialect)
        if reader is None:
            reader = self._readers[dialect] = fast_path.ModelReader(self._mapper, dialect)
        return reader if reader.eligible else None

    async def _fast_load(self, key: str) -> Any:
        """The row of ``key`` read on the fast path: its values, ``None``, or UNAVAILABLE.

        Not BaseRepository.get_by_id: the store makes no objects (the MutableDict on
        ``data`` would keep a repository on the ORM path anyway) and needs no session, so
        the read is only a pool check-out, one SELECT and a check-in.
        """
        engine = self.db.fast_read_engine
        reader = None if engine is None else self._reader(engine.sync_engine.dialect)
        if engine is None or reader is None:
            return fast_path.UNAVAILABLE
        rows = await fast_path.fetch(
            engine, reader.plan("get", None), {"pk": key}, hide_parameters=True
        )
        if isinstance(rows, fast_path.Unavailable):
            return rows
        if not rows:
            return None
        return dict(zip(reader.keys, reader.values(rows[0]), strict=True))

    async def _load(self, key: str) -> _Record | None:
        """The stored row of ``key``, expired or not, or ``None``: one SELECT."""
        values = await self._fast_load(key)
        if values is fast_path.UNAVAILABLE:
            async with self.db.session() as session:
                result = await self._execute(session, self._select_sql, {"p_key": key})
                values = result.mappings().first()
        return None if values is None else _Record.of(values)

    async def _load_live(self, session_id: str | None) -> tuple[str, _Record, datetime] | None:
        """(key, record, now) of the live session ``session_id``; ``None`` without a
        query for a malformed id, and after one SELECT for an unknown or expired one."""
        if not is_session_id(session_id):
            return None
        key = _digest(session_id)
        now = self._now()
        record = await self._load(key)
        if record is None or record.expires_at <= now:
            return None
        return key, record, now

    async def _execute(self, session: Any, statement: Any, params: Any) -> Any:
        """``session.execute`` on the engine that hides parameters (see the module doc)."""
        return await session.execute(statement, params, bind_arguments={"bind": self._quiet_bind})

    async def _write(self, statement: Any, params: dict[str, Any]) -> int:
        """Run one write in its own transaction; the number of rows it matched."""
        async with self.db.session() as session:
            return rows_matched(await self._execute(session, statement, params))

    async def _touch(self, key: str, record: _Record, now: datetime) -> datetime | None:
        """Slide the expiry of a live session; its new expiry, or ``None`` if it is gone."""
        expires_at = self._expiry(record.created_at, now)
        params = {"p_key": key, "p_now": now, "p_at": now, "p_expires": expires_at}
        return expires_at if await self._write(self._touch_sql, params) else None

    def _document(self, data: Mapping[str, Any] | None) -> dict[str, Any]:
        """``data`` as the dict to store, once it is a mapping of JSON values within
        ``max_data_bytes``; errors name types and sizes, never the values."""
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise TypeError(
                f"session data must be a mapping (a dict of JSON values), got {type(data).__name__}"
            )
        document = dict(data)
        try:
            text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:  # json's messages name types, not values
            raise TypeError(f"session data must hold only JSON values: {exc}") from None
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.max_data_bytes:
            raise SessionDataTooLargeError(size, self.max_data_bytes)
        return document

    # -- the API --------------------------------------------------------------------------------

    async def create(self, data: Mapping[str, Any] | None = None) -> StoredSession:
        """Start a new session holding ``data`` (a dict of JSON values); one INSERT.

        Raises :class:`SessionDataTooLargeError` (nothing written) for data above
        ``max_data_bytes``."""
        document = self._document(data)
        session_id = new_session_id()
        now = self._now()
        expires_at = self._expiry(now, now)
        values = {
            "session_id": _digest(session_id),
            "data": document,
            "created_at": now,
            "expires_at": expires_at,
            "last_accessed": now,
        }
        async with self.db.session() as session:
            await self._execute(session, self._insert_sql, values)
        return StoredSession(session_id, document, now, expires_at, now)

    async def get(self, session_id: str | None) -> StoredSession | None:
        """The live session of ``session_id``, or ``None``.

        ``None`` without any query for a value not shaped like a session id; one SELECT
        otherwise. When ``touch_interval`` has passed since the session's use was last
        written, one UPDATE slides its expiry (and returns ``None`` if a logout or
        rotation removed it meanwhile).
        """
        live = await self._load_live(session_id)
        if live is None:
            return None
        key, record, now = live
        assert session_id is not None  # _load_live checked its shape
        if now - record.last_accessed < self.touch_interval:
            return record.session(session_id)
        expires_at = await self._touch(key, record, now)
        if expires_at is None:
            return None
        return record.session(session_id, expires_at=expires_at, at=now)

    async def extend(self, session_id: str | None) -> bool:
        """Slide the expiry of a live session now, whatever ``touch_interval`` says (still
        never past its absolute lifetime); ``False`` when there is no such live session."""
        live = await self._load_live(session_id)
        return live is not None and await self._touch(*live) is not None

    async def save(self, session_id: str | None, data: Mapping[str, Any]) -> bool:
        """Replace the data of a live session; ``False`` (and nothing written) when the
        session is unknown, expired, deleted or rotated away.

        Raises :class:`SessionDataTooLargeError` (nothing written) for data above
        ``max_data_bytes``."""
        document = self._document(data)
        if not is_session_id(session_id):
            return False
        params = {"p_key": _digest(session_id), "p_now": self._now(), "p_data": document}
        return await self._write(self._save_sql, params) == 1

    async def rotate(self, session_id: str | None) -> StoredSession | None:
        """Give a live session a new id (after a login or any change of privilege).

        The old id stops working at once; data, child rows (``ON UPDATE CASCADE``),
        ``created_at`` and so the absolute lifetime stay. ``None`` when there is no such
        live session.
        """
        if not is_session_id(session_id):
            return None
        new_id = new_session_id()
        new_key = _digest(new_id)
        params = {"p_key": _digest(session_id), "p_now": self._now(), "p_new_key": new_key}
        async with self.db.session() as session:
            if rows_matched(await self._execute(session, self._rotate_sql, params)) != 1:
                return None
            result = await self._execute(session, self._select_sql, {"p_key": new_key})
            record = _Record.of(result.mappings().one())
        return record.session(new_id)

    async def delete(self, session_id: str | None) -> bool:
        """Delete a session and (by cascade) its child rows; ``True`` when a row went."""
        if not is_session_id(session_id):
            return False
        return await self._write(self._delete_sql, {"p_key": _digest(session_id)}) == 1

    async def cleanup_expired(
        self, batch_size: int = 1000, *, on_batch: Callable[[int], None] | None = None
    ) -> int:
        """Delete expired sessions and their child rows; returns how many sessions went.

        Works in batches of about ``batch_size`` sessions, each its own transaction, on
        the background pool; sessions that expire while it runs are left for the next run.
        ``on_batch(removed)`` is called after each committed batch (progress reports).
        """
        check_batch_size(batch_size)
        return await delete_expired(
            self.db, self.table, self._now(), batch_size, on_batch, self._quiet_background
        )

    async def stats(self) -> SessionStats:
        """Active and expired sessions, child rows and the oldest active session's start."""
        now = self._now()
        c = self.table.c
        alive = c.expires_at > bindparam("p_now", type_=UTCDateTime())
        sessions = select(
            func.coalesce(func.sum(case((alive, 1), else_=0)), 0),
            func.coalesce(func.sum(case((alive, 0), else_=1)), 0),
            func.min(case((alive, c.created_at))),
        )
        children = [
            select(func.count()).select_from(table).scalar_subquery()
            for table in child_tables(self.model)
        ]
        async with self.db.background_session() as session:
            row = (await session.execute(sessions, {"p_now": now})).one()
            active, expired, oldest = tuple(row)
            counts: Sequence[Any] = ()
            if children:
                counts = tuple((await session.execute(select(*children))).one())
        return SessionStats(
            active=int(active),
            child_rows=sum(int(count) for count in counts),
            expired_waiting=int(expired),
            oldest_created_at=oldest,
        )
