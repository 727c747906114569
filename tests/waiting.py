"""Waiting for what another task or process does: poll a condition until it holds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

#: Generous: a shared, slow machine; a test waits this long only when it fails.
TIMEOUT = 10.0


async def until(condition: Callable[[], Awaitable[bool]], within: float = TIMEOUT) -> None:
    """Wait until ``condition()`` holds (polling every 20 ms), at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 (polls the database)
            await asyncio.sleep(0.02)
