"""The README's Quick start, copied out of README.md and run as a reader would run it:
``python quickstart.py``, then ``uvicorn quickstart:app`` answered over loopback HTTP, on
SQLite (the default, DATABASE_URL unset), PostgreSQL and MariaDB (through DATABASE_URL)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from tests.conftest import MakeDb
from tests.markdown import python_blocks
from tests.processes import uvicorn

TIMEOUT = 60  # seconds for either program to start or finish, on a slow shared machine


@pytest.fixture
async def project(tmp_path: Path, db_url: URL, backend: str, make_db: MakeDb) -> Path:
    """An empty directory holding quickstart.py as the README has it; the run's database
    emptied (the Quick start's ``users`` is not the suite's)."""
    (block,) = python_blocks("README.md", "Quick start")
    (tmp_path / "quickstart.py").write_text(block)
    await make_db(MetaData(), default=False)  # drops every table, creates none
    return tmp_path


def _environment(db_url: URL, backend: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DATABASE_")}
    if backend != "sqlite":  # SQLite: the reader's default, ./aegis.db
        env["DATABASE_URL"] = db_url.render_as_string(hide_password=False)
    return env


async def _run(project: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Exit code, standard output and standard error of ``python *args``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=project,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output, errors = await asyncio.wait_for(process.communicate(), TIMEOUT)
    return await process.wait(), output.decode(), errors.decode()


@asynccontextmanager
async def serve(project: Path, env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """``uvicorn quickstart:app`` on a loopback port, and a client for it."""
    log = project / "uvicorn.log"
    async with (
        uvicorn("quickstart:app", env=env, log=log, ready_path="/docs", cwd=project) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        yield client


async def test_the_quick_start_runs_as_written(project: Path, db_url: URL, backend: str) -> None:
    env = _environment(db_url, backend)
    code, output, errors = await _run(project, env, "quickstart.py")
    assert code == 0, errors
    # Standard error may hold a warning (MariaDB: "Name 'pk_users' ignored for PRIMARY
    # key", from SQLAlchemy's CREATE TABLE), never an error.
    assert "Traceback" not in errors, errors
    match = re.fullmatch(r"user (\d+): b@example\.com\n", output)
    assert match, output
    user_id = int(match.group(1))
    if backend == "sqlite":
        assert await asyncio.to_thread((project / "aegis.db").exists)

    # The app of the same file, under uvicorn: one session per request, errors mapped.
    async with serve(project, env) as client:
        found = await client.get(f"/users/{user_id}")
        missing = await client.get(f"/users/{user_id + 1000}")
    assert (found.status_code, found.json()) == (200, {"id": user_id, "email": "b@example.com"})
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": f"User with id {user_id + 1000} not found",
        "error": "not_found",
    }

    # Run again: it adds another user and exits cleanly (no unique clash, tables exist).
    code, output, errors = await _run(project, env, "quickstart.py")
    assert code == 0, errors
    assert output == f"user {user_id + 1}: b@example.com\n"
