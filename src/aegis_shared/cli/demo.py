"""``aegis demo``: serve the reference application (package ``aegis_demo``).

``aegis_demo`` is imported only here and only when the command runs: the library never
imports the application (layers point down), and without the ``demo`` extra the command
says in one line how to install it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from aegis_shared.cli.output import JsonOption, Output, fail, failures

DEMO_HINT = 'pip install "aegis-shared[demo]"'


def demo(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port to listen on.")
    ] = 8000,
    json_output: JsonOption = False,
) -> None:
    """Serve the reference application and print its URL; Ctrl-C stops it."""
    output = Output(json_output)
    with failures(output):
        try:
            serve_module = importlib.import_module("aegis_demo.serve")
        except ImportError as exc:
            missing = getattr(exc, "name", None) or "aegis_demo"
            fail(f"the reference application needs {missing!r}, which is missing: {DEMO_HINT}")
        if not output.json:
            serve_module.serve(host, port)  # it prints the URL and the operator's token
            return
        # --json: one document on stdout and nothing after it.
        url = serve_module.url_of(host, port)
        output.document(
            {
                "ok": True,
                "url": url,
                "operator": f"{url}/operator",
                "admin_token": serve_module.admin_token(),
            }
        )
        sys.stdout.flush()
        serve_module.serve(host, port, quiet=True)
