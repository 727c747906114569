"""Reading ``text/event-stream`` as a browser's EventSource does, for tests that talk to a
real server: messages are separated by a blank line, ``:`` lines are comments, each other
line is ``field: value``."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def messages(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """The stream's messages that carry data, each as its fields (``data`` still text)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if "data" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
