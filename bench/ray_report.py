"""Render the Ray part of the concurrency benchmark (`bench.concurrency`) for BENCHMARKS.md.

Apart from `bench.report_sections` so that file stays small, and free of heavy imports so the
report renders without loading Ray or the project.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def ray_lines(ray: dict[str, Any] | None, fmt: Callable[..., str]) -> list[str]:
    """Return the Markdown lines of `concurrency.ray` (nothing when it was not measured)."""
    if not ray or not ray.get("runs"):
        return []
    head = ["actors", "K", "speedup vs local K=1", "wall (s)", "requests/s", "mean in flight"]
    head += ["actor start (s)", "warm-up (s)", "failed"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w, d in ray["runs"].items():
        row = [w, fmt(d.get("k")), f"{fmt(d.get('speedup_vs_local_k1'), 2)}×"]
        row += [fmt(d.get("wall_s"), 1), fmt(d.get("requests_per_s"), 1)]
        row += [fmt(d.get("mean_in_flight"), 1), fmt(d.get("actor_start_s"), 1)]
        row += [fmt(d.get("warmup_s"), 1), fmt(d.get("failed"))]
        out.append("| " + " | ".join(row) + " |")
    return [
        "Through the Ray executor (`--executor ray`, `eval/executor.py`) on a real local cluster: "
        f"{ray.get('cluster')}, started in {fmt(ray.get('cluster_start_s'), 1)} s. Walls are "
        "steady state: actor start and a warm-up episode per actor (loading the environment) "
        "are timed apart. Same episodes as local K=1: "
        f"{'yes' if ray.get('results_match') else 'NO'}.",
        "",
        *out,
        "",
    ]
