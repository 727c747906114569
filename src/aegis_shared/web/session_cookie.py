"""The session cookie: ``SessionMiddleware`` and ``HttpSession`` (seed 002), for any ASGI
framework (FastAPI's ``current_session`` is in :mod:`aegis_shared.web.sessions`, Litestar's
in :mod:`aegis_shared.litestar.sessions`).

Pure ASGI, like :class:`~aegis_shared.web.middleware.DatabaseSessionMiddleware`, because
the session must be written, and its cookie set, at the exact moment the response
starts, also for streaming responses. Needs no Starlette.

A request pays for the session only if it asks for it: the middleware reads no row until
a handler depends on :func:`current_session`, and writes only what the handler changed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from http.cookies import SimpleCookie
from typing import Any, Final, Literal

from aegis_shared.errors.exceptions import DatabaseError
from aegis_shared.sessions.ids import is_session_id, session_key
from aegis_shared.sessions.store import SessionDataTooLargeError, SessionStore
from aegis_shared.web.asgi import ASGIApp, Message, Receive, Scope, Send, cookie_values
from aegis_shared.web.csrf import CSRFMiddleware, CSRFTokens
from aegis_shared.web.errors import send_error

STATE_KEY: Final = "aegis.http_session"
_HOST_PREFIX: Final = "__Host-"

#: Most cookie values of the session's name that one request may look up. A browser sends
#: several when a sibling subdomain or a path planted more cookies of that name; each
#: costs one SELECT, so a client must not be able to make a request cost many.
MAX_COOKIE_CANDIDATES: Final = 3

logger = logging.getLogger("aegis_shared.web")


class HttpSession(MutableMapping[str, Any]):
    """The session of one request: a dict of JSON values, saved when the response starts.

    ``session["cart"] = [...]`` marks it changed; after changing a nested value in place
    (``session["cart"].append(1)``) call :meth:`changed`. A client without a session gets
    one (and its cookie) only when something is written. :meth:`rotate` after a login,
    :meth:`invalidate` for a logout.

    Changes are saved only when the response's status is below 400: a handler that sets
    ``session["user"]`` and then answers 401 leaves the session as it was, and a session
    this request started (a first write, :meth:`ensure`) is deleted again. Call
    :meth:`save_on_error` to save and keep them whatever the status.
    """

    def __init__(self, store: SessionStore, cookie: str | list[str] | None) -> None:
        self._store = store
        # The values of the cookie as the client sent them, in order: maybe stale,
        # forged, malformed, or planted by a sibling subdomain.
        if cookie is None:
            cookie = []
        elif isinstance(cookie, str):
            cookie = [cookie]
        self._cookies = list(cookie)
        self._id: str | None = None
        self._data: dict[str, Any] = {}
        self._loaded = False
        self._modified = False
        self._cookie_changed = False
        self._created = False  # this request INSERTed the session's row
        self._untried = False  # more id-shaped values than were looked up
        self._invalidated = False
        self._rotation_lost = False
        self._save_on_error = False

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

    @property
    def ended(self) -> bool:
        """True once this request has no session any more: after :meth:`invalidate`, or a
        :meth:`rotate` that returned ``False``. The session can no longer be used."""
        return self._invalidated or self._rotation_lost

    async def load(self) -> None:
        """Read the client's session (once per request; :func:`current_session` calls it).

        A cookie that is not shaped like a session id costs no query; an unknown or
        expired id gives an empty session, never one with that id. When the client sent
        several cookies of the session's name, the first (of at most
        :data:`MAX_COOKIE_CANDIDATES` shaped like an id) that is a live session wins.
        If the read fails (the database is down or slow), the error propagates and the
        response leaves the client's cookie alone: only a session known not to exist is
        cleared.
        """
        if self._loaded:
            return
        candidates: list[str] = []
        for value in self._cookies:
            if is_session_id(value) and value not in candidates:
                candidates.append(value)
        # Values beyond the limit were never looked up: one of them may be the client's
        # live session, so this response must not clear the cookie.
        self._untried = len(candidates) > MAX_COOKIE_CANDIDATES
        for candidate in candidates[:MAX_COOKIE_CANDIDATES]:
            stored = await self._store.get(candidate)
            if stored is not None:
                self._id = stored.id
                self._data = dict(stored.data)
                break
        # Only now: after a failed read the session counts as never loaded, so the
        # response neither saves it nor clears the cookie.
        self._loaded = True

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError(
                "The session was used before it was loaded; take it from current_session "
                "(Depends(current_session) on FastAPI, the AegisPlugin's http_session "
                "dependency on Litestar), which loads it"
            )
        if self._invalidated:
            raise RuntimeError(
                "The session was used after invalidate(); a logged-out request has no "
                "session. Start a new one in the next request"
            )
        if self._rotation_lost:
            raise RuntimeError(
                "The session was used after rotate() returned False: it ended (a logout, "
                "its expiry or another request's rotation) while this request ran, and its "
                "data was discarded. Check rotate()'s result and answer, for example, 409 "
                "asking the client to log in again"
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

    def save_on_error(self) -> None:
        """Save this request's changes, and keep a session it started, even when the
        response's status is 400 or more (by default they are dropped): for data that
        must outlive a failed request, such as a count of failed login attempts."""
        self._require_loaded()
        self._save_on_error = True

    # -- lifecycle ----------------------------------------------------------------------------

    async def ensure(self) -> str:
        """Create the session now if the client has none, and return its :attr:`key`.

        For handlers that write child rows, which need the session's row to exist first.
        If the response turns out to be an error (status 400 or more, or an exception),
        the row (and so its child rows) is deleted again unless :meth:`save_on_error`
        was called.
        """
        self._require_loaded()
        if self._id is None:
            stored = await self._store.create(self._data)
            self._id = stored.id
            self._modified = False
            self._cookie_changed = True
            self._created = True
        key = self.key
        assert key is not None
        return key

    async def rotate(self) -> bool:
        """Give the session a new id, keeping its data and child rows (call it on login or
        any change of privilege); the old id stops working at once. ``True`` when done.

        ``False`` when the session ended while this request ran (a logout, its absolute
        or idle expiry, or a rotation by another request, of which only one wins): its
        data is discarded, no session is created, the response sets no cookie, and any
        further use of the session raises ``RuntimeError``. A login handler should answer
        an error then (409, say) rather than report success::

            if not await session.rotate():
                raise HTTPException(409, "Your session ended meanwhile; log in again")

        A client without a session gets a new one (as :meth:`ensure`).
        """
        self._require_loaded()
        if self._id is None:
            await self.ensure()
            return True
        rotated = await self._store.rotate(self._id)
        if rotated is None:
            # Never recreate it from the data in hand: that would revive a logged-out or
            # expired session, and let N concurrent logins make N live sessions.
            self._id = None
            self._data = {}
            self._modified = False
            self._rotation_lost = True
            return False
        self._id = rotated.id
        self._cookie_changed = True
        return True

    async def invalidate(self) -> None:
        """Log out: delete the session (and its child rows) on the server now, and clear
        the cookie with the response."""
        self._require_loaded()
        if self._id is not None:
            await self._store.delete(self._id)
        self._id = None
        self._data = {}
        self._invalidated = True

    async def _discard_created(self) -> None:
        """Delete the row this request created, for a request that failed."""
        session_id, self._id = self._id, None
        self._cookie_changed = False
        try:
            await self._store.delete(session_id)
        except Exception as exc:
            # The failed request's own answer matters more; the row holds nothing the
            # client was told about, and cleanup_expired() removes it at its expiry.
            logger.warning(
                "could not delete the session a failed request started (%s); it stays "
                "until it expires",
                type(exc).__name__,
            )

    async def _finish(self, status: int | None) -> str | None:
        """Save what changed; the ``Set-Cookie`` value to send, if any (``""`` clears).

        ``status`` is the response's, ``None`` when the app raised before responding.
        """
        if self._invalidated:
            return "" if self._cookies or self._cookie_changed else None
        if not self._loaded or self._rotation_lost:
            # Never loaded (or the load failed, the database being unreachable): nothing
            # is known about the client's cookie, so it is left alone. After a lost
            # rotation the cookie the client holds may be the winner's: left alone too.
            return None
        if status is None:
            # The app raised before responding: no cookie can reach the client, so a
            # session this request started is useless and goes, whatever save_on_error.
            if self._created:
                await self._discard_created()
            elif self._save_on_error and self._modified and self._id is not None:
                await self._store.save(self._id, self._data)
            return None
        if status >= 400 and not self._save_on_error:
            if self._created:
                await self._discard_created()
            # A rotation already happened in the database: the client needs the new id,
            # its data being the stored one, without this request's changes.
        elif self._modified:
            if self._id is None:
                await self.ensure()
            elif not await self._store.save(self._id, self._data):
                # The session went (a logout, rotation or expiry in another request) while
                # this one ran: its changes are dropped, never written back under the old id.
                return None
        if self._cookie_changed:
            return self._id
        if self._id is None and self._cookies and not self._untried:
            return ""  # stale, forged or malformed cookies: tell the client to drop it
        return None


#: The answer depended on the request's cookie, so no shared cache may reuse it.
_VARY = ((b"vary", b"Cookie"),)


async def _send_save_error(send: Send, exc: Exception, session: HttpSession) -> None:
    """Answer a request whose session could not be saved: 413 for data over the store's
    limit, the database error's safe body otherwise; nothing of this request is kept."""
    if session._created:
        with contextlib.suppress(Exception):  # the row may be unreachable too: it expires
            await session._discard_created()
    if isinstance(exc, SessionDataTooLargeError):
        body = {
            "error": "session_too_large",
            "detail": "The session's data is larger than this server keeps; nothing was "
            "saved. Store less in the session.",
        }
        await send_error(send, exc, "saving the session", status=413, body=body, headers=_VARY)
    else:
        await send_error(send, exc, "saving the session", headers=_VARY)


class SessionMiddleware:
    """Server-side sessions from a cookie, kept in a :class:`SessionStore`.

    >>> app.add_middleware(SessionMiddleware, store=store)
    >>> @app.get("/fridge")
    ... async def fridge(session: HttpSession = Depends(current_session)): ...

    The cookie's attributes:

    * ``Secure`` by default (``secure=True``), whatever the request's scheme or host:
      behind a TLS-terminating proxy the app sees plain HTTP, so the scheme proves
      nothing. Local development over ``http://`` opts out with ``secure=False``
      (the fridge example reads ``SESSION_COOKIE_SECURE=false`` from the environment);
      browsers drop a ``Secure`` cookie set over plain HTTP except on localhost.
    * Named ``__Host-<cookie_name>`` (``__Host-session``) when ``Secure``: browsers
      accept that name only with ``Secure``, ``Path=/`` and no ``Domain``, so a sibling
      subdomain can neither plant nor overwrite it. ``host_prefix`` defaults to
      ``secure``; ``host_prefix=False`` keeps the plain name (for example while clients
      still hold the old cookie), and ``host_prefix=True`` with ``secure=False`` is
      refused, since browsers would reject every such cookie.
    * ``HttpOnly``, ``SameSite=Lax`` (or ``same_site="strict"``), ``Path=/``, no
      ``Domain`` and no expiry: the server enforces idle and absolute timeouts.

    Every response that sets or clears the cookie carries ``Cache-Control: no-store``
    (replacing the handler's, so no cache keeps a session id) and every response of a
    request that used the session carries ``Vary: Cookie``.

    When a client sends several cookies of the name, the first that is a live session
    wins (at most :data:`MAX_COOKIE_CANDIDATES` are looked up). A database error while
    the session is read leaves the cookie alone; only a session known not to exist is
    cleared. Changes are saved only with a status below 400 (see :class:`HttpSession`).

    Cross-site request forgery: with ``csrf=True`` (the default) unsafe requests that a
    browser marks as coming from another origin are refused with a 403 before the app
    runs (:class:`~aegis_shared.web.csrf.CSRFMiddleware`); ``trusted_origins`` lists the
    other origins allowed (``["https://admin.example.com"]``) and ``csrf_tokens`` adds
    form tokens (:class:`~aegis_shared.web.csrf.CSRFTokens`). ``csrf=False`` only when
    another layer already does this.

    With :class:`~aegis_shared.web.DatabaseSessionMiddleware` as well, add this one
    after it (so it is the outer one): the request's transaction then ends before this
    middleware deletes a session that a failed request started.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: SessionStore,
        *,
        cookie_name: str = "session",
        same_site: Literal["lax", "strict"] = "lax",
        host_prefix: bool | None = None,
        secure: bool = True,
        csrf: bool = True,
        trusted_origins: Sequence[str] = (),
        csrf_tokens: CSRFTokens | None = None,
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
                f"cookie_name={cookie_name!r}: give a plain name; the __Host- prefix is "
                "added when secure=True (host_prefix)"
            )
        if not isinstance(secure, bool):
            raise TypeError(f"SessionMiddleware(secure=...) must be True or False, got {secure!r}")
        if host_prefix is None:
            host_prefix = secure
        if host_prefix and not secure:
            raise ValueError(
                "host_prefix=True needs secure=True: browsers reject a __Host- cookie "
                "without Secure, so no session would ever stick. Drop host_prefix for "
                "development over plain http (secure=False)"
            )
        if not isinstance(csrf, bool):
            raise TypeError(f"SessionMiddleware(csrf=...) must be True or False, got {csrf!r}")
        if not csrf and (trusted_origins or csrf_tokens is not None):
            raise ValueError(
                "trusted_origins and csrf_tokens configure the CSRF check, which csrf=False "
                "turns off: drop them, or keep csrf=True"
            )
        # A cookie session is what makes cross-site requests dangerous, so its CSRF check
        # comes with it: the app runs behind CSRFMiddleware unless csrf=False.
        self.app: ASGIApp = (
            CSRFMiddleware(app, trusted_origins=trusted_origins, tokens=csrf_tokens)
            if csrf
            else app
        )
        self.csrf = csrf
        self.store = store
        self.cookie_name = _HOST_PREFIX + cookie_name if host_prefix else cookie_name
        self.same_site = same_site
        self.host_prefix = host_prefix
        self.secure = secure

    @classmethod
    def documented_errors(
        cls, options: Mapping[str, Any]
    ) -> list[tuple[str, frozenset[str] | None, str]]:
        """What ``install_error_handlers`` adds to the OpenAPI schema for this middleware:
        the 413 of session data over the store's limit, and the CSRF check's 403 unless
        it was added with ``csrf=False``."""
        answers: list[tuple[str, frozenset[str] | None, str]] = [
            ("413", None, "Session data over the store's limit: session_too_large")
        ]
        if options.get("csrf", True):
            answers += CSRFMiddleware.documented_errors(options)
        return answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Give the request its session; save it and set the cookie when the response starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session = HttpSession(self.store, self._cookie_values(scope))
        scope.setdefault("state", {})[STATE_KEY] = session
        started = False

        replaced = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the handler's response was replaced by an error; drop the rest
            if message["type"] == "http.response.start":
                started = True
                try:
                    value = await session._finish(int(message["status"]))
                except (SessionDataTooLargeError, DatabaseError) as exc:
                    # Saving failed, so the handler's answer would claim what did not
                    # happen: the client gets the reason instead (no exception handler
                    # sees errors raised here, outside the app).
                    replaced = True
                    await _send_save_error(send, exc, session)
                    return
                if value is not None or session._loaded:
                    message["headers"] = self._headers(message.get("headers", []), value)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if not started:
                # No response: the server answers 500. Nothing is saved (unless the
                # handler asked), and a session this request started goes again.
                try:
                    await session._finish(None)
                except Exception as exc:
                    logger.warning(
                        "could not finish the session of a failed request (%s)",
                        type(exc).__name__,
                    )
            raise

    def _cookie_values(self, scope: Scope) -> list[str]:
        """Every value of the session cookie in the request's Cookie headers, in order."""
        return cookie_values(scope, self.cookie_name)

    def _headers(self, headers: Any, value: str | None) -> list[tuple[bytes, bytes]]:
        result: list[tuple[bytes, bytes]] = []
        vary_done = False
        for name, header in headers:
            lower = name.lower()
            if value is not None and lower == b"cache-control":
                continue  # replaced by no-store below
            if lower == b"vary" and not vary_done:
                vary_done = True
                tokens = {token.strip().lower() for token in header.split(b",")}
                if not tokens & {b"cookie", b"*"}:
                    header = header + b", Cookie"
            result.append((name, header))
        if not vary_done:
            result.append((b"vary", b"Cookie"))
        if value is not None:
            result.append((b"cache-control", b"no-store"))
            result.append((b"set-cookie", self._cookie(value).encode("latin-1")))
        return result

    def _cookie(self, value: str) -> str:
        cookie: SimpleCookie = SimpleCookie()
        cookie[self.cookie_name] = value
        morsel = cookie[self.cookie_name]
        morsel["path"] = "/"
        morsel["httponly"] = True
        morsel["samesite"] = self.same_site.capitalize()
        if self.secure:
            morsel["secure"] = True
        if not value:
            morsel["max-age"] = 0
            morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
        return morsel.OutputString()


def request_http_session(scope: Scope) -> HttpSession | None:
    """The :class:`HttpSession` that :class:`SessionMiddleware` gave this request (``scope``:
    the ASGI scope), or ``None`` when the request did not pass through it."""
    session = scope.get("state", {}).get(STATE_KEY)
    return session if isinstance(session, HttpSession) else None
