"""``aegis events``: what the event log holds per channel, and trimming it now.

``stats`` reads through ``provide_services(EventLogStats)`` on a session of its own (seed
004's standalone source); ``trim`` runs :func:`~aegis_shared.events.trim_events` with the
retention policy of the ``EVENTS_RETENTION_*`` settings, or the options given.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from aegis_shared.cli.output import JsonOption, Output, counted, database, failures, load_settings
from aegis_shared.database import provide_services
from aegis_shared.events import RetentionPolicy, trim_events
from aegis_shared.events.stats import ChannelStats, EventLogStats
from aegis_shared.models.types import utcnow

app = typer.Typer(help="The event log: per-channel statistics, trimming.", no_args_is_help=True)


def _row(stats: ChannelStats, now: Any) -> dict[str, Any]:
    age = None if stats.oldest_at is None else (now - stats.oldest_at).total_seconds()
    return {
        "channel": stats.channel,
        "count": stats.count,
        "oldest_position": stats.oldest_position,
        "newest_position": stats.newest_position,
        "last_position": stats.last_position,
        "oldest_at": stats.oldest_at,
        "newest_at": stats.newest_at,
        "oldest_age_seconds": None if age is None else round(max(age, 0.0), 3),
    }


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return str(timedelta(seconds=int(seconds)))


@app.command()
def stats(json_output: JsonOption = False) -> None:
    """Per channel: retained events, oldest and newest position, age of the oldest."""
    output = Output(json_output)
    with failures(output):
        settings = load_settings()

        async def read() -> list[ChannelStats]:
            async with database(settings), provide_services(EventLogStats) as (log,):
                return await log.channels()

        channels = asyncio.run(read())
        now = utcnow()
        rows = [_row(item, now) for item in channels]
        total = sum(row["count"] for row in rows)
        if output.json:
            output.document({"ok": True, "channels": rows, "events": total})
            return
        table = Table(
            "channel", "events", "oldest", "newest", "oldest age", title="event log by channel"
        )
        for row in rows:
            table.add_row(
                row["channel"],
                str(row["count"]),
                "-" if row["oldest_position"] is None else str(row["oldest_position"]),
                "-" if row["newest_position"] is None else str(row["newest_position"]),
                _age(row["oldest_age_seconds"]),
            )
        output.out.print(table)
        output.out.print(f"{len(rows)} channels, {total} events retained")


@app.command()
def trim(
    max_age: Annotated[
        float | None,
        typer.Option(
            "--max-age", min=0.001, help="Seconds an event is kept (EVENTS_RETENTION_MAX_AGE)."
        ),
    ] = None,
    max_count: Annotated[
        int | None,
        typer.Option(
            "--max-count", min=1, help="Events kept per channel (EVENTS_RETENTION_MAX_COUNT)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Events removed per transaction (EVENTS_RETENTION_BATCH_SIZE).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Remove the events the retention policy no longer keeps, in short batches."""
    output = Output(json_output)
    with failures(output):
        settings = load_settings()
        policy = RetentionPolicy.from_settings(settings)
        policy = RetentionPolicy(
            max_age=policy.max_age if max_age is None else timedelta(seconds=max_age),
            max_count=policy.max_count if max_count is None else max_count,
            batch_size=policy.batch_size if batch_size is None else batch_size,
        )
        batches = 0
        started = time.monotonic()
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=output.err,
            disable=output.json,
            transient=True,
        ) as progress:
            task = progress.add_task("trimming the event log: 0 removed", total=None)
            removed_so_far = 0

            def on_batch(removed: int) -> None:
                nonlocal batches, removed_so_far
                batches += 1
                removed_so_far += removed
                progress.update(task, description=f"trimming the event log: {removed_so_far}")

            async def run() -> int:
                async with database(settings) as db:
                    return await trim_events(db, policy, on_batch=on_batch)

            removed = asyncio.run(run())
        seconds = round(time.monotonic() - started, 3)
        result = {
            "ok": True,
            "removed": removed,
            "batches": batches,
            "seconds": seconds,
            "policy": {
                "max_age_seconds": None
                if policy.max_age is None
                else policy.max_age.total_seconds(),
                "max_count": policy.max_count,
                "batch_size": policy.batch_size,
            },
        }
        if output.json:
            output.document(result)
            return
        if not policy.enabled:
            output.out.print("retention is off (no age and no count limit): nothing trimmed")
            return
        output.out.print(
            f"removed {counted(removed, 'event', 'events')} in "
            f"{counted(batches, 'batch', 'batches')}, {seconds:.2f} s"
        )
