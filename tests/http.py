"""A real HTTP server for tests: the app under uvicorn on a loopback socket.

Security and session tests talk to it with a real ``httpx.AsyncClient`` (its cookie jar
does what a browser's does), so headers, cookies and bodies are what a client sees on the
wire, not what an in-process transport hands over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


@asynccontextmanager
async def serve(app: Any, *, lifespan: str = "off") -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) while the block runs; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan=lifespan, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # a failed start-up raises here
                await asyncio.sleep(0.01)
        (port,) = {socket.getsockname()[1] for s in server.servers for socket in s.sockets}
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
