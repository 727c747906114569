"""``aegis doctor``: is this deployment's database set up the way the settings assume?

Each check is a finding with a status (``ok``, ``warn``, ``fail``), what was found and
what to do. The command exits 1 when any finding fails. Only reads: it never creates a
SQLite file that is not there, never writes to a server.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from aegis_shared.cli.output import JsonOption, Output, failures, one_line
from aegis_shared.config import Settings
from aegis_shared.database import DatabaseManager
from aegis_shared.database.urls import is_sqlite_memory, normalize_url
from aegis_shared.errors.redaction import mask_url

Status = Literal["ok", "warn", "fail"]
#: Share of the server's connection limit above which the pools' total is a warning.
WARN_SHARE = 0.8
#: The oldest PostgreSQL on which session cleanup scans page ranges (TID range scans).
POSTGRESQL_TID_RANGE = 14


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's outcome: ``status``, what was found (``detail``), what to do (``fix``)."""

    check: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class _Context:
    settings: Settings
    db: DatabaseManager
    workers: int
    findings: list[Finding]

    def add(self, check: str, status: Status, detail: str, fix: str = "") -> None:
        self.findings.append(Finding(check, status, detail, fix))


async def _bounded(ctx: _Context, work: Callable[[], Awaitable[Any]]) -> Any:
    """``work()`` within the connect timeout plus a little: a silent server must not
    hang the doctor."""
    async with asyncio.timeout(ctx.db.connect_timeout + 5.0):
        return await work()


async def _scalar(conn: AsyncConnection, sql: str) -> Any:
    return (await conn.execute(text(sql))).scalar()


def _connections_per_process(settings: Settings, backend: str) -> int:
    """Most connections one worker process opens to DATABASE_URL: both pools at full
    overflow, plus the event hub's LISTEN connection on PostgreSQL."""
    pools = (
        settings.database_pool_size
        + settings.database_max_overflow
        + settings.database_background_pool_size
        + settings.database_background_max_overflow
    )
    return pools + (1 if backend == "postgresql" else 0)


async def _version(ctx: _Context, conn: AsyncConnection) -> None:
    backend = ctx.db.dialect_name
    if backend == "postgresql":
        version = str(await _scalar(conn, "SHOW server_version"))
        number = int(str(await _scalar(conn, "SHOW server_version_num")))
        if number < POSTGRESQL_TID_RANGE * 10000:
            ctx.add(
                "server version",
                "warn",
                f"PostgreSQL {version}",
                f"upgrade to PostgreSQL {POSTGRESQL_TID_RANGE} or later: before it, session "
                "cleanup scans the whole table per batch",
            )
        else:
            ctx.add("server version", "ok", f"PostgreSQL {version}")
    elif backend == "mysql":
        ctx.add("server version", "ok", str(await _scalar(conn, "SELECT VERSION()")))
    else:
        ctx.add("server version", "ok", f"SQLite {await _scalar(conn, 'SELECT sqlite_version()')}")


def _looks_pooled(url: URL, server_port: Any) -> bool:
    """True when the URL's port is not the one the server listens on: something (a
    pooler such as pgbouncer, or a proxy) answers in between."""
    return server_port is not None and int(url.port or 5432) != int(server_port)


async def _pgbouncer(ctx: _Context, conn: AsyncConnection) -> bool:
    """The pgbouncer finding; True when DATABASE_URL is (or is said to be) a pooler."""
    server_port = await _scalar(conn, "SELECT current_setting('port')")
    pooled = _looks_pooled(ctx.db.url, server_port)
    said = ctx.settings.database_pgbouncer
    where = f"DATABASE_URL port {ctx.db.url.port or 5432}, server port {server_port}"
    if said and not pooled:
        ctx.add(
            "pgbouncer",
            "warn",
            f"DATABASE_PGBOUNCER=true, but the URL answers as the server itself ({where})",
            "set DATABASE_PGBOUNCER=false when no pooler is in between: its mode costs a "
            "SET LOCAL per transaction and prepared statements",
        )
    elif pooled and not said:
        ctx.add(
            "pgbouncer",
            "warn",
            f"DATABASE_URL answers like a pooler ({where}) but DATABASE_PGBOUNCER is false",
            "if it is pgbouncer in transaction mode, set DATABASE_PGBOUNCER=true and "
            "DATABASE_DIRECT_URL to the server itself",
        )
    elif said and ctx.settings.database_direct_url is None:
        ctx.add(
            "pgbouncer",
            "warn",
            f"pgbouncer mode ({where}) without DATABASE_DIRECT_URL",
            "set DATABASE_DIRECT_URL to the server itself: the event hub's LISTEN and "
            "migration locks need a session of their own",
        )
    elif said:
        ctx.add("pgbouncer", "ok", f"pgbouncer mode, with a direct URL ({where})")
    else:
        ctx.add("pgbouncer", "ok", f"direct connection, no pooler ({where})")
    return said or pooled


async def _limits(ctx: _Context, conn: AsyncConnection, pooled: bool) -> None:
    backend = ctx.db.dialect_name
    if backend == "postgresql":
        limit = int(str(await _scalar(conn, "SHOW max_connections")))
        reserved = int(str(await _scalar(conn, "SHOW superuser_reserved_connections")))
        in_use = int(await _scalar(conn, "SELECT count(*) FROM pg_stat_activity"))
    else:
        limit = int(await _scalar(conn, "SELECT @@max_connections"))
        reserved = 0
        row = (await conn.execute(text("SHOW STATUS LIKE 'Threads_connected'"))).one()
        in_use = int(row[1])
    usable = limit - reserved
    per_process = _connections_per_process(ctx.settings, backend)
    total = per_process * ctx.workers
    s = ctx.settings
    detail = (
        f"{ctx.workers} worker(s) x {per_process} connections (pool {s.database_pool_size}"
        f"+{s.database_max_overflow}, background {s.database_background_pool_size}"
        f"+{s.database_background_max_overflow}) = {total}; server max_connections "
        f"{limit} ({usable} for applications), {in_use} in use now"
    )
    if pooled:
        ctx.add(
            "pool size",
            "ok",
            f"{detail}; behind a pooler the server connections are the pooler's",
            "size pgbouncer's default_pool_size below max_connections",
        )
    elif total > usable:
        ctx.add(
            "pool size",
            "fail",
            detail,
            "lower DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW, run fewer workers, raise the "
            "server's max_connections, or put pgbouncer in front",
        )
    elif total > WARN_SHARE * usable:
        ctx.add(
            "pool size",
            "warn",
            detail,
            "little room is left for other clients and deploys (old and new workers overlap); "
            "lower the pools or raise max_connections",
        )
    else:
        ctx.add("pool size", "ok", detail)


async def _replicas(ctx: _Context, conn: AsyncConnection) -> None:
    urls = ctx.settings.database_replica_urls
    if not urls:
        return
    primary_lsn = int(await _scalar(conn, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
    for index, raw in enumerate(urls):
        name = f"replica-{index}"
        url = normalize_url(raw, "DATABASE_REPLICA_URLS")
        engine_db = DatabaseManager(
            url, pool_size=1, max_overflow=0, connect_timeout=ctx.db.connect_timeout
        )
        try:
            async with asyncio.timeout(ctx.db.connect_timeout + 5.0):
                async with engine_db.engine.connect() as replica:
                    row = (
                        await replica.execute(
                            text(
                                "SELECT pg_is_in_recovery(), "
                                "pg_last_wal_replay_lsn() - '0/0'::pg_lsn, "
                                "EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())"
                            )
                        )
                    ).one()
        except Exception as exc:
            ctx.add(
                f"replica lag ({name})",
                "fail",
                f"{mask_url(url)} cannot be reached: {one_line(exc, ctx.settings)}",
                "start the standby or remove it from DATABASE_REPLICA_URLS "
                "(reads then go to the primary)",
            )
            continue
        finally:
            await engine_db.close()
        in_recovery, replayed, replay_age = row
        if not in_recovery or replayed is None:
            ctx.add(
                f"replica lag ({name})",
                "fail",
                f"{mask_url(url)} is not a standby (promoted, or never one)",
                "point DATABASE_REPLICA_URLS at streaming standbys of the primary",
            )
            continue
        behind = max(0, primary_lsn - int(replayed))
        if behind == 0:
            ctx.add(f"replica lag ({name})", "ok", f"{mask_url(url)} has replayed everything")
            continue
        age = float(replay_age) if replay_age is not None else None
        seconds = "unknown" if age is None else f"{age:.1f} s"
        detail = f"{mask_url(url)} is {behind} bytes of WAL behind, last replay {seconds} ago"
        limit = ctx.settings.database_replica_max_lag
        if age is None or age > limit:
            ctx.add(
                f"replica lag ({name})",
                "warn",
                detail,
                f"above DATABASE_REPLICA_MAX_LAG ({limit:g} s), reads skip it until it catches "
                "up; check the standby's apply delay, disk and network",
            )
        else:
            ctx.add(f"replica lag ({name})", "ok", detail)


async def _journal(ctx: _Context, conn: AsyncConnection) -> None:
    mode = str(await _scalar(conn, "PRAGMA journal_mode")).lower()
    if mode == "wal":
        ctx.add("sqlite journal", "ok", "WAL: readers never wait for the writer")
    elif mode == "memory":
        ctx.add(
            "sqlite journal",
            "warn",
            "in-memory database: its data is gone when the process ends",
            "set DATABASE_URL to a file, e.g. sqlite+aiosqlite:///./app.db",
        )
    else:
        ctx.add(
            "sqlite journal",
            "warn",
            f"journal mode {mode}, not WAL: readers and the writer block each other",
            "keep the database on a local disk (WAL needs shared memory, which network "
            "filesystems lack)",
        )


def _sqlite_file_missing(ctx: _Context) -> bool:
    url = ctx.db.url
    if ctx.db.dialect_name != "sqlite" or is_sqlite_memory(url):
        return False
    path = Path(url.database or "")
    if path.exists():
        return False
    ctx.add(
        "connectivity",
        "warn",
        f"no SQLite database at {path} yet (the doctor does not create one)",
        "start the application (or run aegis db upgrade) to create it",
    )
    return True


async def examine(settings: Settings, workers: int) -> list[Finding]:
    """Every finding for ``settings``, a deployment of ``workers`` processes."""
    findings: list[Finding] = []
    try:
        db = DatabaseManager.from_settings(settings, retry_attempts=1)
    except Exception as exc:
        return [Finding("settings", "fail", one_line(exc, settings), "fix the setting named")]
    ctx = _Context(settings, db, workers, findings)
    try:
        if _sqlite_file_missing(ctx):
            return findings
        try:
            conn = await _bounded(ctx, db.engine.connect)
        except Exception as exc:
            ctx.add(
                "connectivity",
                "fail",
                f"cannot reach {mask_url(db.url)}: {one_line(exc, settings)}",
                "check that the server runs and DATABASE_URL's host, port, user, password "
                "and database",
            )
            return findings
        try:
            ctx.add("connectivity", "ok", f"connected to {mask_url(db.url)}")
            await _bounded(ctx, lambda: _version(ctx, conn))
            if db.dialect_name == "sqlite":
                await _bounded(ctx, lambda: _journal(ctx, conn))
            else:
                pooled = False
                if db.dialect_name == "postgresql":
                    pooled = await _bounded(ctx, lambda: _pgbouncer(ctx, conn))
                await _bounded(ctx, lambda: _limits(ctx, conn, pooled))
                if db.dialect_name == "postgresql":
                    await _replicas(ctx, conn)
        except Exception as exc:
            ctx.add(
                "server",
                "fail",
                f"a check failed on {mask_url(db.url)}: {one_line(exc, settings)}",
                "check the user's rights (the doctor reads settings and pg_stat_activity)",
            )
        finally:
            await conn.close()
    finally:
        await db.close()
    return findings


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def doctor(
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            envvar="WEB_CONCURRENCY",
            help="Worker processes the deployment runs (for the connection count).",
        ),
    ] = 1,
    json_output: JsonOption = False,
) -> None:
    """Check connectivity, server version, pool sizes, pgbouncer, replicas, SQLite mode."""
    output = Output(json_output)
    with failures(output):
        try:
            settings = Settings()
        except Exception as exc:
            findings = [Finding("settings", "fail", one_line(exc), "fix the variable named")]
        else:
            findings = asyncio.run(examine(settings, workers))
        failed = [f for f in findings if f.status == "fail"]
        if output.json:
            output.document(
                {"ok": not failed, "findings": [asdict(finding) for finding in findings]}
            )
        else:
            table = Table(title="aegis doctor")
            for header in ("check", "status", "found", "what to do"):
                table.add_column(header, overflow="fold")
            for finding in findings:
                style = _STYLE[finding.status]
                table.add_row(
                    finding.check,
                    Text(finding.status, style=style),
                    Text(finding.detail),
                    Text(finding.fix),
                )
            output.out.print(table)
        if failed:
            names = ", ".join(f.check for f in failed)
            print(f"aegis: doctor found {len(failed)} failing check(s): {names}", file=sys.stderr)
            raise typer.Exit(1)
