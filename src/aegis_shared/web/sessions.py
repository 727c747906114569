"""The session cookie: ``SessionMiddleware`` and ``Depends(current_session)`` (seed 002).

Pure ASGI, like :class:`~aegis_shared.web.middleware.DatabaseSessionMiddleware`, because
the session must be written, and its cookie set, at the exact moment the response
starts, also for streaming responses.

A request pays for the session only if it asks for it: the middleware reads no row until
a handler depends on :func:`current_session`, and writes only what the handler changed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from http.cookies import SimpleCookie
from typing import Any, Final, Literal

from starlette.requests import HTTPConnection, cookie_parser

from aegis_shared.sessions.ids import session_key
from aegis_shared.sessions.store import SessionStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY: Final = "aegis.http_session"
_HOST_PREFIX: Final = "__Host-"


class HttpSession(MutableMapping[str, Any]):
    """The session of one request: a dict of JSON values, saved when the response starts.

    ``session["cart"] = [...]`` marks it changed; after changing a nested value in place
    (``session["cart"].append(1)``) call :meth:`changed`. A client without a session gets
    one (and its cookie) only when something is written. :meth:`rotate` after a login,
    :meth:`invalidate` for a logout.
    """

    def __init__(self, store: SessionStore, cookie: str | None) -> None:
        self._store = store
        self._cookie = cookie  # as the client sent it: maybe stale, forged or malformed
        self._id: str | None = None
        self._data: dict[str, Any] = {}
        self._loaded = False
        self._modified = False
        self._cookie_changed = False
        self._invalidated = False

    # -- state ------------------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The id in the client's cookie, or ``None`` while the client has no session."""
        return self._id

    @property
    def key(self) -> str | None:
        """The session's primary key in the database (the id's SHA-256 digest): what child
        rows (``SessionChildMixin.session_id``) store. ``None`` until the session exists;
        see :meth:`ensure`."""
        return None if self._id is None else session_key(self._id)

    @property
    def is_new(self) -> bool:
        """True when this request started the session (its cookie is set on the response)."""
        return self._id is not None and self._cookie_changed

    async def load(self) -> None:
        """Read the client's session (once per request; :func:`current_session` calls it).

        A cookie that is not shaped like a session id costs no query; an unknown or
        expired id gives an empty session, never one with that id.
        """
        if self._loaded:
            return
        self._loaded = True
        stored = await self._store.get(self._cookie)  # no query if not shaped like an id
        if stored is not None:
            self._id = stored.id
            self._data = dict(stored.data)

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError(
                "The session was used before it was loaded; take it from "
                "Depends(current_session), which loads it"
            )
        if self._invalidated:
            raise RuntimeError(
                "The session was used after invalidate(); a logged-out request has no "
                "session. Start a new one in the next request"
            )

    # -- the mapping --------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        self._require_loaded()
        return self._data[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._require_loaded()
        self._data[name] = value
        self._modified = True

    def __delitem__(self, name: str) -> None:
        self._require_loaded()
        del self._data[name]
        self._modified = True

    def __iter__(self) -> Iterator[str]:
        self._require_loaded()
        return iter(self._data)

    def __len__(self) -> int:
        self._require_loaded()
        return len(self._data)

    def changed(self) -> None:
        """Mark the data changed after a nested value was changed in place."""
        self._require_loaded()
        self._modified = True

    # -- lifecycle ----------------------------------------------------------------------------

    async def ensure(self) -> str:
        """Create the session now if the client has none, and return its :attr:`key`.

        For handlers that write child rows, which need the session's row to exist first.
        """
        self._require_loaded()
        if self._id is None:
            stored = await self._store.create(self._data)
            self._id = stored.id
            self._modified = False
            self._cookie_changed = True
        key = self.key
        assert key is not None
        return key

    async def rotate(self) -> None:
        """Give the session a new id, keeping its data and child rows (call it on login or
        any change of privilege); the old id stops working at once."""
        self._require_loaded()
        if self._id is None:
            await self.ensure()
            return
        rotated = await self._store.rotate(self._id)
        if rotated is None:
            # Logged out or expired meanwhile: continue as a client without a session.
            self._id = None
            await self.ensure()
            return
        self._id = rotated.id
        self._cookie_changed = True

    async def invalidate(self) -> None:
        """Log out: delete the session (and its child rows) on the server now, and clear
        the cookie with the response."""
        self._require_loaded()
        if self._id is not None:
            await self._store.delete(self._id)
        self._id = None
        self._data = {}
        self._invalidated = True

    async def _finish(self) -> str | None:
        """Save what changed; the ``Set-Cookie`` value to send, if any (``""`` clears)."""
        if self._invalidated:
            return "" if self._cookie is not None or self._cookie_changed else None
        if self._modified:
            if self._id is None:
                await self.ensure()
            elif not await self._store.save(self._id, self._data):
                # The session went (a logout, rotation or expiry in another request) while
                # this one ran: its changes are dropped, never written back under the old id.
                return None
        if self._cookie_changed:
            return self._id
        if self._loaded and self._id is None and self._cookie is not None:
            return ""  # a stale, forged or malformed cookie: tell the client to drop it
        return None


class SessionMiddleware:
    """Server-side sessions from a cookie, kept in a :class:`SessionStore`.

    >>> app.add_middleware(SessionMiddleware, store=store)
    >>> @app.get("/fridge")
    ... async def fridge(session: HttpSession = Depends(current_session)): ...

    The cookie is ``HttpOnly``, ``SameSite=Lax`` (or ``same_site``), ``Path=/`` and
    ``Secure`` unless the request is plain HTTP to a loopback host (local development).
    ``host_prefix=True`` names it ``__Host-<cookie_name>``, which browsers accept only
    with ``Secure``, ``Path=/`` and no ``Domain``, so a sibling subdomain cannot plant or
    overwrite it. It carries no expiry: the server enforces idle and absolute timeouts.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: SessionStore,
        *,
        cookie_name: str = "session",
        same_site: Literal["lax", "strict"] = "lax",
        host_prefix: bool = False,
    ) -> None:
        if not isinstance(store, SessionStore):
            raise TypeError(f"SessionMiddleware needs a SessionStore, got {type(store).__name__}")
        if same_site not in ("lax", "strict"):
            raise ValueError(
                f"same_site={same_site!r} is not allowed: use 'lax' (the default) or 'strict'; "
                "'none' would send the session cookie with cross-site requests"
            )
        if not cookie_name or cookie_name.startswith(_HOST_PREFIX):
            raise ValueError(
                f"cookie_name={cookie_name!r}: give a plain name, and host_prefix=True for "
                "the __Host- prefix"
            )
        self.app = app
        self.store = store
        self.cookie_name = _HOST_PREFIX + cookie_name if host_prefix else cookie_name
        self.same_site = same_site
        self.host_prefix = host_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Give the request its session; save it and set the cookie when the response starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        cookie = cookie_parser(connection.headers.get("cookie", "")).get(self.cookie_name)
        session = HttpSession(self.store, cookie)
        scope.setdefault("state", {})[STATE_KEY] = session
        secure = self.host_prefix or not _plain_http_to_loopback(connection)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                value = await session._finish()
                if value is not None:
                    headers = list(message.get("headers", []))
                    headers.append((b"set-cookie", self._cookie(value, secure).encode("latin-1")))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _cookie(self, value: str, secure: bool) -> str:
        cookie: SimpleCookie = SimpleCookie()
        cookie[self.cookie_name] = value
        morsel = cookie[self.cookie_name]
        morsel["path"] = "/"
        morsel["httponly"] = True
        morsel["samesite"] = self.same_site.capitalize()
        if secure:
            morsel["secure"] = True
        if not value:
            morsel["max-age"] = 0
            morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
        return morsel.OutputString()


def _plain_http_to_loopback(connection: HTTPConnection) -> bool:
    if connection.url.scheme != "http":
        return False
    host = connection.url.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def current_session(request: HTTPConnection) -> HttpSession:
    """FastAPI dependency: the request's :class:`HttpSession`, loaded.

    >>> async def handler(session: HttpSession = Depends(current_session)): ...
    """
    session = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(session, HttpSession):
        raise RuntimeError(
            "current_session needs SessionMiddleware: add "
            "app.add_middleware(SessionMiddleware, store=SessionStore(db, YourSessionModel))"
        )
    await session.load()
    return session
