"""The ``aegis`` command through Typer's runner, on real databases: sessions, events,
doctor and ``db``, their ``--json`` documents and their one-line failures.

Commands run ``asyncio.run`` themselves, so the async tests invoke them in a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from aegis_demo.fridge.models import FridgeBase, UserFridgeSession
from aegis_shared.cli.app import app
from aegis_shared.database import DatabaseManager
from aegis_shared.events import publish
from aegis_shared.models.types import utcnow
from aegis_shared.sessions import SessionStore
from tests import replication
from tests.cli_project import REVISION, make_project, url_text
from tests.conftest import MakeDb
from tests.ports import free_port

MODEL = "aegis_demo.fridge.models:UserFridgeSession"
SECRET = "hunter2-not-real"


def invoke(args: list[str], **env: str | None) -> Result:
    """Run ``aegis args`` in this process with ``env`` set, DATABASE_* otherwise unset."""
    unset = [name for name in os.environ if name.upper().startswith("DATABASE_")]
    unset += ["DATABASE_URL", "AEGIS_SESSION_MODEL", "WEB_CONCURRENCY"]
    variables: dict[str, str | None] = dict.fromkeys(unset)
    variables.update(env)
    return CliRunner().invoke(app, args, env=variables, catch_exceptions=False)


async def ainvoke(args: list[str], **env: str | None) -> Result:
    """:func:`invoke` in a thread: the command runs its own event loop."""
    return await asyncio.to_thread(invoke, args, **env)


def document(result: Result) -> Any:
    """The ``--json`` document: all of stdout."""
    return json.loads(result.stdout)


def one_line(result: Result) -> str:
    """The failure's single stderr line (and exit status 1)."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aegis: ")
    return lines[0].removeprefix("aegis: ")


def test_help_lists_every_command() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for name in ("db", "sessions", "events", "doctor", "demo"):
        assert name in result.stdout


# -- sessions -----------------------------------------------------------------------------


async def _sessions(db: DatabaseManager, *, expired: int, active: int) -> None:
    month_ago = utcnow() - timedelta(days=30)
    old = SessionStore(db, UserFridgeSession, clock=lambda: month_ago)
    for _ in range(expired):
        await old.create({"cart": []})
    store = SessionStore(db, UserFridgeSession)
    for _ in range(active):
        await store.create({"cart": [1]})


async def test_sessions_stats_and_batched_cleanup(make_db: MakeDb, db_url: URL) -> None:
    db = await make_db(FridgeBase.metadata)
    await _sessions(db, expired=5, active=2)
    env = {"DATABASE_URL": url_text(db_url), "AEGIS_SESSION_MODEL": MODEL}

    stats = await ainvoke(["sessions", "stats", "--json"], **env)
    assert stats.exit_code == 0, stats.stderr
    found = document(stats)
    assert (found["active"], found["expired_waiting"]) == (2, 5)
    assert found["table"] == "user_fridge_sessions"
    assert found["oldest_age_seconds"] >= 0

    cleanup = await ainvoke(["sessions", "cleanup", "--batch-size", "2", "--json"], **env)
    assert cleanup.exit_code == 0, cleanup.stderr
    summary = document(cleanup)
    assert summary["removed"] == 5
    # Batches of at most 2 keys elsewhere; page ranges on PostgreSQL (cleanup.py).
    assert summary["batches"] >= (1 if db.dialect_name == "postgresql" else 3)
    assert summary["seconds"] >= 0

    again = await ainvoke(["sessions", "stats", "--json", "--model", MODEL], **env)
    assert (document(again)["active"], document(again)["expired_waiting"]) == (2, 0)

    # For a person: a table, and the summary line after the progress bar.
    await _sessions(db, expired=1, active=0)
    shown = await ainvoke(["sessions", "cleanup"], **env)
    assert shown.exit_code == 0, shown.stderr
    assert "removed 1 expired session in" in shown.stdout
    table = await ainvoke(["sessions", "stats"], **env)
    assert "active" in table.stdout and "user_fridge_sessions" in table.stdout


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (None, "no session model: pass --model module:Class or set AEGIS_SESSION_MODEL"),
        ("aegis_demo.fridge.models", "is not module:Class"),
        ("no_such_package.models:Session", "cannot import 'no_such_package.models'"),
        ("aegis_demo.fridge.models:Nope", "aegis_demo.fridge.models has no 'Nope'"),
        ("aegis_demo.fridge.models:Ingredient", "must be a mapped model class that uses"),
    ],
)
@pytest.mark.parametrize("command", ["stats", "cleanup"])
def test_a_bad_model_fails_in_one_line(model: str | None, expected: str, command: str) -> None:
    args = ["sessions", command, "--json"] + (["--model", model] if model else [])
    result = invoke(args, DATABASE_URL="sqlite+aiosqlite:///:memory:")
    line = one_line(result)
    assert expected in line
    assert document(result) == {"ok": False, "error": line}


# -- events -------------------------------------------------------------------------------


async def test_events_stats_and_trim(edb: DatabaseManager, db_url: URL) -> None:
    async with edb.session() as session:
        for value in range(3):
            await publish(session, "fridge:a", {"n": value})
        await publish(session, "fridge:b", {"n": 0})
    env = {"DATABASE_URL": url_text(db_url)}

    stats = await ainvoke(["events", "stats", "--json"], **env)
    assert stats.exit_code == 0, stats.stderr
    channels = {c["channel"]: c for c in document(stats)["channels"]}
    a, b = channels["fridge:a"], channels["fridge:b"]
    assert (a["count"], a["oldest_position"], a["newest_position"]) == (3, 1, 3)
    assert (b["count"], b["oldest_position"], b["newest_position"]) == (1, 1, 1)
    assert a["oldest_age_seconds"] >= 0
    assert document(stats)["events"] == 4

    trim = await ainvoke(["events", "trim", "--max-count", "1", "--json"], **env)
    assert trim.exit_code == 0, trim.stderr
    summary = document(trim)
    assert summary["removed"] == 2
    assert summary["batches"] == 1
    assert summary["policy"]["max_count"] == 1

    after = {
        c["channel"]: c
        for c in document(await ainvoke(["events", "stats", "--json"], **env))["channels"]
    }
    assert (after["fridge:a"]["count"], after["fridge:a"]["oldest_position"]) == (1, 3)
    assert after["fridge:a"]["last_position"] == 3

    shown = await ainvoke(["events", "trim", "--max-count", "1"], **env)
    assert "removed 0 events in 0 batches" in shown.stdout
    table = await ainvoke(["events", "stats"], **env)
    assert "fridge:a" in table.stdout and "2 channels, 2 events retained" in table.stdout


# -- doctor -------------------------------------------------------------------------------


def _findings(result: Result) -> dict[str, dict[str, str]]:
    return {f["check"]: f for f in document(result)["findings"]}


async def test_doctor_reports_each_check(make_db: MakeDb, db_url: URL, backend: str) -> None:
    await make_db()
    result = await ainvoke(["doctor", "--json"], DATABASE_URL=url_text(db_url))
    assert result.exit_code == 0, result.stdout
    findings = _findings(result)
    assert document(result)["ok"] is True
    assert findings["connectivity"]["status"] == "ok"
    assert findings["server version"]["status"] == "ok"
    if backend == "sqlite":
        assert findings["sqlite journal"]["status"] == "ok"
        assert "WAL" in findings["sqlite journal"]["detail"]
        assert "pool size" not in findings
    else:
        assert findings["pool size"]["status"] == "ok"
        assert "server max_connections" in findings["pool size"]["detail"]
    if backend == "postgresql":
        assert findings["pgbouncer"]["status"] == "ok"
        assert "direct connection" in findings["pgbouncer"]["detail"]

    shown = await ainvoke(["doctor"], DATABASE_URL=url_text(db_url))
    assert "connectivity" in shown.stdout and "ok" in shown.stdout


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_doctor_fails_pools_larger_than_the_server_allows(
    make_db: MakeDb, db_url: URL
) -> None:
    await make_db()
    result = await ainvoke(
        ["doctor", "--json", "--workers", "4"],
        DATABASE_URL=url_text(db_url),
        DATABASE_POOL_SIZE="100",
    )
    assert result.exit_code == 1
    pool = _findings(result)["pool size"]
    assert pool["status"] == "fail"
    assert "4 worker(s) x" in pool["detail"]
    assert "lower DATABASE_POOL_SIZE" in pool["fix"]
    assert document(result)["ok"] is False
    assert one_line(result) == "doctor found 1 failing check(s): pool size"


@pytest.mark.parametrize("backend", ["pgbouncer"], indirect=True)
async def test_doctor_tells_pgbouncer_from_the_server(db_url: URL, direct_url: URL) -> None:
    unsaid = await ainvoke(["doctor", "--json"], DATABASE_URL=url_text(db_url))
    assert unsaid.exit_code == 0
    finding = _findings(unsaid)["pgbouncer"]
    assert finding["status"] == "warn"
    assert "answers like a pooler" in finding["detail"]
    assert "DATABASE_PGBOUNCER=true" in finding["fix"]

    said = await ainvoke(
        ["doctor", "--json"],
        DATABASE_URL=url_text(db_url),
        DATABASE_PGBOUNCER="true",
        DATABASE_DIRECT_URL=url_text(direct_url),
    )
    findings = _findings(said)
    assert findings["pgbouncer"]["status"] == "ok"
    assert "pooler" in findings["pool size"]["detail"]

    wrongly = await ainvoke(
        ["doctor", "--json"], DATABASE_URL=url_text(direct_url), DATABASE_PGBOUNCER="true"
    )
    assert _findings(wrongly)["pgbouncer"]["status"] == "warn"
    assert "answers as the server itself" in _findings(wrongly)["pgbouncer"]["detail"]


async def test_doctor_checks_each_replica(replication_pair: replication.Pair) -> None:
    down = URL.create("postgresql+asyncpg", "app", SECRET, "127.0.0.1", free_port(), "postgres")
    replicas = ",".join([url_text(replication_pair.standby), url_text(down)])
    result = await ainvoke(
        ["doctor", "--json"],
        DATABASE_URL=url_text(replication_pair.primary),
        DATABASE_REPLICA_URLS=replicas,
        DATABASE_CONNECT_TIMEOUT="2",
    )
    findings = _findings(result)
    assert findings["replica lag (replica-0)"]["status"] in ("ok", "warn")
    unreachable = findings["replica lag (replica-1)"]
    assert unreachable["status"] == "fail"
    assert "cannot be reached" in unreachable["detail"]
    assert SECRET not in result.stdout + result.stderr
    assert "app:***@" in unreachable["detail"]
    assert result.exit_code == 1

    # A primary listed as its own replica is no standby.
    itself = await ainvoke(
        ["doctor", "--json"],
        DATABASE_URL=url_text(replication_pair.primary),
        DATABASE_REPLICA_URLS=url_text(replication_pair.primary),
    )
    assert "is not a standby" in _findings(itself)["replica lag (replica-0)"]["detail"]


def test_doctor_does_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    result = invoke(["doctor", "--json"], DATABASE_URL=f"sqlite+aiosqlite:///{path}")
    assert result.exit_code == 0
    assert _findings(result)["connectivity"]["status"] == "warn"
    assert not path.exists()


def test_a_bad_setting_is_a_failing_finding() -> None:
    result = invoke(["doctor", "--json"], DATABASE_URL=f"postgresql://u:{SECRET}@h:port/db")
    assert result.exit_code == 1
    finding = _findings(result)["settings"]
    assert finding["status"] == "fail"
    assert "DATABASE_URL" in finding["detail"]
    assert SECRET not in result.stdout + result.stderr


# -- db -----------------------------------------------------------------------------------


def test_db_commands_on_sqlite(tmp_path: Path) -> None:
    ini = make_project(tmp_path)
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/app.db"}
    config = ["--config", str(ini)]

    before = invoke(["db", "current", *config, "--json"], **env)
    assert document(before)["current"] == [] and document(before)["at_head"] is False

    up = invoke(["db", "upgrade", *config, "--json"], **env)
    assert up.exit_code == 0, up.stderr
    assert document(up)["before"] == [] and document(up)["after"] == [REVISION]
    assert (tmp_path / "app.db.migrate-lock").exists()  # how SQLite upgrades queue

    now = invoke(["db", "current", *config], **env)
    assert f"{REVISION} (at head)" in now.stdout

    # The models have a column the migration lacks: autogenerate proposes it.
    made = invoke(["db", "revision", *config, "-m", "add extra", "--autogenerate", "--json"], **env)
    assert made.exit_code == 0, made.stderr
    (revision,) = document(made)["revisions"]
    assert revision["down_revisions"] == [REVISION]
    assert "extra" in Path(revision["path"]).read_text()

    listed = document(invoke(["db", "history", *config, "--json"], **env))["revisions"]
    assert [r["revision"] for r in listed] == [revision["revision"], REVISION]
    assert [r["head"] for r in listed] == [True, False]

    up_again = invoke(["db", "upgrade", *config], **env)
    assert f"{REVISION} -> {revision['revision']}" in up_again.stdout
    down = invoke(["db", "downgrade", "base", *config, "--json"], **env)
    assert document(down)["after"] == []


def test_db_failures_are_one_line(tmp_path: Path) -> None:
    missing = invoke(["db", "upgrade", "--config", str(tmp_path / "alembic.ini")])
    assert "no Alembic config at" in one_line(missing)
    ini = make_project(tmp_path)
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/app.db"}
    unknown = invoke(["db", "upgrade", "nope", "--config", str(ini), "--json"], **env)
    line = one_line(unknown)
    assert "Can't locate revision identified by 'nope'" in line
    assert document(unknown) == {"ok": False, "error": line}


def test_upgrade_refuses_to_lock_through_pgbouncer(tmp_path: Path) -> None:
    ini = make_project(tmp_path)
    result = invoke(
        ["db", "upgrade", "--config", str(ini)],
        DATABASE_URL=f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app",
        DATABASE_PGBOUNCER="true",
    )
    line = one_line(result)
    assert "set DATABASE_DIRECT_URL to the server itself" in line
    assert SECRET not in result.stdout + result.stderr
