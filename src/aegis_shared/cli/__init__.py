"""The ``aegis`` command: migrations, sessions, the event log, a doctor and the demo.

``aegis db upgrade``, ``aegis sessions cleanup``, ``aegis events trim``, ``aegis doctor``,
``aegis demo``; see docs/guide.md, "The aegis command". Typer and Rich come with the
``cli`` extra (``pip install "aegis-shared[cli]"``); without them the command says so in
one line instead of failing with an import error.
"""

from __future__ import annotations

import sys

INSTALL_HINT = 'the aegis command needs Typer and Rich: pip install "aegis-shared[cli]"'


def main() -> None:
    """Run the ``aegis`` command (the console script's entry point)."""
    try:
        import rich  # noqa: F401
        import typer  # noqa: F401
    except ImportError:
        print(f"aegis: {INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(1) from None
    from aegis_shared.cli.app import app

    app(prog_name="aegis")


__all__ = ["INSTALL_HINT", "main"]
