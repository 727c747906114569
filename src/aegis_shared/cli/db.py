"""``aegis db``: Alembic's commands on the project's environment, upgrades one at a time.

The environment is the project's own (``alembic.ini`` in the current directory, or
``--config``; its ``env.py`` usually calls :func:`aegis_shared.migrations.run_migrations`).
``upgrade`` and ``downgrade`` first take the migration lock of the database
(:mod:`aegis_shared.migrations.lock`) with a bounded wait, so two deploys never migrate at
once, and bound each DDL statement's wait for a table lock (``--ddl-lock-timeout``), so a
migration that cannot get its lock fails instead of stalling every query of that table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from rich.logging import RichHandler
from rich.table import Table

from aegis_shared.cli.output import JsonOption, Output, fail, failures, import_path, one_line
from aegis_shared.config import Settings
from aegis_shared.errors.redaction import mask_url
from aegis_shared.migrations import DDL_LOCK_TIMEOUT_ATTRIBUTE, migration_url
from aegis_shared.migrations.lock import DEFAULT_LOCK_TIMEOUT, migration_lock

app = typer.Typer(help="Migrations: Alembic on the project's environment.", no_args_is_help=True)

#: How the servers say a statement gave up waiting for a lock (PostgreSQL, MariaDB).
_LOCK_TIMEOUTS = ("due to lock timeout", "lock wait timeout exceeded")
#: Seconds a DDL statement may wait for its table lock, unless --ddl-lock-timeout says.
DEFAULT_DDL_LOCK_TIMEOUT = 10.0

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", help="The Alembic config file.", dir_okay=False, show_default=True
    ),
]
LockTimeoutOption = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        min=0,
        help="Seconds to wait for another migration of this database to finish.",
    ),
]
DdlLockTimeoutOption = Annotated[
    float,
    typer.Option(
        "--ddl-lock-timeout",
        min=0,
        help="Seconds a DDL statement may wait for a table lock (PostgreSQL lock_timeout, "
        "MariaDB lock_wait_timeout); 0: no bound.",
    ),
]


def _config(path: Path) -> Config:
    if not path.is_file():
        fail(
            f"no Alembic config at {path}: run the command in your project's directory "
            "(where alembic.ini is) or pass --config PATH"
        )
    import_path()
    return Config(str(path), stdout=sys.stderr)


@contextlib.contextmanager
def _alembic_output(output: Output) -> Iterator[None]:
    """Alembic's messages on stderr (its ``msg`` writes to stdout), as log lines for a
    person; none in ``--json`` mode, whose stdout holds only the document."""
    logger = logging.getLogger("alembic")
    handler: logging.Handler | None = None
    if not output.json:
        handler = RichHandler(console=output.err, show_time=False, show_path=False)
        # Only the migrations run ("Running upgrade a -> b"), not Alembic's chatter about
        # its dialect implementation, which it logs on every run of env.py.
        handler.addFilter(lambda record: record.getMessage().startswith("Running "))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except CommandError as exc:
        fail(f"{exc}; aegis db history lists the revisions")
    finally:
        if handler is not None:
            logger.removeHandler(handler)


def current_heads(config: Config) -> list[str]:
    """The revisions the database is at now (empty: none applied), read through the
    project's ``env.py`` as ``alembic current`` reads them."""
    script = ScriptDirectory.from_config(config)
    found: list[str] = []

    def read(revision: Any, context: Any) -> list[Any]:
        found.extend(str(rev.revision) for rev in script.get_all_current(revision) if rev)
        return []

    with EnvironmentContext(config, script, fn=read, dont_mutate=True):
        script.run_env()
    return found


def _describe(script: Script, heads: set[str]) -> dict[str, Any]:
    down = script.down_revision
    downs = [] if down is None else [down] if isinstance(down, str) else list(down)
    return {
        "revision": script.revision,
        "down_revisions": downs,
        "message": script.doc,
        "head": script.revision in heads,
        "path": str(script.path),
    }


async def _migrate(
    config: Config, action: str, revision: str, lock_timeout: float, ddl_lock_timeout: float
) -> dict[str, Any]:
    if ddl_lock_timeout > 0:
        config.attributes[DDL_LOCK_TIMEOUT_ATTRIBUTE] = ddl_lock_timeout
    url, where, _ = migration_url(config)
    if "DATABASE_URL" in where and Settings().database_pgbouncer:
        # A session-level lock through a transaction pooler would be taken on whichever
        # server connection the pooler lent, and stay there for its next client.
        fail(
            "DATABASE_PGBOUNCER=true: DATABASE_URL is a transaction pooler, where the "
            "migration lock cannot be held; set DATABASE_DIRECT_URL to the server itself"
        )
    async with migration_lock(url, wait=lock_timeout):
        # Alembic runs env.py, which runs its own event loop: in a thread of its own.
        before = await asyncio.to_thread(current_heads, config)
        step = command.upgrade if action == "upgrade" else command.downgrade
        try:
            await asyncio.to_thread(step, config, revision)
        except Exception as exc:
            line = one_line(exc)
            if ddl_lock_timeout > 0 and any(s in line.lower() for s in _LOCK_TIMEOUTS):
                fail(
                    f"{line}: a migration statement waited more than {ddl_lock_timeout:g} s "
                    "for a table lock that another transaction holds; run it again when "
                    "that transaction ends, or raise --ddl-lock-timeout"
                )
            raise
        after = await asyncio.to_thread(current_heads, config)
    return {
        "ok": True,
        "command": action,
        "target": revision,
        "database": mask_url(url),
        "before": before,
        "after": after,
        "changed": before != after,
    }


def _report_migration(output: Output, result: dict[str, Any]) -> None:
    if output.json:
        output.document(result)
        return
    before = ", ".join(result["before"]) or "(empty)"
    after = ", ".join(result["after"]) or "(empty)"
    if result["changed"]:
        output.out.print(f"{result['command']}: {before} -> {after} on {result['database']}")
    else:
        output.out.print(f"{result['command']}: already at {after} on {result['database']}")


@app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    config: ConfigOption = Path("alembic.ini"),
    lock_timeout: LockTimeoutOption = DEFAULT_LOCK_TIMEOUT,
    ddl_lock_timeout: DdlLockTimeoutOption = DEFAULT_DDL_LOCK_TIMEOUT,
    json_output: JsonOption = False,
) -> None:
    """Upgrade the database to REVISION (head by default), one deploy at a time."""
    _migrate_command("upgrade", revision, config, lock_timeout, ddl_lock_timeout, json_output)


@app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision: an id, -1, or base.")],
    config: ConfigOption = Path("alembic.ini"),
    lock_timeout: LockTimeoutOption = DEFAULT_LOCK_TIMEOUT,
    ddl_lock_timeout: DdlLockTimeoutOption = DEFAULT_DDL_LOCK_TIMEOUT,
    json_output: JsonOption = False,
) -> None:
    """Downgrade the database to REVISION, under the same lock as upgrade."""
    _migrate_command("downgrade", revision, config, lock_timeout, ddl_lock_timeout, json_output)


def _migrate_command(
    direction: str,
    revision: str,
    config: Path,
    lock_timeout: float,
    ddl_lock_timeout: float,
    json_output: bool,
) -> None:
    """What ``upgrade`` and ``downgrade`` do: migrate under the lock, then report."""
    output = Output(json_output)
    with failures(output):
        cfg = _config(config)
        with _alembic_output(output):
            result = asyncio.run(_migrate(cfg, direction, revision, lock_timeout, ddl_lock_timeout))
        _report_migration(output, result)


@app.command()
def revision(
    message: Annotated[str, typer.Option("--message", "-m", help="What the migration does.")],
    autogenerate: Annotated[
        bool, typer.Option("--autogenerate", help="Compare the models with the database.")
    ] = False,
    config: ConfigOption = Path("alembic.ini"),
    json_output: JsonOption = False,
) -> None:
    """Write a new migration file (with --autogenerate, from the models' differences)."""
    output = Output(json_output)
    with failures(output):
        cfg = _config(config)
        with _alembic_output(output):
            made = command.revision(cfg, message=message, autogenerate=autogenerate)
        scripts = [s for s in (made if isinstance(made, list) else [made]) if s is not None]
        if not scripts:
            fail("Alembic wrote no migration (a hook of env.py cancelled it)")
        result = {
            "ok": True,
            "command": "revision",
            "revisions": [_describe(s, {s.revision}) for s in scripts],
        }
        if output.json:
            output.document(result)
            return
        for script in scripts:
            output.out.print(f"wrote {script.revision}: {script.path}")


@app.command()
def current(config: ConfigOption = Path("alembic.ini"), json_output: JsonOption = False) -> None:
    """Show the revision the database is at."""
    output = Output(json_output)
    with failures(output):
        cfg = _config(config)
        with _alembic_output(output):
            heads = current_heads(cfg)
            latest = set(ScriptDirectory.from_config(cfg).get_heads())
        result = {
            "ok": True,
            "command": "current",
            "current": heads,
            "heads": sorted(latest),
            "at_head": set(heads) == latest,
        }
        if output.json:
            output.document(result)
            return
        shown = ", ".join(heads) or "(empty: no migration applied)"
        state = "at head" if result["at_head"] else "behind head " + ", ".join(sorted(latest))
        output.out.print(f"{shown} ({state})")


@app.command()
def history(config: ConfigOption = Path("alembic.ini"), json_output: JsonOption = False) -> None:
    """List the migrations, newest first."""
    output = Output(json_output)
    with failures(output):
        cfg = _config(config)
        with _alembic_output(output):
            script = ScriptDirectory.from_config(cfg)
            heads = set(script.get_heads())
            revisions = [_describe(s, heads) for s in script.walk_revisions()]
        if output.json:
            output.document({"ok": True, "command": "history", "revisions": revisions})
            return
        table = Table("revision", "down", "message", title="migrations, newest first")
        for item in revisions:
            mark = " (head)" if item["head"] else ""
            table.add_row(
                item["revision"] + mark,
                ", ".join(item["down_revisions"]) or "(base)",
                item["message"] or "",
            )
        output.out.print(table)
