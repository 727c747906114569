"""Live data: a commit-ordered event log on the application's database (issue 12).

>>> from aegis_shared.events import publish, read_events, EventHub, Event
>>> async with db.session() as session:
...     await publish(session, "fridge:42", {"added": "egg"})   # exists iff this commits
>>> events = await read_events(db, "fridge:42", after=0)
>>> removed = await trim_events(db, RetentionPolicy(max_age=timedelta(days=7)))

See docs/guide.md, "Live data".
"""

from aegis_shared.events.consumers import (
    Consumer,
    DeadLetter,
    consumed_floor,
    list_dead_letters,
    skip_dead_letter,
)
from aegis_shared.events.hub import EventHub
from aegis_shared.events.publish import MAX_EVENT_BYTES, check_channel, publish
from aegis_shared.events.reading import MAX_READ, Event, EventsTrimmedError, read_events
from aegis_shared.events.retention import (
    EventSweeper,
    RetentionPolicy,
    retention_cut,
    sweep_events,
    trim_events,
)
from aegis_shared.events.subscription import Resync, Subscription, Trimmed
from aegis_shared.events.tables import (
    MAX_CHANNEL_LENGTH,
    channels_table,
    consumers_table,
    create_event_tables,
    dead_letters_table,
    drop_event_tables,
    event_metadata,
    events_table,
    include_event_tables,
)

__all__ = [
    "MAX_CHANNEL_LENGTH",
    "MAX_EVENT_BYTES",
    "MAX_READ",
    "Consumer",
    "DeadLetter",
    "Event",
    "EventHub",
    "EventSweeper",
    "EventsTrimmedError",
    "Resync",
    "RetentionPolicy",
    "Subscription",
    "Trimmed",
    "channels_table",
    "check_channel",
    "consumed_floor",
    "consumers_table",
    "create_event_tables",
    "dead_letters_table",
    "drop_event_tables",
    "event_metadata",
    "events_table",
    "include_event_tables",
    "list_dead_letters",
    "publish",
    "read_events",
    "retention_cut",
    "skip_dead_letter",
    "sweep_events",
    "trim_events",
]
