"""``python -m bench <scenario>``: run benchmarks, profile, chart or report the results."""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import SCENARIOS


def _loop_runner():  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "command",
        choices=(*SCENARIOS, "all", "profile", "chart", "report"),
        help="a scenario, 'all' (every scenario, the profile and the chart), "
        "'profile', 'chart' (docs/benchmarks.png) or 'report' (markdown tables)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="override the rounds per scenario")
    args = parser.parse_args(argv)
    run = _loop_runner()
    kwargs = {} if args.rounds is None else {"rounds": args.rounds}
    commands = [*SCENARIOS, "profile", "chart"] if args.command == "all" else [args.command]
    started = time.perf_counter()
    for command in commands:
        t0 = time.perf_counter()
        if command == "reads":
            from bench import reads

            run(reads.run(**kwargs))
        elif command == "lists":
            from bench import lists

            run(lists.run(**kwargs))
        elif command == "queries":
            from bench import queries

            run(queries.run(**kwargs))
        elif command == "bulk":
            from bench import bulk

            run(bulk.run(**kwargs))
        elif command == "http":
            from bench import http

            http.run(**kwargs)
        elif command == "sessions":
            from bench import sessions

            sessions.run(run, **kwargs)
        elif command == "litestar":
            from bench import litestar

            litestar.run(**kwargs)
        elif command == "events":
            from bench import events

            run(events.run(**kwargs))
        elif command == "deploy":
            from bench import deploy

            deploy.run(**kwargs)
        elif command == "reference":
            from bench import reference

            reference.run(**kwargs)
        elif command == "profile":
            from bench import profile

            run(profile.run())
        elif command == "chart":
            from bench import chart

            chart.run()
        elif command == "report":
            from bench import report

            report.run()
        if command != "report":
            print(f"[{command} took {time.perf_counter() - t0:.0f}s]")
    if len(commands) > 1:
        print(f"[all took {time.perf_counter() - started:.0f}s]")


if __name__ == "__main__":
    main()
