"""The reference application (``aegis_demo.app``) as ``python -m aegis_demo`` serves it, on the
benchmark database with a pool of 10, for the ``reference`` scenario.

Every request also writes one access-log row after its answer (``BackgroundUnitOfWork`` on
the background pool), as in the demo: that is part of what this app costs."""

from __future__ import annotations

from aegis_demo.app import create_app
from aegis_shared.database import DatabaseManager
from bench.common import FRIDGE_ADMIN_TOKEN, PG_URL

app = create_app(
    DatabaseManager(PG_URL, pool_size=10, max_overflow=0),
    admin_token=FRIDGE_ADMIN_TOKEN,
    secure_cookie=False,  # the load generator talks plain http on loopback
)
