"""Loopback ports for the servers the tests (and benches) start as processes of their own:
uvicorn, pgbouncer, PostgreSQL clusters.

Why not ``bind(0)``: the kernel hands the same free port to the next caller that asks,
and a process started on it binds it only a second or two later. Under ``pytest -n 2``
the other worker can be handed that port meanwhile; its server then fails to bind, and
its readiness probe reaches the first worker's server instead, until that one stops
(a ConnectError in the middle of a test). So each worker takes its ports from a block of
its own, below the kernel's ephemeral range (where nothing that binds port 0 lands), in
turn, skipping any that something holds.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

#: The first block starts here; each pytest-xdist worker has BLOCK ports of its own.
FIRST = 20_000
BLOCK = 1_000


def _block() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw0", "gw1", ...
    index = worker.removeprefix("gw")
    return int(index) if index.isdigit() else 0


_start = FIRST + _block() * BLOCK
# A random place to begin, so that two runs at once (a developer's and CI's) rarely meet.
_turns = itertools.islice(
    itertools.cycle(range(_start, _start + BLOCK)), random.randrange(BLOCK), None
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that no other test of this
    run will be given (see the module's docstring)."""
    for _ in range(BLOCK):
        port = next(_turns)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # held by something else (a server another run left behind)
        return port
    raise RuntimeError(
        f"no free loopback port in {_start}-{_start + BLOCK - 1}: stop the servers earlier "
        "runs left behind (ss -ltnp shows them)"
    )
