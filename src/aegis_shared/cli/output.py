"""What every ``aegis`` command shares: ``--json``, one-line failures, the settings.

A command's result goes to stdout: one JSON document with ``--json`` (and nothing else on
stdout), else Rich tables. Progress, Alembic's messages and failures go to stderr. Any
exception ends the command with exit status 1 and one line on stderr, ``aegis: <what
happened>``, with every URL masked and no traceback; with ``--json`` stdout also gets
``{"ok": false, "error": "..."}``, so a script reading it always gets a document.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from sqlalchemy.exc import StatementError

from aegis_shared.config import Settings
from aegis_shared.database import DatabaseManager, configure_database, reset_database
from aegis_shared.database.registry import peek_database
from aegis_shared.errors.exceptions import DatabaseError
from aegis_shared.errors.redaction import MASK, mask_urls, parse_url

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout, for scripts.")
]


class CommandFailed(Exception):
    """A command cannot do what it was asked; its message is the one line to show."""


@dataclass
class Output:
    """Where a command writes: ``json`` mode or Rich consoles on stdout and stderr."""

    json: bool
    out: Console = field(default_factory=lambda: Console(soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))

    def document(self, value: dict[str, Any]) -> None:
        """Print ``value`` as the command's JSON document (``--json`` only)."""
        print(json.dumps(value, default=_json_default, indent=2, sort_keys=False))

    def note(self, message: str) -> None:
        """A line for a person, on stderr, never in ``--json`` mode."""
        if not self.json:
            self.err.print(message, highlight=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _secrets(settings: Settings | None) -> list[str]:
    """Passwords of the configured URLs, to strike from any message that quotes one."""
    if settings is None:
        return []
    urls = [settings.database_url, settings.database_direct_url, *settings.database_replica_urls]
    found = []
    for url in urls:
        if not url:
            continue
        try:
            password = parse_url(url).password
        except DatabaseError:
            continue
        if password and len(password) >= 3:
            found.append(str(password))
    return found


def one_line(exc: BaseException, settings: Settings | None = None) -> str:
    """``exc`` as one line for stderr: URLs masked, known passwords struck out."""
    if isinstance(exc, CommandFailed | DatabaseError):
        text = str(exc)
    elif isinstance(exc, StatementError) and exc.orig is not None:
        # The driver's own words, without SQLAlchemy's copy of the statement and its
        # parameters (row values) and its link to the docs.
        text = f"{type(exc.orig).__name__}: {exc.orig}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())  # one line, whatever the driver's message held
    text = mask_urls(text)
    for secret in _secrets(settings):
        text = text.replace(secret, MASK)
    return text or type(exc).__name__


def counted(number: int, one: str, many: str) -> str:
    """``1 batch``, ``2 batches``: a count with its noun."""
    return f"{number} {one if number == 1 else many}"


def fail(message: str) -> NoReturn:
    """Stop the command with ``message`` as its one-line reason."""
    raise CommandFailed(message)


@contextmanager
def failures(output: Output, settings: Settings | None = None) -> Iterator[None]:
    """Turn any exception of the block into exit status 1 and one line on stderr."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        print("aegis: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        if settings is None:
            # Passwords of the environment's URLs, even when Settings itself failed.
            try:
                settings = Settings()
            except Exception:
                settings = None
        line = one_line(exc, settings)
        if output.json:
            output.document({"ok": False, "error": line})
        print(f"aegis: {line}", file=sys.stderr)
        raise typer.Exit(1) from None


def load_settings() -> Settings:
    """The ``DATABASE_*`` settings from the environment (and ``.env``)."""
    return Settings()


@asynccontextmanager
async def database(settings: Settings, **overrides: Any) -> AsyncIterator[DatabaseManager]:
    """A manager built from ``settings`` and made the default (``provide_services`` and
    ``get_database`` find it) for the block; closed at the end."""
    db = DatabaseManager.from_settings(settings, **overrides)
    previous = peek_database()  # a host process's own default (tests run commands inside)
    configure_database(db)
    try:
        yield db
    finally:
        reset_database()
        if previous is not None:
            configure_database(previous)
        await db.close()


def import_path() -> None:
    """Put the current directory first on ``sys.path``, as ``uvicorn`` does, so that
    ``--model myapp.models:Session`` imports the project the command runs in."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)


__all__ = [
    "CommandFailed",
    "JsonOption",
    "Output",
    "counted",
    "database",
    "fail",
    "failures",
    "import_path",
    "load_settings",
    "one_line",
]
