"""The ``aegis`` Typer application: one command group per module of this package."""

from __future__ import annotations

import typer

from aegis_shared.cli import db, demo, doctor, events, sessions

app = typer.Typer(
    name="aegis",
    help="Operate an aegis-shared application: migrations, sessions, the event log, a "
    "doctor for the database settings, and the reference application.",
    no_args_is_help=True,
    # A failure is one line on stderr (aegis_shared.cli.output.failures), never a
    # traceback, which could show settings and SQL.
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db.app, name="db")
app.add_typer(sessions.app, name="sessions")
app.add_typer(events.app, name="events")
app.command(name="doctor")(doctor.doctor)
app.command(name="demo")(demo.demo)
