"""Render a run directory's episode records as results.json, results.csv, results.md and plots.

Everything is recomputed from `episodes.jsonl` and `config.json`, so `billp report --run DIR`
redraws a table at any time (also of a run still in progress, or one that was interrupted).
Only test-phase episodes enter the metrics; results.csv lists every episode with its phase.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from eval.audit import learning_block
from eval.fallbacks import HEADER as FALLBACK_HEADER
from eval.fallbacks import cells as fallback_cells
from eval.fallbacks import degradation, degraded_lines
from eval.log import EPISODES_FILE, EpisodeLog
from eval.metrics import QUIT_REASONS, cumulative_rewards, oracle_mean, summarize_method
from eval.protocol import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    LEARNING_METHODS,
    LLM_METHODS,
    TIMINGS_FILE,
    RunConfig,
)
from storage.files import atomic_write_bytes

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
PLOTS = ("r_traj.png", "cumulative_reward.png", "quit_reasons.png")
CSV_COLUMNS = (
    "method", "seed", "phase", "learning", "index", "user", "status", "len", "r_traj", "r_each",
    "quit_reason", "n_steps", "llm_calls", "prompt_tokens", "completion_tokens", "seconds",
    "replaced", "fallbacks", "cache_hits", "attempts", "error",
)  # fmt: skip
TEST_DOUBLE = (
    "`scripted`: a deterministic **test double** that follows prompts by fixed rules; "
    "its numbers are never an LLM's results"
)


def method_kind(method: str) -> str:
    """Return what a method is, for tables: llm, or the baselines' kinds (ceiling, rl, ...)."""
    if method in LLM_METHODS:
        return "llm"
    from eval.baselines import METHOD_KINDS

    return METHOD_KINDS.get(method, "policy")


def backend_text(config: RunConfig) -> str:
    """Describe the LLM backend honestly (the scripted model is not an LLM)."""
    if not any(m in LLM_METHODS for m in config.methods):
        return "none (no LLM method in this run)"
    if config.llm.partition("?")[0].partition(":")[0] == "scripted":
        return TEST_DOUBLE
    if config.llm.startswith("local"):
        return f"`{config.llm}`: the embedded local model (llama.cpp)"
    return f"`{config.llm}`"


def summarize(config: RunConfig, records: list[dict[str, Any]], timings: dict) -> dict[str, Any]:
    """Return the results.json object of a run."""
    test = [r for r in records if r["phase"] == "test"]
    oracle_r = oracle_mean([r for r in test if r["method"] == "oracle"])
    llm_methods = [m for m in config.methods if m in LLM_METHODS]
    methods = {}
    for method in config.methods:
        entry = summarize_method([r for r in test if r["method"] == method], oracle_r)
        entry["kind"] = method_kind(method)
        entry["train_episodes"] = sum(
            1 for r in records if r["method"] == method and r["phase"] == "train"
        )
        entry["wall_seconds"] = timings.get(method)
        mine = [r for r in records if r["method"] == method]
        train = [r for r in mine if r["phase"] == "train"]
        entry.update(degradation([r for r in mine if r["phase"] == "test"], train))
        if method in LEARNING_METHODS:
            entry["learning"] = learning_block(method, records, llm_methods, config.to_dict())
        methods[method] = entry
    return {
        "config": config.to_dict(),
        "methods": methods,
        "reference": {"oracle_r_traj": oracle_r},
        "backend": backend_text(config),
    }


def ordered(results: dict[str, Any]) -> list[str]:
    """Return method names by decreasing mean R_traj (methods with no result last)."""
    methods = results["methods"]
    return sorted(methods, key=lambda m: -(methods[m]["r_traj"]["mean"] or -math.inf))


def fmt(stat: dict[str, Any], digits: int = 2) -> str:
    """Format {mean, ci95} as 'mean ± ci'."""
    if stat["mean"] is None:
        return "–"
    if stat.get("ci95") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """Return the rows of the results table (header first), shared by markdown and the CLI."""
    header = ["method", "kind", "Len", "R_each", "R_traj", "% oracle", "episodes"]
    header += [
        "LLM calls/ep",
        "tokens/ep",
        "s/ep",
        "replaced",
        *FALLBACK_HEADER,
        "failed",
        "actor hint",
        "critic hint",
    ]
    rows = [header]
    for name in ordered(results):
        m = results["methods"][name]
        tokens = None
        if m["prompt_tokens_per_episode"] is not None:
            tokens = m["prompt_tokens_per_episode"] + m["completion_tokens_per_episode"]
        replaced = m.get("grounding_replacement_rate")
        llm = m["kind"] == "llm"
        rows.append(
            [
                name,
                m["kind"],
                fmt(m["len"]),
                fmt(m["r_each"], 3),
                fmt(m["r_traj"]),
                _num(m["pct_oracle"]),
                str(m["episodes"]),
                _num(m["llm_calls_per_episode"]) if llm else "–",
                _num(tokens, 0) if llm else "–",
                _num(m["seconds_per_episode"], 3),
                f"{100 * replaced:.0f}%" if llm and replaced is not None else "–",
                *fallback_cells(m),
                str(m["failed_episodes"]),
                *_hint_cells(m.get("learning")),
            ]
        )
    return rows


def _hint_cells(learning: dict[str, Any] | None) -> list[str]:
    """Return the actor and critic hint rates of a learning method ('–' for the others)."""
    if not learning:
        return ["–", "–"]
    return [_pct(learning.get("actor_hint_rate")), _pct(learning.get("critic_hint_rate"))]


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f}%"


def learning_lines(results: dict[str, Any]) -> list[str]:
    """Return results.md's audit of the learning methods: rule, fire rates, precision, diffs."""
    rows = [(n, m["learning"]) for n, m in results["methods"].items() if m.get("learning")]
    if not rows:
        return []
    lines = [
        "## Learning audit (test episodes)",
        "",
        "Hint precision: share of hinted items the test env's ground truth would accept at that "
        "step, for items labelled + and -. Differs: share of shared (user, seed) episodes whose "
        "items differ from the other method's.",
        "",
        "| method | rule | actor hint | critic hint | reflections/ep | precision + (n) "
        "| precision - (n) | differs from |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in rows:
        rule = a["rule"]
        rule_text = rule["kind"]
        if rule["kind"] == "derived":
            rule_text += f" q={rule['actor_quantile']:g}/{rule['critic_quantile']:g}"
            if a.get("actor_radius") is not None:
                rule_text += f", r={a['actor_radius']:.3f}"
        p = a["hint_precision"]
        diffs = ", ".join(f"{m} {_pct(v)}" for m, v in a["differs_from"].items()) or "–"
        refl = a.get("reflections_per_episode")
        lines.append(
            f"| {name} | {rule_text} | {_pct(a['actor_hint_rate'])} "
            f"| {_pct(a['critic_hint_rate'])} | {_num(refl, 2)} "
            f"| {_pct(p['plus'])} ({p['n_plus']}) | {_pct(p['minus'])} ({p['n_minus']}) "
            f"| {diffs} |"
        )
    lines.append("")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """Return results.md: the setting stated above the table."""
    c = results["config"]
    seeds = ", ".join(str(s) for s in c["seeds"])
    ci = "95% CI over seeds (Student t)" if len(c["seeds"]) > 1 else "95% CI over episodes"
    learning = "frozen (read-only)" if c["learning"] == "frozen" else "continual (still learning)"
    lines = [
        f"# Results: {c['dataset']}",
        "",
        f"- LLM backend: {results['backend']}; temperature {c['temperature']:g}",
        f"- embeddings `{c['embeddings']}`, grounding `{c['grounding']}`, critic `{c['critic']}`",
        f"- budget: {c['train_users']} training users (learning methods, batches of "
        f"{c['train_batch']}), {c['test_users']} test users per seed, seeds {seeds}, "
        f"at most {c['max_steps']} steps per episode",
        f"- test-phase memories: {learning}",
        f"- logged items: `{(results.get('environment') or {}).get('logged_items') or 'unknown'}`"
        " (exclude: no user is ever recommended an item from their own logged history)",
        f"- mean ± {ci}; % oracle = mean R_traj / the oracle's (a ceiling that reads the truth) "
        "on the same users",
        "",
    ]
    for line in degraded_lines(results):  # above the table: these rows are not the model's
        lines += [f"**degraded**: {line}", ""]
    rows = table_rows(results)
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "|".join("---" for _ in rows[0]) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines.append("")
    lines += learning_lines(results)
    return "\n".join(lines)


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    """Write one row per episode (every phase), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    key = ("method", "seed", "phase", "index")
    for record in sorted(records, key=lambda r: tuple(str(r.get(k, "")).zfill(8) for k in key)):
        writer.writerow({k: record.get(k) for k in CSV_COLUMNS})
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot(results: dict[str, Any], records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Draw R_traj with CI bars, mean cumulative reward per step, and quit reasons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ordered(results)
    methods = results["methods"]
    paths = [out / p for p in PLOTS]

    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    means = [methods[n]["r_traj"]["mean"] or 0.0 for n in names]
    errors = [methods[n]["r_traj"]["ci95"] or 0.0 for n in names]
    ax.bar(names, means, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("R_traj (mean ± 95% CI)")
    ax.set_title(f"Cumulative reward per episode: {results['config']['dataset']}")
    ax.tick_params(axis="x", rotation=30)
    _save(fig, paths[0])
    plt.close(fig)

    horizon = int(results["config"]["max_steps"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        episodes = [r for r in records if r["method"] == name and r["phase"] == "test"]
        curve = cumulative_rewards(episodes, horizon)
        if curve:
            ax.plot(range(1, horizon + 1), curve, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("mean cumulative reward")
    ax.legend(fontsize=8)
    _save(fig, paths[1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.5))
    left = [0.0] * len(names)
    for reason in QUIT_REASONS:
        shares = []
        for name in names:
            counts = methods[name]["quit_reasons"]
            total = sum(counts.values()) or 1
            shares.append(counts.get(reason, 0) / total)
        ax.barh(names, shares, left=left, label=reason)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlabel("share of test episodes")
    ax.set_title("Why sessions ended")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, paths[2])
    plt.close(fig)
    return paths


def render(run_dir: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """Recompute every output of a run directory; return the results and the files written."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    config = RunConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text()))
    records = EpisodeLog(run_dir).records() if (run_dir / EPISODES_FILE).is_file() else []
    timings_file = run_dir / TIMINGS_FILE
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    results = summarize(config, records, timings)
    env_file = run_dir / ENVIRONMENT_FILE  # which built env, and its logged_items setting
    results["environment"] = json.loads(env_file.read_text()) if env_file.is_file() else None
    # Not sorted: methods stay in the order they were asked for.
    text = json.dumps(results, indent=2, allow_nan=False)
    atomic_write_bytes(run_dir / RESULTS_JSON, text.encode("utf-8"))
    write_csv(run_dir / RESULTS_CSV, records)
    atomic_write_bytes(run_dir / RESULTS_MD, markdown(results).encode("utf-8"))
    written = [run_dir / RESULTS_JSON, run_dir / RESULTS_CSV, run_dir / RESULTS_MD]
    written += plot(results, records, run_dir)
    return results, written
