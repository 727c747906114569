"""The fridge example as tests/test_deploy.py serves it: ``uvicorn tests.deploy_app:app
--workers 2``. The only addition is an ``X-Worker-Pid`` response header, so that the test
can tell which worker process answered; the example itself exposes nothing of the kind
(a process id is no client's business)."""

from __future__ import annotations

import os
from typing import Any

from aegis_demo.fridge.app import create_app
from aegis_shared.web.asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = ["with_worker_pid"]

WORKER_HEADER = b"x-worker-pid"


def with_worker_pid(app: ASGIApp) -> ASGIApp:
    """``app`` with this process's id in every HTTP response's headers."""
    pid = str(os.getpid()).encode()

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (WORKER_HEADER, pid)]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_pid)

    return wrapped


def __getattr__(name: str) -> Any:
    # Each worker process builds its own app when uvicorn looks ``app`` up.
    if name == "app":
        return with_worker_pid(create_app())
    raise AttributeError(name)
