"""Apps under a real uvicorn process of their own (one command, maybe several workers),
for tests of what only separate processes show: the quick start as a reader runs it, the
fridge example's live updates across processes, a deployment."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx

from tests.ports import free_port

#: The repository's root: where ``examples`` and ``tests`` import from.
ROOT = Path(__file__).resolve().parents[1]


def text_of(log: Path) -> str:
    """A process log as text (whatever bytes it holds)."""
    return log.read_text(errors="replace")


@asynccontextmanager
async def uvicorn(
    target: str,
    *,
    env: dict[str, str],
    log: Path,
    ready_path: str,
    workers: int = 1,
    cwd: Path = ROOT,
    start_within: float = 30.0,
) -> AsyncIterator[str]:
    """``python -m uvicorn target`` on a free loopback port until ``ready_path`` answers
    200; yields its base URL. At the end it is terminated, and its log must hold no
    traceback (the failure shows the log)."""
    port = free_port()
    command = ["-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning"]
    if workers != 1:
        command += ["--workers", str(workers)]
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *command, cwd=cwd, env=env, stdout=sink, stderr=sink
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as probe, asyncio.timeout(start_within):
            while True:
                assert process.returncode is None, text_of(log)
                with suppress(httpx.TransportError):
                    if (await probe.get(ready_path)).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield base
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
    output = text_of(log)
    assert "Traceback" not in output, output
