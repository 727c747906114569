"""``report``: the results in ``bench/results/*.json`` as markdown tables (for
``docs/benchmarks.md``), printed to standard output."""

from __future__ import annotations

from typing import Any

from bench.common import SCENARIOS, format_rate, load_results

TITLES = {
    "reads": "Reads by primary key",
    "lists": "Lists and counts",
    "queries": "Repository queries",
    "bulk": "Bulk insert",
    "http": "HTTP: GET /items/{id}",
    "sessions": "Server-side sessions against starsessions + Redis",
    "litestar": "Litestar: GET /items/{id} and the session read against Advanced Alchemy",
    "events": "Live data: SSE fan-out across 2 workers",
    "deploy": "Deploying: workers, pgbouncer, a replica",
    "reference": "The reference application's pages under load",
}


def _rate(value: float | None) -> str:
    return format_rate(value)


def _scenario(name: str, data: dict[str, Any]) -> list[str]:
    lines = [f"### {TITLES[name]}", ""]
    results = data["results"]
    goals = data["goals"]
    for case in dict.fromkeys(r["case"] for r in results):
        rows = [r for r in results if r["case"] == case]
        baseline = data["baselines"].get(case)
        base = next((r["rate"] for r in rows if r["contender"] == baseline), None)
        unit = rows[0]["unit"]
        against = f" (ratio against {baseline})" if baseline else ""
        lines += [
            f"**{case}**{against}",
            "",
            f"| contender | {unit} (median) | rounds: min .. max | x {baseline or '-'} | notes |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for r in rows:
            spread = (
                f"{_rate(min(r['rounds']))} .. {_rate(max(r['rounds']))}"
                if len(r["rounds"]) > 1
                else ""
            )
            rel = f"{r['rate'] / base:.2f}" if r["rate"] and base else "n/a"
            who = f"**{r['contender']}**" if r["contender"].startswith("ours") else r["contender"]
            lines.append(f"| {who} | {_rate(r['rate'])} | {spread} | {rel} | {r['note']} |")
        lines.append("")
    if goals:
        lines += [
            f"Goals ({TITLES[name].lower()})",
            "",
            "| goal | measured | goal | met? |",
            "| --- | ---: | ---: | --- |",
        ]
        for g in goals:
            measured = "n/a" if g["ratio"] is None else f"{g['ratio']:.2f}x"
            met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
            comparison = g.get("comparison", ">=")
            lines.append(f"| {g['goal']} | {measured} | {comparison} {g['threshold']:g}x | {met} |")
        lines.append("")
    return lines


def run() -> None:
    results = load_results()
    if not results:
        raise SystemExit("no results yet: run python -m bench all (or a scenario) first")
    first = next(iter(results.values()))
    env = first["environment"]
    out = ["## Machine", ""]
    out += [f"- {key}: {value}" for key, value in env["machine"].items()]
    out += ["", "## Versions", ""]
    out += [f"- {key}: {value}" for key, value in env["versions"].items()]
    out += [""]
    for name in SCENARIOS:
        if name in results:
            out += [f"<!-- {name}: finished {results[name]['finished']} -->"]
            out += _scenario(name, results[name])
    print("\n".join(out))
