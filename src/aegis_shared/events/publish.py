"""``publish()``: write an event in the caller's transaction.

The event row is inserted at once, with no position (``NULL``): it is part of the
transaction like any other row, so a rollback, a SAVEPOINT rollback or a failed attempt
that :func:`~aegis_shared.database.with_db_retry` runs again removes it with everything
else, and only a COMMIT makes it exist. Its position is given just before that COMMIT (see
:mod:`aegis_shared.events.positions`).

Input is checked before any SQL: the channel's form, that the data is JSON, and its size.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.events import positions
from aegis_shared.events.tables import MAX_CHANNEL_LENGTH, events_table
from aegis_shared.models.types import utcnow

#: Largest event, in bytes of its UTF-8 JSON text. Events are wake-ups with their facts,
#: not documents: every subscriber of the channel reads each one.
MAX_EVENT_BYTES: Final = 64 * 1024

_CHANNEL = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{MAX_CHANNEL_LENGTH}}}")
_ALLOWED = (
    f"1 to {MAX_CHANNEL_LENGTH} characters among letters A-Z a-z, digits and _ . : - "
    '(for example "fridge:42" or "orders.created")'
)


def check_channel(channel: object) -> str:
    """``channel`` itself if it is a valid channel name; ``ValueError`` naming the form
    otherwise."""
    if not isinstance(channel, str) or _CHANNEL.fullmatch(channel) is None:
        raise ValueError(f"invalid event channel {channel!r}: a channel name is {_ALLOWED}")
    return channel


def encode(data: object) -> str:
    """``data`` as the JSON text stored for it; ``ValueError`` when it is not JSON or too
    large."""
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"event data must be JSON-serializable (dict, list, str, int, finite float, "
            f"bool, None): {exc}. Convert it first, e.g. str() a UUID or .isoformat() a "
            "datetime."
        ) from None
    size = len(text.encode("utf-8"))
    if size > MAX_EVENT_BYTES:
        raise ValueError(
            f"event data is {size} bytes of JSON, over the limit of {MAX_EVENT_BYTES}: publish "
            "a reference (an id the subscriber reads) instead of the document itself"
        )
    return text


async def publish(session: AsyncSession, channel: str, data: Any) -> None:
    """Write an event to ``channel`` in ``session``'s transaction: it exists if and only if
    that transaction commits, and then it has the next position of its channel.

    >>> async with db.session() as session:
    ...     session.add(Ingredient(fridge_id=42, name="egg"))
    ...     await publish(session, "fridge:42", {"added": "egg"})
    ... # committed: subscribers of "fridge:42" receive {"added": "egg"}

    Positions of one channel are 1, 2, 3, ... with no gap, in the order the transactions
    committed (not the order they published), so a reader that has seen position N and
    asks for what follows never misses an event. ``data`` is any JSON value up to
    :data:`MAX_EVENT_BYTES`. One INSERT now; at COMMIT one counter update per channel the
    transaction published to (see :mod:`aegis_shared.events.positions`).

    Raises ``ValueError`` before any SQL for a bad channel name or data.
    """
    check_channel(channel)
    text = encode(data)
    await session.execute(
        insert(events_table).values(channel=channel, position=None, data=text, created_at=utcnow())
    )
    positions.mark_pending(session, channel)
