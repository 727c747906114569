"""One database session per request, committed at the request boundary.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one runs the app in a
separate task and buffers streaming responses, and we need to act on the exact moment the
response starts.
"""

from __future__ import annotations

import logging

from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.registry import get_database
from aegis_shared.database.request_scope import STATE_KEY, RequestSession, current_request_session
from aegis_shared.web.asgi import ASGIApp, Message, Receive, Scope, Send
from aegis_shared.web.errors import send_error

logger = logging.getLogger("aegis_shared.web")


class DatabaseSessionMiddleware:
    """Give each request one lazily opened session, shared by ``Depends(get_session)`` and
    ``provide_services(..., connection=request)``.

    When the response starts, the session is committed if the status is below 400 (and
    ``commit_on_success`` is true), otherwise rolled back, and in both cases closed, so its
    connection goes back to the pool before the body is sent: a streaming (SSE) response
    never pins a connection. If that commit fails, the client gets a 500 instead of the
    handler's response, so it is never told that unsaved work succeeded.

    >>> app.add_middleware(DatabaseSessionMiddleware)            # the default manager
    >>> app.add_middleware(DatabaseSessionMiddleware, db=db)     # or a given one
    """

    def __init__(
        self, app: ASGIApp, db: DatabaseManager | None = None, *, commit_on_success: bool = True
    ) -> None:
        self.app = app
        self.db = db
        self.commit_on_success = commit_on_success

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with its session and end the session when the response starts."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        holder = RequestSession(self.db or get_database(), commits=self.commit_on_success)
        scope.setdefault("state", {})[STATE_KEY] = holder
        token = current_request_session.set(holder)
        replaced = False

        async def send_wrapper(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the handler's response was replaced by an error; drop the rest
            if message["type"] == "http.response.start" and not holder.finished:
                commit = self.commit_on_success and int(message["status"]) < 400
                try:
                    await holder.finish(commit=commit)
                except Exception as exc:
                    replaced = True
                    # Always a 500: the handler's answer was not saved, whatever the cause.
                    await send_error(send, exc, "commit at the end of the request", status=500)
                    return
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # No response started (an exception, or a websocket): nothing is committed.
            await holder.finish(commit=False)
            current_request_session.reset(token)
