"""A loopback TCP proxy that breaks the network on command, for fault tests.

The shared database servers are never stopped or restarted: a test points its manager at
a proxy of its own and makes the proxy stall, refuse, drop connections, or lose the
server's reply to one statement (a COMMIT), which is what a client sees of a restart, a
partition or a crash. Runs in the test's own event loop, so the client under test and the
proxy interleave as they would over a real network.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy.engine import URL


@dataclass(eq=False)
class _Link:
    """One client connection and its server side."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    reply_lost: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                writer.transport.abort()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``target``; see the methods for the faults."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0  # client connections accepted so far
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._lose_reply_to: bytes | None = None
        self._lost_then_close = True
        self._reject_with: bytes | None = None
        self.replies_lost = 0

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        """Listen on a free loopback port (the same one again after :meth:`refuse`)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        await self.refuse()
        self.drop_all()
        self._flowing.set()
        for link in list(self._links):
            for task in link.tasks:
                task.cancel()
        self._links.clear()

    def url(self, url: URL) -> URL:
        """``url`` pointed at this proxy."""
        return url.set(host="127.0.0.1", port=self.port)

    # -- faults -----------------------------------------------------------------------------

    def stall(self) -> None:
        """Deliver nothing in either direction (connections stay open, new ones are
        accepted and hang): a partition, or a server that stopped answering."""
        self._flowing.clear()

    def resume(self) -> None:
        """Deliver again, including what was held back."""
        self._flowing.set()

    async def refuse(self) -> None:
        """Stop listening: new connections are refused, open ones keep working."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def drop_all(self) -> None:
        """Cut every open connection at once, as a server restart does."""
        for link in list(self._links):
            link.abort()

    def lose_reply_to(self, marker: bytes, *, then_close: bool = True) -> None:
        """The next client message containing ``marker`` reaches the server, but nothing the
        server sends back on that connection reaches the client; the connection is then cut
        (``then_close``) or left hanging."""
        self._lose_reply_to = marker
        self._lost_then_close = then_close

    def reject_with(self, reply: bytes | None) -> None:
        """New connections get ``reply`` instead of the server, then are closed (``None``
        forwards to the server again)."""
        self._reject_with = reply

    # -- plumbing ---------------------------------------------------------------------------

    @staticmethod
    async def _reject(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bytes
    ) -> None:
        if reply.startswith(b"E"):
            # PostgreSQL: the client speaks first, maybe asking for TLS (an 8-byte
            # SSLRequest), which a server without TLS declines with "N".
            first = await asyncio.wait_for(reader.read(65536), 2.0)
            if len(first) == 8 and first[4:] == _SSL_REQUEST:
                writer.write(b"N")
                await writer.drain()
                await asyncio.wait_for(reader.read(65536), 2.0)
        # MariaDB's server speaks first: its ERR packet goes out at once.
        writer.write(reply)
        await writer.drain()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(client=writer)
        self._links.add(link)
        try:
            if self._reject_with is not None:
                with contextlib.suppress(OSError):
                    await self._reject(reader, writer, self._reject_with)
                return
            await self._flowing.wait()
            try:
                server_reader, server_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            link.server = server_writer
            upstream = asyncio.ensure_future(self._pump(link, reader, server_writer, up=True))
            downstream = asyncio.ensure_future(self._pump(link, server_reader, writer, up=False))
            link.tasks = [upstream, downstream]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.abort()
            for task in link.tasks:
                task.cancel()
            self._links.discard(link)

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                await self._flowing.wait()
                if not up and link.reply_lost:
                    continue  # the server's answer goes nowhere
                writer.write(data)
                await writer.drain()
                if up and self._lose_reply_to is not None and self._lose_reply_to in data:
                    self._lose_reply_to = None
                    link.reply_lost = True
                    self.replies_lost += 1
                    if self._lost_then_close:
                        # Give the server time to act on the message, then cut the link.
                        asyncio.get_running_loop().call_later(0.2, link.abort)


_SSL_REQUEST = struct.pack("!I", 80877103)

#: What a client's COMMIT looks like on the wire (asyncpg's simple query "COMMIT;",
#: asyncmy's COM_QUERY packet), precise enough not to match "SET AUTOCOMMIT".
COMMIT_MARKER = {"postgresql": b"COMMIT;", "mariadb": b"\x03COMMIT", "mysql": b"\x03COMMIT"}


def pg_error(sqlstate: str, message: str) -> bytes:
    """A PostgreSQL ErrorResponse (FATAL) as a server sends it in place of a login."""
    fields = b"".join(
        tag + value.encode() + b"\0"
        for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def mysql_error(code: int, sqlstate: str, message: str) -> bytes:
    """A MariaDB/MySQL ERR packet as a server sends it in place of its greeting."""
    payload = b"\xff" + struct.pack("<H", code) + b"#" + sqlstate.encode() + message.encode()
    return struct.pack("<I", len(payload))[:3] + b"\x00" + payload


@contextlib.asynccontextmanager
async def fault_proxy(url: URL) -> AsyncIterator[FaultProxy]:
    """A started :class:`FaultProxy` in front of ``url``'s server, closed afterwards."""
    proxy = await FaultProxy(url.host or "127.0.0.1", int(url.port or 5432)).start()
    try:
        yield proxy
    finally:
        await proxy.close()
