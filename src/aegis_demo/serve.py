"""``serve()``: the reference application under uvicorn, as ``python -m aegis_demo`` and
``aegis demo`` run it.

On a loopback address (127.0.0.1, ::1, localhost) the demo is for the browser of this
machine over plain http: the cookies are not ``Secure`` there (a browser would drop them),
unless ``SESSION_COOKIE_SECURE`` says otherwise. Elsewhere they stay ``Secure``. An admin
token is generated when ``FRIDGE_ADMIN_TOKEN`` is unset, and printed with the operator
panel's address; a CSRF secret likewise (not printed), so that every worker shares both.
"""

from __future__ import annotations

import ipaddress
import os
import secrets

import uvicorn

__all__ = ["admin_token", "is_loopback", "serve", "url_of"]


def is_loopback(host: str) -> bool:
    """Is ``host`` this machine only (so that plain http never leaves it)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    """The address a browser opens for ``host:port`` (an IPv6 host in brackets)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def admin_token() -> str:
    """The operator panel's token: ``FRIDGE_ADMIN_TOKEN``, else one generated now and put
    there, so that every worker process and a later call see the same."""
    token = os.environ.get("FRIDGE_ADMIN_TOKEN") or secrets.token_urlsafe(18)
    os.environ["FRIDGE_ADMIN_TOKEN"] = token
    return token


def serve(
    host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1, quiet: bool = False
) -> None:
    """Serve ``aegis_demo.app:create_app`` on ``host:port`` until Ctrl-C; prints its URL
    and the operator panel's token (``quiet=True``: nothing, for a caller that says it).

    The settings go to the worker processes through the environment (uvicorn starts them
    with this one's), which is why they are set there rather than passed.
    """
    if workers < 1:
        raise ValueError(f"workers={workers} is invalid: give 1 or more worker processes")
    if is_loopback(host):
        os.environ.setdefault("SESSION_COOKIE_SECURE", "false")
    token = admin_token()
    os.environ.setdefault("DEMO_CSRF_SECRET", secrets.token_urlsafe(32))
    url = url_of(host, port)
    if not quiet:
        print(f"aegis demo: {url} (Ctrl-C stops it)", flush=True)
        print(f"operator panel: {url}/operator  admin token: {token}", flush=True)
    uvicorn.run(
        "aegis_demo.app:create_app",
        factory=True,
        host=host.strip("[]"),
        port=port,
        workers=workers,
        log_level="warning",
    )
