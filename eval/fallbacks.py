"""Count the node fallbacks of LLM episodes, and mark a method whose numbers are mostly theirs.

Each agent node has a documented fallback for an unusable answer (a generic plan, the first
candidate, a neutral value, a fixed reflection). A run where most LLM calls fell back measures
those fallbacks, not the model: e.g. a server refusing every request shape once produced
"billp 98% of oracle" from the item-CF fallback alone. So every table shows the fallbacks per
node and their share of LLM calls, and a method whose share exceeds `DEGRADED_ABOVE` (in its
test or its training episodes) is marked degraded, with the reason, in every output.

An LLM call here is one answer a node asked for (`Usage.asks`: one per call, whatever its
retries); records written before `asks` existed fall back to the answered calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

NODES = ("planner", "actor", "critic", "reflector")
DEGRADED_ABOVE = 0.20
HEADER = ["fallbacks", "fallback %", "fb P/A/C/R"]


def episode_asks(record: Mapping[str, Any]) -> int:
    """Return the answers an episode's nodes asked the LLM for."""
    nodes = [u for u in (record.get("usage") or {}).values() if isinstance(u, Mapping)]
    if any("asks" in u for u in nodes):
        return sum(int(u.get("asks", 0)) for u in nodes)
    calls = sum(int(u.get("calls", 0)) for u in nodes) or int(record.get("llm_calls") or 0)
    fell = sum((record.get("fallbacks_by_node") or {}).values()) or record.get("fallbacks") or 0
    return max(calls, int(fell))


def fallback_summary(episodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return {fallbacks: {node: n, ..., total: n}, llm_asks, fallback_rate} of ok episodes."""
    counts: Counter[str] = Counter()
    asks = 0
    for record in episodes:
        if record.get("status", "ok") != "ok":
            continue
        counts.update({k: int(v) for k, v in (record.get("fallbacks_by_node") or {}).items()})
        asks += episode_asks(record)
    total = sum(counts.values())
    by_node = {n: counts.get(n, 0) for n in (*NODES, *sorted(set(counts) - set(NODES)))}
    return {
        "fallbacks": {**by_node, "total": total},
        "llm_asks": asks,
        "fallback_rate": total / asks if asks else None,
    }


def _reason(summary: Mapping[str, Any], phase: str) -> str | None:
    rate = summary.get("fallback_rate")
    if rate is None or rate <= DEGRADED_ABOVE:
        return None
    counts = summary["fallbacks"]
    nodes = ", ".join(f"{n} {c}" for n, c in counts.items() if n != "total" and c)
    return (
        f"{counts['total']} of {summary['llm_asks']} LLM calls of the {phase} episodes "
        f"({rate:.0%}, over {DEGRADED_ABOVE:.0%}) fell back to a node's default ({nodes}): "
        "these numbers are mostly the fallbacks', not the model's"
    )


def degradation(
    test: Sequence[Mapping[str, Any]], train: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Return the fallback fields of a method's results.json entry, degraded flag included."""
    out = fallback_summary(test)
    trained = fallback_summary(train)
    out["train_fallback_rate"] = trained["fallback_rate"]
    reasons = [r for r in (_reason(out, "test"), _reason(trained, "training")) if r]
    out["degraded"] = bool(reasons)
    out["degraded_reason"] = "; ".join(reasons) or None
    return out


def cells(entry: Mapping[str, Any]) -> list[str]:
    """Return the table cells under `HEADER` for one method ('–' where no LLM was asked)."""
    rate = entry.get("fallback_rate")
    counts = entry.get("fallbacks")
    if rate is None or not counts:
        return ["–", "–", "–"]
    mark = " (degraded)" if entry.get("degraded") else ""
    nodes = "/".join(str(counts.get(n, 0)) for n in NODES)
    return [str(counts["total"]), f"{100 * rate:.0f}%{mark}", nodes]


def degraded_lines(results: Mapping[str, Any]) -> list[str]:
    """Return one 'method: reason' line per degraded method."""
    return [
        f"{name}: {entry['degraded_reason']}"
        for name, entry in results["methods"].items()
        if entry.get("degraded")
    ]
