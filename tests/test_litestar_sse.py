"""SSE from the event hub through Litestar's own ``ServerSentEvent``, under uvicorn with a
real streaming client, on SQLite and PostgreSQL: ``id:`` is the position, a reconnect with
``Last-Event-ID`` resumes with no gap and no duplicate, a bad header is a 400 before the
stream, retention's gap is a named ``resync`` event, and a client that leaves ends its
subscription."""

from __future__ import annotations

import pytest
from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import ServerSentEvent

from aegis_shared.database import DatabaseManager
from aegis_shared.events import EventHub
from aegis_shared.litestar import AegisPlugin, event_stream, last_event_id
from tests.test_events_retention import check_resync_after_trim
from tests.test_events_sse import check_bad_last_event_ids, check_resume
from tests.test_litestar import strict_litestar

pytestmark = [
    pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True),
    strict_litestar,
]


def make_app(db: DatabaseManager, hub: EventHub) -> Litestar:
    @get(
        "/events/{channel:str}",
        dependencies={"after": Provide(last_event_id)},
    )
    async def events(channel: FromPath[str], after: NamedDependency[int | None]) -> ServerSentEvent:
        return event_stream(hub, channel, after=after)

    return Litestar(
        route_handlers=[events],
        plugins=[AegisPlugin(db, close_on_shutdown=False)],
        logging_config=None,
    )


async def test_stream_resumes_from_last_event_id_without_gap_or_duplicate(
    edb: DatabaseManager,
) -> None:
    await check_resume(edb, lambda hub: make_app(edb, hub), lifespan="on")


async def test_bad_last_event_id_is_a_400_before_the_stream(edb: DatabaseManager) -> None:
    await check_bad_last_event_ids(edb, lambda hub: make_app(edb, hub), lifespan="on")


async def test_resuming_after_trimmed_events_gets_a_resync_event(edb: DatabaseManager) -> None:
    await check_resync_after_trim(edb, lambda hub: make_app(edb, hub), lifespan="on")
