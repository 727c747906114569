"""Server-side sessions in the application's database instead of Redis (seed 002).

>>> from aegis_shared.sessions import ServerSessionMixin, SessionChildMixin, SessionStore
"""

from aegis_shared.sessions import ddl  # noqa: F401  (registers CREATE UNLOGGED TABLE)
from aegis_shared.sessions.ids import is_session_id, new_session_id, session_key
from aegis_shared.sessions.models import ServerSessionMixin, SessionChildMixin, session_table_args
from aegis_shared.sessions.store import (
    SessionDataTooLargeError,
    SessionStats,
    SessionStore,
    StoredSession,
)
from aegis_shared.sessions.sweeper import SessionSweeper, sweep_sessions

__all__ = [
    "ServerSessionMixin",
    "SessionChildMixin",
    "SessionDataTooLargeError",
    "SessionStats",
    "SessionStore",
    "SessionSweeper",
    "StoredSession",
    "is_session_id",
    "new_session_id",
    "session_key",
    "session_table_args",
    "sweep_sessions",
]
