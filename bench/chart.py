"""``chart``: ``docs/benchmarks.png`` from ``bench/results/*.json``.

One horizontal bar per goal: the measured ratio ours / peer, green when the goal is met and
red when not, with the goal's threshold drawn as a vertical line across the bar. Most goals
are floors (ratio >= goal); a goal on a cost (a latency under load) is a ceiling
(ratio <= goal) and says so in its label.
"""

from __future__ import annotations

from bench.common import DOCS_DIR, ROOT, SCENARIOS, load_results

COLORS = {True: "#2e8b57", False: "#c0392b"}


def _label(goal: dict[str, object]) -> str:
    name = str(goal["goal"])
    if "best peer" in name:
        name += f"\n= {str(goal['peer']).split(':')[0]}"
    return name


def run() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_results()
    goals = [
        goal
        for scenario in SCENARIOS
        for goal in results.get(scenario, {}).get("goals", [])
        if goal.get("ratio") is not None
    ]
    if not goals:
        raise SystemExit("no results yet: run python -m bench all (or a scenario) first")
    height = 0.55 * len(goals) + 1.6
    fig, ax = plt.subplots(figsize=(10, height))
    positions = list(range(len(goals)))[::-1]
    for y, goal in zip(positions, goals, strict=True):
        ratio, threshold = goal["ratio"], goal["threshold"]
        ax.barh(y, ratio, color=COLORS[bool(goal["met"])], height=0.6)
        ax.plot([threshold, threshold], [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text(
            max(ratio, threshold) + 0.05,
            y,
            f"{ratio:.2f}x (goal {goal.get('comparison', '>=')} {threshold:g}x)",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(positions)
    ax.set_yticklabels([_label(goal) for goal in goals], fontsize=8)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    top = max(max(g["ratio"] for g in goals), max(g["threshold"] for g in goals))
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel(
        "ratio ours / peer (higher is better, except for goals marked <=); black line: the goal"
    )
    ax.set_title("aegis_shared against its peers: measured ratio per goal")
    fig.tight_layout()
    DOCS_DIR.mkdir(parents=True, exist_ok=True)
    path = DOCS_DIR / "benchmarks.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart written to {path.relative_to(ROOT)}")
