"""``aegis sessions``: statistics and cleanup of a server-side session table (seed 002).

The session model is named as ``module:Class`` (``--model``, or ``AEGIS_SESSION_MODEL``),
a :class:`~aegis_shared.sessions.ServerSessionMixin` model such as
``aegis_demo.fridge.models:UserFridgeSession``; the module is imported from the current
directory first, as ``uvicorn`` imports an app.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aegis_shared.cli.output import (
    JsonOption,
    Output,
    counted,
    database,
    fail,
    failures,
    import_path,
    load_settings,
)
from aegis_shared.database import DatabaseManager
from aegis_shared.models.types import utcnow
from aegis_shared.sessions import ServerSessionMixin, SessionStore
from aegis_shared.sessions.models import check_session_model
from aegis_shared.sessions.store import MAX_CLEANUP_BATCH

app = typer.Typer(help="Server-side sessions: statistics, cleanup.", no_args_is_help=True)

#: Where ``--model`` comes from when it is not given.
MODEL_VARIABLE = "AEGIS_SESSION_MODEL"

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar=MODEL_VARIABLE,
        help="The session model as module:Class, e.g. aegis_demo.fridge.models:UserFridgeSession.",
        show_envvar=True,
    ),
]


def load_model(spec: str | None) -> type[ServerSessionMixin]:
    """The session model named by ``spec`` (``module:Class``); a one-line failure that
    says what to pass when it is missing, cannot be imported or is no session model."""
    if not spec:
        fail(
            f"no session model: pass --model module:Class or set {MODEL_VARIABLE}, "
            "e.g. aegis_demo.fridge.models:UserFridgeSession"
        )
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        fail(f"--model {spec!r} is not module:Class, e.g. myapp.models:UserSession")
    import_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(
            f"--model {spec!r}: cannot import {module_name!r} ({exc}); run the command where "
            "that module is importable, or install its package"
        )
    model: Any = module
    for part in attribute.split("."):
        model = getattr(model, part, None)
        if model is None:
            fail(f"--model {spec!r}: {module_name} has no {attribute!r}")
    try:
        check_session_model(model, f"--model {spec!r}")
    except TypeError as exc:
        fail(str(exc))
    return model  # type: ignore[no-any-return]


def _store(db: DatabaseManager, model: type[ServerSessionMixin]) -> SessionStore:
    return SessionStore(db, model)


@app.command()
def stats(model: ModelOption = None, json_output: JsonOption = False) -> None:
    """Active and expired sessions, child rows, the oldest active session's start."""
    output = Output(json_output)
    with failures(output):
        session_model = load_model(model)
        settings = load_settings()

        async def read() -> Any:
            async with database(settings) as db:
                return await _store(db, session_model).stats()

        found = asyncio.run(read())
        oldest = found.oldest_created_at
        result = {
            "ok": True,
            "model": model,
            "table": session_model.__tablename__,  # type: ignore[attr-defined]
            "active": found.active,
            "expired_waiting": found.expired_waiting,
            "child_rows": found.child_rows,
            "oldest_created_at": oldest,
            "oldest_age_seconds": None
            if oldest is None
            else round((utcnow() - oldest).total_seconds(), 3),
        }
        if output.json:
            output.document(result)
            return
        table = Table("", "", title=f"sessions in {result['table']}", show_header=False)
        table.add_row("active", str(found.active))
        table.add_row("expired, waiting for cleanup", str(found.expired_waiting))
        table.add_row("child rows", str(found.child_rows))
        table.add_row("oldest active since", "-" if oldest is None else oldest.isoformat())
        output.out.print(table)


@app.command()
def cleanup(
    model: ModelOption = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", min=1, max=MAX_CLEANUP_BATCH, help="Sessions per transaction."
        ),
    ] = 1000,
    json_output: JsonOption = False,
) -> None:
    """Delete expired sessions (and their child rows) in short batches."""
    output = Output(json_output)
    with failures(output):
        session_model = load_model(model)
        settings = load_settings()
        batches = 0
        started = time.monotonic()

        async def run(progress: Progress) -> int:
            nonlocal batches
            async with database(settings) as db:
                store = _store(db, session_model)
                # The count first, so the bar has an end; sessions expiring meanwhile are
                # the next run's (cleanup_expired fixes "now" when it starts).
                waiting = (await store.stats()).expired_waiting
                task = progress.add_task("deleting expired sessions", total=waiting or None)

                def on_batch(removed: int) -> None:
                    nonlocal batches
                    batches += 1
                    progress.advance(task, removed)

                return await store.cleanup_expired(batch_size, on_batch=on_batch)

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=output.err,
            disable=output.json,
        ) as progress:
            removed = asyncio.run(run(progress))
        seconds = round(time.monotonic() - started, 3)
        result = {"ok": True, "removed": removed, "batches": batches, "seconds": seconds}
        if output.json:
            output.document(result)
            return
        output.out.print(
            f"removed {counted(removed, 'expired session', 'expired sessions')} in "
            f"{counted(batches, 'batch', 'batches')}, {seconds:.2f} s"
        )
