"""The RL learning-curve plot and BENCHMARKS.md section, from results.json's `rl_curves`.

Kept apart from bench.rl_curves so rendering the report imports no torch or SB3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.report_plots import _pyplot, _save
from bench.report_sections import Fmt, Images, _image, _table

REFERENCE_STYLE = {  # name -> (label, colour, line style)
    "oracle": ("oracle (ceiling)", "black", "--"),
    "itemcf": ("item-CF", "tab:red", "--"),
    "top_candidate": ("top candidate (no RL)", "tab:grey", ":"),
    "random": ("random", "tab:olive", "-."),
}


def plot(r: dict[str, Any], out: Path) -> Path | None:
    """Test-env R_traj against env steps per algorithm, one panel per dataset."""
    data = r.get("rl_curves") or {}
    if not data:
        return None
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 3.8), squeeze=False)
    for ax, (dataset, entry) in zip(axes[0], data.items(), strict=True):
        for algo, a in entry["algos"].items():
            curve = [p for p in a["curve"] if p["steps"] > 0]
            ax.plot([p["steps"] for p in curve], [p["test"] for p in curve], "o-", ms=3, label=algo)
        for name, value in entry["reference"].items():
            label, colour, style = REFERENCE_STYLE.get(name, (name, "grey", ":"))
            ax.axhline(value, color=colour, ls=style, lw=1, label=label)
        ax.set(xscale="log", xlabel="env steps (training)", ylabel="test R_traj (100 users)")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels overlap
        ax.set_title(dataset)
        ax.legend(fontsize=7)
    return _save(fig, out / "rl_curves.png")


def section(r: dict[str, Any], images: Images, fmt: Fmt) -> list[str]:
    """Learning curves of the RL baselines, their converged budgets and training speed."""
    data, details = r.get("rl_curves") or {}, r.get("rl_curves_details") or {}
    if not data:
        return []
    lines = ["## 8. RL learning curves", "", "Command: `python -m bench.rl_curves`.", ""]
    lines += [
        f"Seed {details.get('seed')}; test R_traj of the greedy policy on the first "
        f"{details.get('curve_users')} test users; budgets {details.get('budgets')}; "
        f"`--rl-steps` default {fmt(details.get('default_rl_steps'))}. {details.get('note', '')} "
        "Converged at: the first point from which test R_traj stays within 2% of the plateau "
        "(mean of the last 3 points); – when it never settles.",
        "",
    ]
    lines += _image(images, "rl_curves", "test R_traj against training env steps")
    head = ["dataset", "algo", "steps", "train s", "steps/s", "converged at", "final", "best"]
    rows = []
    for dataset, entry in data.items():
        for algo, a in entry["algos"].items():
            rows.append(
                [dataset, algo, fmt(a["steps"]), fmt(a["train_seconds"], 1),
                 fmt(a["steps_per_second"], 0), fmt(a["converged_steps"]), fmt(a["final_test"]),
                 fmt(a["best_test"])]
            )  # fmt: skip
    refs = [
        f"- {dataset}: "
        + ", ".join(
            f"{REFERENCE_STYLE.get(k, (k,))[0]} {fmt(v)}" for k, v in entry["reference"].items()
        )
        for dataset, entry in data.items()
    ]
    lines += [*_table(head, rows), "Reference lines, same users:", *refs, ""]
    lines += [
        "How to read it: the agents choose among candidates ranked by the training model, so "
        "`top candidate` (always the first) is what that ranking gives on its own. A curve that "
        "levels off on that line has learned to take the best-ranked safe candidate; above it, "
        "RL adds to the ranking; item-CF and the oracle are the baseline and the ceiling.",
        "",
    ]
    return lines + _beside_item_cf(r, fmt)


def _beside_item_cf(r: dict[str, Any], fmt: Fmt) -> list[str]:
    """The quality run's RL rows beside item-CF and the oracle, with their training cost."""
    quality = r.get("quality") or {}
    rows = []
    for dataset, methods in quality.items():
        for name in ("itemcf", "oracle", "a2c", "ppo", "dqn"):
            q = methods.get(name)
            if q is None:
                continue
            runs = q.get("training") or []
            seconds = sum(t.get("seconds") or 0 for t in runs) if runs else None
            steps = {t.get("steps") for t in runs}
            rate = [t["steps_per_second"] for t in runs if t.get("steps_per_second")]
            rows.append(
                [dataset, name, f"{fmt(q['r_traj'])} ± {fmt(q.get('ci95'))}",
                 fmt(q.get("pct_oracle"), 1), fmt(q.get("len")),
                 ", ".join(fmt(x) for x in sorted(steps) if x) or "–",
                 fmt(seconds, 0), fmt(sum(rate) / len(rate) if rate else None, 0)]
            )  # fmt: skip
    if not rows:
        return []
    head = ["dataset", "method", "R_traj ± 95% CI", "% oracle", "Len", "train steps",
            "train s (all seeds)", "steps/s"]  # fmt: skip
    note = (
        "The quality run (section 7: 100 test users × 3 seeds): RL rows at the default "
        "`--rl-steps`; training time is apart from the evaluation (policies trained once, "
        "cached as safetensors + JSON under bench/out/policies/ and reused)."
    )
    return [note, "", *_table(head, rows)]


def rl_training(policies: Path) -> dict[str, list[dict[str, Any]]]:
    """Return each RL method's training stats per seed, read from a run's saved policies.

    The stats are those of the run that trained each policy (a reused policy keeps them), so
    training time is reported apart from the evaluation's wall time.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for config in sorted(policies.glob("*-seed*/config.json")) if policies.is_dir() else []:
        try:
            meta = json.loads(config.read_text())
            conf, stats = meta["identity"]["config"], meta["stats"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.setdefault(conf["algo"], []).append(
            {
                "seed": conf["seed"],
                "steps": stats.get("steps"),
                "seconds": stats.get("seconds"),
                "steps_per_second": stats.get("steps_per_second"),
            }
        )
    return out
