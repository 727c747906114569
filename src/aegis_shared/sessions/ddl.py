"""``CREATE UNLOGGED TABLE`` on PostgreSQL for session tables that ask for it.

Why by hand: SQLAlchemy has no option for UNLOGGED, and ``Table(prefixes=["UNLOGGED"])``
would be sent to SQLite and MariaDB too. ``ALTER TABLE ... SET UNLOGGED`` after the fact
does not work for the child tables either: PostgreSQL refuses to create a logged table
whose foreign key points at an unlogged one. So the CREATE statement itself carries it,
for the session table marked with :data:`~aegis_shared.sessions.models.UNLOGGED_KEY` and
every table with a foreign key to it.

In Alembic migrations (which build their own ``Table``), pass
``prefixes=["UNLOGGED"]`` to ``op.create_table`` of those tables in a PostgreSQL-only
migration.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, exc
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql.compiler import DDLCompiler

from aegis_shared.sessions.models import UNLOGGED_KEY


def is_unlogged(table: Table) -> bool:
    """True for a session table marked UNLOGGED, or a table referring to one."""
    if table.info.get(UNLOGGED_KEY):
        return True
    for fk in table.foreign_keys:
        try:
            target = fk.column.table
        except (exc.NoReferencedTableError, exc.NoReferencedColumnError):
            continue  # a table of another MetaData (Alembic's op.create_table): not ours
        if target.info.get(UNLOGGED_KEY):
            return True
    return False


@compiles(CreateTable, "postgresql")
def _create_table(element: CreateTable, compiler: DDLCompiler, **kw: Any) -> str:
    sql: str = compiler.visit_create_table(element, **kw)  # type: ignore[no-untyped-call]
    table = element.element
    if isinstance(table, Table) and is_unlogged(table) and "UNLOGGED" not in table._prefixes:
        sql = sql.replace("CREATE TABLE", "CREATE UNLOGGED TABLE", 1)
    return sql
