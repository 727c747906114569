"""``python -m aegis_demo [--host HOST] [--port PORT] [--workers N]``: serve the
reference application (see :mod:`aegis_demo.serve`)."""

from __future__ import annotations

import argparse
import contextlib

from aegis_demo.serve import serve


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m aegis_demo", description="Serve the aegis-shared reference application."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    args = parser.parse_args(argv)
    # Ctrl-C before uvicorn took over the signals: stop quietly too.
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.host, args.port, workers=args.workers)


if __name__ == "__main__":
    main()
