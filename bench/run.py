"""Run every benchmark, merge their JSON into results.json, and render BENCHMARKS.md from it.

python -m bench.run            # make bench: full sizes -> bench/results.json, BENCHMARKS.md
python -m bench.run --quick    # make bench-quick: small sizes -> bench/out/quick/
python -m bench.run --only memory_search,concurrency   # re-measure some parts, keep the rest

Each part runs in its own process (its threads, memory high-water mark and import cost stay its
own) and writes its JSON under bench/out/parts/. A part that fails is reported as failed in the
results and the run exits non-zero after the others have finished.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import machine, write_json
from bench.report import render

PARTS = (  # cheapest first; env_speed also builds (and caches) the environments the rest use
    "env_speed",
    "graph_overhead",
    "memory_search",
    "concurrency",
    "prompt_cost",
    "rss",
    "rl_curves",  # trains (or loads, from bench/out/policies) the RL baselines with curves
    "quality",
    "html_report",  # the self-contained run report: page load of a 10,000-episode run
)
FULL = {"results": Path("bench/results.json"), "markdown": Path("BENCHMARKS.md")}
QUICK = {
    "results": Path("bench/out/quick/results.json"),
    "markdown": Path("bench/out/quick/BENCHMARKS.md"),
}


def run_part(name: str, quick: bool, out: Path) -> tuple[dict[str, Any], float, str | None]:
    """Run `python -m bench.NAME` in a child process; return its JSON, seconds and error."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", f"bench.{name}", "--out", str(out)] + (
        ["--quick"] if quick else []
    )
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or not out.is_file():
        tail = proc.stderr.strip().splitlines()[-5:]
        error = f"exit {proc.returncode}: " + " | ".join(tail)
        print(f"[bench] {name} FAILED after {seconds:.0f} s: {error}", file=sys.stderr)
        return {}, seconds, error
    print(f"[bench] {name} done in {seconds:.0f} s", file=sys.stderr, flush=True)
    return json.loads(out.read_text()), seconds, None


def _date(before: str | None, today: str, only: list[str]) -> str:
    """Return the results' date: today for a whole run; after `--only`, the whole run's date
    and the parts re-measured on each later day (`2026-11-27; re-measured 2026-11-30: a, b`)."""
    if not only or not before:
        return today
    head, _, last = before.rpartition("; re-measured ")
    day, _, parts = last.partition(": ")
    if head and day == today:  # another part re-measured today: one entry for the day
        names = [p for p in parts.split(", ") if p]
        names += [p for p in only if p not in names]
        return f"{head}; re-measured {today}: {', '.join(names)}"
    return f"{before}; re-measured {today}: {', '.join(only)}"


def main(argv: list[str] | None = None) -> int:
    """Run the parts, write results.json and BENCHMARKS.md; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, ~5 minutes")
    parser.add_argument("--only", default="", help="comma-separated parts to re-measure")
    args = parser.parse_args(argv)
    paths = QUICK if args.quick else FULL
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    results: dict[str, Any] = {}
    if only and paths["results"].is_file():
        results = json.loads(paths["results"].read_text())
    parts_dir = paths["results"].parent / "parts" if args.quick else Path("bench/out/parts")
    started = time.perf_counter()
    runs = results.setdefault("bench_runs", {})
    failed = []
    for name in only or PARTS:
        data, seconds, error = run_part(name, args.quick, parts_dir / f"{name}.json")
        results.update(data)
        runs[name] = {"seconds": round(seconds, 1), "error": error}
        if error:
            failed.append(name)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    results.update(
        machine=machine(),
        date=_date(results.get("date"), today, only),
        quick=args.quick,
        command="make bench-quick" if args.quick else "make bench",
    )
    if not only:
        results["bench_seconds"] = round(time.perf_counter() - started, 1)
    write_json(paths["results"], results)
    render(paths["results"], paths["markdown"])
    print(f"[bench] wrote {paths['results']} and {paths['markdown']}", file=sys.stderr)
    if failed:
        print(f"[bench] failed parts: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
