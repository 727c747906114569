"""Ours for the ``sessions`` scenario: the worked example ``aegis_demo.fridge.app`` as it is,
on the benchmark database with a pool of 10. ``GET /fridge`` reads the session
(``SessionMiddleware`` + ``current_session``: one SELECT, a touch at most every 5 minutes)
and the fridge's child rows with their ingredients (``FridgeService``).

The example's background sweeper is pushed out to once a day so that it never runs during
a measurement; the scenario triggers the same cleanup (``SessionStore.cleanup_expired``,
batches of 1,000) through ``POST /admin/cleanup-sessions`` (a background job, polled
until done) when it means to."""

from __future__ import annotations

from datetime import timedelta

from aegis_demo.fridge.app import create_app
from aegis_shared.database import DatabaseManager
from bench.common import FRIDGE_ADMIN_TOKEN, PG_URL

app = create_app(
    DatabaseManager(PG_URL, pool_size=10, max_overflow=0),
    sweep_every=timedelta(days=1),
    admin_token=FRIDGE_ADMIN_TOKEN,
    secure_cookie=False,  # the load generator talks plain http on loopback
)
