"""Export a run's steps as training data (SFT / DPO): one JSON line per recommendation.

Each line holds what the agents were shown — the user's history titles, the episode so far (title,
rating, accepted), the reflections retrieved for the episode and the actor-memory hint — and
what happened: the planner's thought, the actor's raw answer, the item it was grounded to (and
how), the reward, the critic's value and the advantage. Records come from `episodes.jsonl`, so an
export never re-runs anything; non-LLM methods export their items and rewards with no thought.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from eval.log import EPISODES_FILE, EpisodeLog
from storage.files import atomic_write_bytes

FORMATS = ("jsonl",)
EXPORT_FILE = "steps_export.jsonl"
STEP_FIELDS = (
    "thought", "action", "item", "title", "match", "replaced", "rating", "reward", "accepted",
    "quit_reason", "value", "advantage",
)  # fmt: skip


def step_records(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield the export lines of one episode record."""
    so_far: list[dict[str, Any]] = []
    for step in record.get("steps", []):
        yield {
            "method": record["method"],
            "seed": record["seed"],
            "phase": record["phase"],
            "learning": record.get("learning"),
            "user": record["user"],
            "episode_index": record.get("index"),
            "step": step.get("step", len(so_far) + 1),
            "context": {
                "history": list(record.get("history_titles") or []),
                "episode": [dict(s) for s in so_far],
                "reflections": list(record.get("reflections") or []),
                "hint": step.get("hint"),
            },
            **{k: step.get(k) for k in STEP_FIELDS},
        }
        so_far.append(
            {"title": step.get("title"), "rating": step.get("rating"), "accepted": step["accepted"]}
        )


def export_steps(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    fmt: str = "jsonl",
    methods: Sequence[str] | None = None,
    phases: Sequence[str] = ("train", "test"),
) -> tuple[Path, int]:
    """Write the steps of finished episodes to `out` (default: RUN/steps_export.jsonl).

    Returns the file and the number of lines written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if not (run_dir / EPISODES_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has no {EPISODES_FILE}: nothing to export")
    target = Path(out) if out else run_dir / EXPORT_FILE
    lines = []
    for record in EpisodeLog(run_dir).records():
        if record.get("status") != "ok" or record["phase"] not in phases:
            continue
        if methods and record["method"] not in methods:
            continue
        lines += [json.dumps(s, ensure_ascii=False) for s in step_records(record)]
    atomic_write_bytes(target, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    return target, len(lines)


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """Read an export back (one dict per step)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
