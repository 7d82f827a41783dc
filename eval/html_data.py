"""Gather what the HTML run report shows of the episodes: compact trajectories, learning curves.

The page must open a 10,000-episode run in well under 3 s, so per-step detail never enters the
page's DOM or its JavaScript heap up front: episodes are grouped by (phase, seed, user), the
groups packed into blocks, and each block stored gzip-compressed and base64-encoded; the page
inflates a block (DecompressionStream) only when one of its users is shown. Only a small index
(which users exist, each method's R_traj per user) is read at load.

Everything here reads records defensively: the record and results fields grow as the project
does, so a missing field shows as absent instead of failing the report. (The memory view is
eval/html_memory.py.)
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

BLOCK_GROUPS = 32
"""(phase, seed, user) groups per compressed block: small enough to inflate in a few ms."""
# Episode fields the browser does not show (bulky, or repeated inside each step).
_EPISODE_DROP = {"usage", "history", "steps"}
_STEP_DROP = {"usage"}


def pack(data: Any) -> str:
    """Return `data` as base64 of gzip-compressed JSON (mtime 0: the same run, the same bytes).

    Level 6, not gzip's default 9: three times faster on a big run's records for a file ~3%
    larger. NaN or infinity (JSON has no spelling for them) become null.
    """
    try:
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raw = json.dumps(json_safe(data), ensure_ascii=False, separators=(",", ":"))
    packed = gzip.compress(raw.encode("utf-8"), compresslevel=6, mtime=0)
    return base64.b64encode(packed).decode("ascii")


def unpack(text: str) -> Any:
    """Invert `pack` (what the page's JavaScript does; used by tests)."""
    return json.loads(gzip.decompress(base64.b64decode(text)).decode("utf-8"))


def json_safe(value: Any) -> Any:
    """Return JSON-safe values: NaN and infinities become None (JSON has no spelling for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def title_map(records: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Return item id -> title for every item any record names (steps and histories)."""
    titles: dict[int, str] = {}
    for record in records:
        for step in record.get("steps") or []:
            if isinstance(step.get("item"), int) and isinstance(step.get("title"), str):
                titles[step["item"]] = step["title"]
        ids, names = record.get("history") or [], record.get("history_titles") or []
        for item, name in zip(ids, names, strict=False):
            if isinstance(item, int) and isinstance(name, str):
                titles[item] = name
    return titles


def item_name(value: Any, titles: Mapping[int, str]) -> Any:
    """Name a candidate: an id becomes its title where the run names it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return titles.get(value, f"item {value}")
    if isinstance(value, str) and value.isdigit():
        return titles.get(int(value), f"item {value}")
    if isinstance(value, Mapping):
        return value.get("title") or item_name(value.get("item"), titles)
    return value


def episode_view(record: Mapping[str, Any], titles: Mapping[int, str]) -> dict[str, Any]:
    """Return the part of an episode record the trajectory browser shows."""
    out = {k: v for k, v in record.items() if k not in _EPISODE_DROP}
    steps = []
    for raw in record.get("steps") or []:
        step = {k: v for k, v in raw.items() if k not in _STEP_DROP}
        named = step.pop("candidate_titles", None)
        titled = isinstance(named, list) and len(named) == len(step.get("candidates") or [])
        if titled:
            step["candidates"] = named
        if isinstance(step.get("hint_check"), Mapping):  # {item id: accepted?} -> titles
            step["hint_check"] = {item_name(k, titles): v for k, v in step["hint_check"].items()}
        for key in ("candidates", "shortlist"):
            if isinstance(step.get(key), list) and not (titled and key == "candidates"):
                step[key] = [
                    titles.get(c, f"item {c}") if type(c) is int else item_name(c, titles)
                    for c in step[key]
                ]  # the int fast path: big shortlist runs have millions of candidates
        steps.append(step)
    out["steps"] = steps
    return out


def method_order(config_methods: Sequence[str], records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Return the methods asked for, then any other method with records (e.g. the oracle)."""
    seen = list(config_methods)
    for record in records:
        if record.get("method") not in seen:
            seen.append(str(record.get("method")))
    return seen


def trajectories(
    records: Sequence[Mapping[str, Any]], methods: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """Return the browser's index and its compressed blocks.

    index = {"methods": [...], "phases": {phase: {seed: [[user, block, {method: r_traj}]]}}},
    test before train, seeds ascending, users in the order the run met them.
    """
    titles = title_map(records)
    groups: dict[tuple[str, int, int], dict[str, Any]] = defaultdict(dict)
    order: dict[tuple[str, int, int], int] = {}
    for r in records:
        key = (str(r.get("phase")), int(r.get("seed", 0)), int(r.get("user", -1)))
        groups[key][str(r.get("method"))] = episode_view(r, titles)
        position = r.get("index") if isinstance(r.get("index"), int) else 1 << 30
        order[key] = min(order.get(key, position), position)
    phase_rank = {"test": 0, "train": 1}
    keys = sorted(groups, key=lambda k: (phase_rank.get(k[0], 2), k[0], k[1], order[k], k[2]))
    index: dict[str, Any] = {"methods": list(methods), "phases": {}}
    blocks: list[str] = []
    for start in range(0, len(keys), BLOCK_GROUPS):
        chunk = keys[start : start + BLOCK_GROUPS]
        number = len(blocks)
        blocks.append(pack({f"{p}/{s}/{u}": groups[(p, s, u)] for p, s, u in chunk}))
        for phase, seed, user in chunk:
            scores = {m: e.get("r_traj") for m, e in groups[(phase, seed, user)].items()}
            row = [user, number, json_safe(scores)]
            index["phases"].setdefault(phase, {}).setdefault(str(seed), []).append(row)
    return index, blocks


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def learning_curves(
    records: Sequence[Mapping[str, Any]], results: Mapping[str, Any], train_batch: int
) -> dict[str, dict[str, Any]]:
    """Return {method: {"curve": [mean R_traj per training batch], "test": mean, "seeds": n}}.

    Computed from the train-phase episodes (per seed, grouped by their recorded batch, then the
    mean over seeds per batch); a method with no train episodes in the log falls back to
    `results.methods.{m}.learning.train_curve` when that is a list of numbers.
    """
    per: dict[str, dict[int, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r.get("phase") != "train" or r.get("status") != "ok" or r.get("r_traj") is None:
            continue
        batch = r.get("batch")
        if not isinstance(batch, int):
            batch = int(r.get("index", 0)) // max(train_batch, 1)
        seed = int(r.get("seed", 0))
        per[str(r["method"])][seed].setdefault(batch, []).append(float(r["r_traj"]))
    out: dict[str, dict[str, Any]] = {}
    methods = results.get("methods") or {}
    for name, entry in methods.items():
        test = ((entry or {}).get("r_traj") or {}).get("mean")
        if name in per:
            seeds = per[name]
            batches = sorted({b for s in seeds.values() for b in s})
            curve = [
                _mean([_mean(s[b]) for s in seeds.values() if b in s]) for b in batches
            ]  # a batch a seed lacks (interrupted run) averages over the seeds that have it
            out[name] = {"curve": curve, "test": test, "seeds": len(seeds), "source": "episodes"}
            continue
        saved = ((entry or {}).get("learning") or {}).get("train_curve")
        if isinstance(saved, list) and saved and all(isinstance(v, int | float) for v in saved):
            out[name] = {"curve": [float(v) for v in saved], "test": test, "source": "results"}
    return out
