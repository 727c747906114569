"""Draw docs/deploying.png, the topology of docs/guide.md's "Deploying" section.

    python docs/deploying.py      # needs matplotlib (the bench extra has it)

Drawn with matplotlib's patches rather than a diagram tool, so that the picture is made
from this file by what the project already installs for its benchmark charts.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).with_name("deploying.png")
BLUE, GREEN, ORANGE, GREY, PURPLE = "#dbe9f6", "#dff0d8", "#fdebd0", "#eeeeee", "#e8daef"


def box(
    ax: plt.Axes, x: float, y: float, w: float, h: float, title: str, body: str, color: str
) -> None:
    """A rounded box with a bold title and a smaller body."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.15",
            facecolor=color,
            edgecolor="#555555",
            linewidth=1.2,
        )
    )
    ax.text(x + w / 2, y + h - 0.22, title, ha="center", va="top", fontsize=10.5, weight="bold")
    ax.text(x + w / 2, y + h - 0.62, body, ha="center", va="top", fontsize=8, linespacing=1.35)


def arrow(
    ax: plt.Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    label: str,
    *,
    color: str = "#333333",
    style: str = "-",
    bend: float = 0.0,
    at: float = 0.5,
    offset: tuple[float, float] = (0.0, 0.12),
) -> None:
    """An arrow from ``start`` to ``end`` with ``label`` near the fraction ``at`` of it."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=14,
            color=color,
            linewidth=1.4,
            linestyle=style,
            connectionstyle=f"arc3,rad={bend}",
        )
    )
    x = start[0] + (end[0] - start[0]) * at + offset[0]
    y = start[1] + (end[1] - start[1]) * at + offset[1]
    ax.text(
        x,
        y,
        label,
        ha="center",
        va="bottom",
        fontsize=7.5,
        color=color,
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1},
    )


def main() -> None:
    """Draw the picture and write it next to this file."""
    fig, ax = plt.subplots(figsize=(12, 7.2))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 7.2)
    ax.axis("off")

    box(
        ax,
        0.2,
        5.3,
        2.4,
        1.5,
        "Clients",
        "browsers, API clients\ncookies: session,\naegis_read_after",
        GREY,
    )

    # One uvicorn command, two worker processes.
    ax.add_patch(
        FancyBboxPatch(
            (3.3, 3.55),
            4.1,
            3.45,
            boxstyle="round,pad=0.02,rounding_size=0.2",
            facecolor="white",
            edgecolor="#888888",
            linestyle="--",
            linewidth=1.2,
        )
    )
    ax.text(
        5.35,
        6.88,
        "uvicorn app:app --workers 2  (one per CPU)",
        ha="center",
        va="top",
        fontsize=9,
        style="italic",
    )
    worker_body = (
        "ReadYourWritesMiddleware\nSessionMiddleware\n"
        "pools: main, background,\nreplica; replica monitor;\nEventHub (LISTEN)"
    )
    box(ax, 3.5, 3.75, 1.8, 2.8, "worker 1", worker_body, BLUE)
    box(ax, 5.4, 3.75, 1.8, 2.8, "worker 2", worker_body, BLUE)

    box(
        ax,
        8.3,
        4.8,
        2.6,
        1.6,
        "pgbouncer",
        "pool_mode = transaction\nDATABASE_URL\nDATABASE_PGBOUNCER=true",
        ORANGE,
    )
    box(
        ax,
        4.2,
        0.35,
        3.0,
        1.9,
        "PostgreSQL primary",
        "every write, every unit of work\n"
        "not read-only, the session store,\n"
        "event log, LISTEN / NOTIFY",
        GREEN,
    )
    box(
        ax,
        8.9,
        0.35,
        2.9,
        1.9,
        "streaming standby",
        "read-only sessions and\nread-only units of work\nDATABASE_REPLICA_URLS\n"
        "(replay position checked\nevery 0.25 s by each worker)",
        PURPLE,
    )

    arrow(ax, (2.6, 6.05), (3.5, 5.6), "HTTP", offset=(-0.1, 0.12))
    arrow(
        ax,
        (3.5, 5.0),
        (2.6, 5.5),
        "Set-Cookie\naegis_read_after",
        color="#8e44ad",
        at=0.45,
        offset=(-0.05, -0.55),
    )
    arrow(ax, (7.2, 5.6), (8.3, 5.6), "transactions", offset=(0, 0.08))
    arrow(
        ax,
        (9.6, 4.8),
        (6.9, 2.25),
        "transaction-pooled\nserver connections",
        color="#d35400",
        at=0.45,
        offset=(0.45, 0.0),
    )
    arrow(
        ax,
        (4.4, 3.75),
        (4.9, 2.25),
        "DATABASE_DIRECT_URL:\nthe event hub's LISTEN",
        color="#1e8449",
        at=0.5,
        offset=(-1.15, -0.15),
    )
    arrow(
        ax,
        (7.0, 3.75),
        (9.4, 2.25),
        "read-only work, when the standby\nhas the client's last write",
        color="#8e44ad",
        at=0.5,
        offset=(0.35, 0.05),
    )
    arrow(ax, (7.2, 1.3), (8.9, 1.3), "WAL stream", color="#555555", style="--", offset=(0, 0.08))
    ax.set_title("aegis-shared deployed: two workers, pgbouncer, a streaming replica", fontsize=12)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
