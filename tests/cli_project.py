"""A throwaway Alembic project for the ``aegis db`` tests: alembic.ini, env.py on
``run_migrations`` and one migration whose side effect can be counted.

The migration creates ``cli_counter`` and inserts one row into it; on PostgreSQL it first
sleeps (``pg_sleep``) so that two upgrades started together overlap for certain. Without
the migration lock the second would find no version row either, run the migration too and
fail on the table the first one created.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from sqlalchemy.engine import URL

from tests.processes import ROOT

#: The project's version table and the migration's own table.
VERSION_TABLE = "cli_alembic_version"
COUNTER_TABLE = "cli_counter"
REVISION = "c1i0000001"

ENV_PY = textwrap.dedent(
    f"""
    from sqlalchemy import Column, Integer, MetaData, String, Table

    from aegis_shared.migrations import run_migrations

    metadata = MetaData()
    Table(
        "{COUNTER_TABLE}",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("note", String(20)),
        Column("extra", String(20)),
    )


    def only_ours(name, type_, parent_names):
        # The run's database also holds other tests' tables; leave them out of the diff.
        return type_ != "table" or name.startswith("cli_")


    run_migrations(metadata, version_table="{VERSION_TABLE}", include_name=only_ours)
    """
)

MIGRATION = textwrap.dedent(
    f'''
    """create the counter"""
    import sqlalchemy as sa
    from alembic import op

    revision = "{REVISION}"
    down_revision = None


    def upgrade():
        op.create_table(
            "{COUNTER_TABLE}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("note", sa.String(20)),
        )
        if op.get_bind().dialect.name == "postgresql":
            op.execute("SELECT pg_sleep(1.5)")
        op.execute("INSERT INTO {COUNTER_TABLE} (note) VALUES ('applied')")


    def downgrade():
        op.drop_table("{COUNTER_TABLE}")
    '''
)


def make_project(directory: Path) -> Path:
    """Write the project into ``directory``; returns its alembic.ini."""
    script = directory / "migrations"
    (script / "versions").mkdir(parents=True)
    (script / "env.py").write_text(ENV_PY)
    (script / "versions" / f"{REVISION}_counter.py").write_text(MIGRATION)
    (script / "script.py.mako").write_text((ROOT / "migrations" / "script.py.mako").read_text())
    ini = directory / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    return ini


def url_text(url: URL) -> str:
    """``url`` as the environment variable holds it (password included)."""
    return url.render_as_string(hide_password=False)


def cli_env(**variables: str) -> dict[str, str]:
    """The environment of an ``aegis`` subprocess: this one without DATABASE_* settings,
    plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DATABASE_")}
    env.pop("AEGIS_SESSION_MODEL", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(variables)
    return env


def aegis() -> list[str]:
    """The command line that starts ``aegis``: the venv's console script beside this
    Python when it is there, else ``python -m aegis_shared.cli``."""
    script = Path(sys.executable).with_name("aegis")
    return [str(script)] if script.exists() else [sys.executable, "-m", "aegis_shared.cli"]
