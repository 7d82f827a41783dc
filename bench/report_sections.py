"""The sections of BENCHMARKS.md: each turns one part of results.json into markdown lines.

Every section names the command that reproduces it and says how to read its numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.ray_report import ray_lines

Fmt = Callable[..., str]
Images = dict[str, Path]


def _image(images: Images, name: str, alt: str) -> list[str]:
    return [f"![{alt}]({images[name].as_posix()})", ""] if name in images else []


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def graph_overhead(r: dict[str, Any], images: Images, fmt: Fmt) -> list[str]:
    """Per-step cost of everything but the LLM, per configuration, with LangGraph's own floor."""
    g = r.get("graph_overhead")
    if not g:
        return []
    lines = ["## 1. Graph overhead", "", "Command: `python -m bench.graph_overhead`.", ""]
    rows = [
        [name, fmt(c["ms_per_step"]), fmt(c.get("cpu_ms_per_step")), fmt(c["steps"]),
         fmt(c["episodes"]), fmt(c["llm_calls_per_step"], 1)]
        for name, c in g["configs"].items()
    ]  # fmt: skip
    head = ["grounding + embeddings", "wall ms / step", "CPU ms / step", "steps", "episodes"]
    lines += _table([*head, "LLM calls / step"], rows)
    floor = g.get("langgraph_floor") or {}
    lines += [
        f"BiLLP graph, `{g['llm']}` model (a zero-latency test double), {g['dataset']} dataset, "
        f"critic `{g['critic']}`, learning on, no checkpointer, torch on "
        f"{g['torch_threads']} thread. Headline: `{g['headline']}`. Everything but the LLM is "
        "in these numbers: prompts, LangChain's chat-model call, output validation, grounding, "
        "the simulator, memory reads and writes, embeddings.",
        "",
        f"LangGraph's own floor, the same graph shape and state with do-nothing nodes: "
        f"**{fmt(floor.get('ms_per_step'))} ms/step** (four node hops and a router per step). "
        "The target is our share: the headline minus this floor, at most 2.0 ms/step. Each "
        "figure is the median of 3 rounds (for the graph, each on a fresh memory warmed by 2 "
        "episodes), since this machine is shared.",
        "",
    ]
    prof = g.get("profile") or {}
    if prof:
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in prof["self_time_share"].items())
        lines += [f"Where the time goes ({prof['config']}, self time): {shares}.", ""]
        rows = [[f"`{t['function']}`", fmt(t["calls"]), f"{100 * t['share']:.0f}%"]
                for t in prof["top_cumulative"]]  # fmt: skip
        lines += _table(["our function", "calls", "cumulative share"], rows)
        lines += [f"({prof['note']}.)", ""]
    return lines


def simulator(r: dict[str, Any], images: Images, fmt: Fmt) -> list[str]:
    """Env cards, build/load time and steps per second per dataset."""
    env = r.get("env") or {}
    per = env.get("datasets") or {}
    if not per:
        return []
    lines = [
        "## 2. Simulator",
        "",
        "Command: `python -m bench.env_speed` (part of `make bench`).",
        "",
    ]
    rows = []
    for name, d in per.items():
        rows.append(
            [
                name,
                fmt(d.get("build_seconds"), 0),
                fmt(d.get("load_seconds"), 1),
                fmt(d.get("env_steps_per_s")),
                fmt(d.get("env_batched_steps_per_s_1thread")),
                fmt(d.get("env_batched_steps_per_s_2thread")),
            ]
        )
    head = ["dataset", "build (s)", "load cached (s)", "single env steps/s"]
    head += ["batched user-steps/s, 1 thread", "2 threads"]
    lines += _table(head, rows)
    lines += [
        f"Batch of {next(iter(per.values())).get('batch')} users, random actions, finished rows "
        "reset in place. Build time is the environment card's own timer from when it was built "
        "(fit of both user models, calibration, reference policies on every test user); "
        "`load cached` is this run's. Headline dataset: " + str(env.get("headline_dataset")) + ".",
        "",
        "Reference policies on all test users (max 50 steps; the oracle reads the ground truth and "
        "is a ceiling, not a baseline):",
        "",
    ]
    rows = []
    for name, d in per.items():
        for policy, p in (d.get("policies") or {}).items():
            rows.append(
                [name, policy, fmt(p.get("len")), fmt(p.get("r_each")), fmt(p.get("r_traj"))]
            )
    lines += _table(["dataset", "policy", "Len", "R_each", "R_traj"], rows)
    lines += _card_rows(per, fmt)
    note = (
        "Item distance is measured between unit-length item vectors (cosine). On raw MF vectors, "
        'whose norms grow with popularity, popular items were never "too similar" and a '
        "popularity list scored R_traj 237 on Steam, close to the oracle; with cosine distance "
        "the most popular items are close to each other and popularity quits at step 2."
    )
    return [*lines, note, ""]


def _card_rows(per: dict[str, Any], fmt: Fmt) -> list[str]:
    """Return the env cards' proof that the simulator tests planning (issue: env cards)."""
    rows = []
    for name, d in per.items():
        card = d.get("card") or {}
        gap = card.get("planning_gap") or {}
        myopic, oracle = gap.get("myopic") or {}, gap.get("oracle") or {}
        rows.append(
            [
                name,
                str(card.get("logged_items")),
                f"{fmt(myopic.get('len'))} / {fmt(myopic.get('r_traj'))}",
                f"{fmt(oracle.get('len'))} / {fmt(oracle.get('r_traj'))}",
                f"{fmt(card.get('auc'), 3)} / {fmt(card.get('popularity_auc'), 3)}",
                str(card.get("verdict")),
            ]
        )
    if not any(r[1] != "None" for r in rows):
        return []
    head = ["dataset", "logged items", "myopic Len / R_traj", "oracle Len / R_traj"]
    head += ["AUC model / popularity", "verdict"]
    note = (
        "Does the env reward planning? The myopic policy recommends the truth's best item each "
        "step, ignoring the similarity rule; the oracle plans. AUC: leave-last-out against 100 "
        "random negatives, the user model and popularity scored the same way."
    )
    return [note, "", *_table(head, rows)]


def concurrency(r: dict[str, Any], images: Images, fmt: Fmt) -> list[str]:
    """Episodes against a slow OpenAI-compatible server: speedup per level of concurrency."""
    speed = r.get("concurrency_speedup") or {}
    if not speed:
        return []
    c = r.get("concurrency") or {}
    lines = ["## 4. Concurrency", "", "Command: `python -m bench.concurrency`.", ""]
    head = ["K", "speedup", "wall (s)", "requests", "mean in flight", "client CPU ms / request"]
    rows = []
    for k, value in speed.items():
        d = (c.get("per_k") or {}).get(k) or {}
        rows.append([k, f"{fmt(value, 2)}×", fmt(d.get("wall_s"), 1), fmt(d.get("requests")),
                     fmt(d.get("mean_in_flight"), 1), fmt(d.get("client_cpu_ms_per_request"), 1),
                     fmt(d.get("failed"))])  # fmt: skip
    lines += _table([*head, "failed"], rows)
    if c:
        lines += [
            f"{fmt(c.get('episodes'))} `{c.get('method')}` episodes (max {c.get('max_steps')} "
            f"steps, frozen test phase, LLM cache off) per K through `billp run`'s own runner, "
            f"against the local OpenAI-compatible test server (`nodes/llm/fake_server.py`, "
            f"{c.get('latency_ms')} ms per request, run as a {c.get('server')}). Speedup = wall "
            "at K=1 / wall at K. Every K gave the same episodes as K=1: "
            f"{'yes' if c.get('results_match') else 'NO'}. When client CPU per request × "
            "requests reaches the wall time, the client (2 cores, one event loop) is the limit, "
            "not the server.",
            "",
        ]
        lines += ray_lines(c.get("ray"), fmt)  # the same episodes through Ray actors
    return lines + _image(images, "concurrency", "speedup against concurrency")


def prompt_cost(r: dict[str, Any], images: Images, fmt: Fmt) -> list[str]:
    """Prompt tokens per step: ours vs the reference layout on the same trajectories."""
    p = r.get("prompt_cost")
    if not p:
        return []
    ours, ref = p["ours"], p["reference"]
    lines = [
        "## 5. Prompt cost vs the reference design",
        "",
        "Command: `python -m bench.prompt_cost`.",
        "",
    ]
    rows = [
        [
            "prompt tokens / step",
            fmt(ours["prompt_tokens_per_step"], 1),
            fmt(ref["prompt_tokens_per_step"], 1),
        ],
        ["calls / step", fmt(ours["calls_per_step"]), fmt(ref["calls_per_step"])],
        [
            "prompt tokens / call",
            fmt(ours["prompt_tokens_per_call"], 1),
            fmt(ref["prompt_tokens_per_call"], 1),
        ],
        ["R_traj (same trajectories)", fmt(p["r_traj"]["ours"]), fmt(p["r_traj"]["reference"])],
    ]
    lines += _table(["", "ours", "reference layout"], rows)
    lines += [
        f"Ratio ours / reference: **{fmt(r.get('prompt_tokens_ratio_vs_reference'), 3)}** "
        f"({p['episodes']} episodes, {fmt(p['steps'])} steps on {', '.join(p['datasets'])}, "
        f"mean {fmt(p['mean_episode_steps'], 1)} steps per episode; answers: {p['llm']}).",
        f"Tokenizer: {p['tokenizer']}. Reference layout read from {p['reference_layout']}; "
        f"{p['fewshot_reconstruction']}.",
        f"Caveats: {p['caveats']}",
        "",
    ]
    lines += _image(images, "prompt_cost", "prompt tokens per step")
    rows = [
        [
            str(c["step"]),
            str(c["episodes"]),
            fmt(c["ours"], 0),
            fmt(c["reference"], 0),
            fmt(c["ratio"], 3),
        ]
        for c in p.get("per_step_index", [])
    ]
    return lines + _table(["step", "episodes", "ours", "reference", "ratio"], rows)


def local_model(r: dict[str, Any], images: Images, fmt: Fmt) -> list[str]:
    """Seconds per call and per step of the embedded model; peak RSS of a 100-user run."""
    lm, rss = r.get("local_model") or {}, r.get("peak_rss") or {}
    if not lm and not rss:
        return []
    lines = ["## 6. Local model cost and memory", ""]
    if lm:
        lines += [
            "Command: `python -m bench.quality` (its LLM rows are the sample).",
            "",
            *_table(
                [
                    "model",
                    "calls",
                    "s / call",
                    "s / step",
                    "prompt tok / call",
                    "completion tok / call",
                ],
                [
                    [
                        lm.get("model", "?"),
                        fmt(lm.get("calls")),
                        fmt(lm.get("seconds_per_call")),
                        fmt(lm.get("seconds_per_step")),
                        fmt(lm["prompt_tokens"] / lm["calls"], 0) if lm.get("calls") else "–",
                        fmt(lm["completion_tokens"] / lm["calls"], 1) if lm.get("calls") else "–",
                    ]
                ],
            ),
            "Seconds per call are the time spent waiting for the model (concurrency 1); seconds "
            "per step divide whole episode time (graph, simulator, memories included) by steps.",
            "",
        ]
    if rss:
        lines += [
            "Command: `python -m bench.rss`.",
            "",
            *_table(
                [
                    "dataset",
                    "users (train + test)",
                    "episodes",
                    "after imports",
                    "model loaded",
                    "peak RSS",
                    "wall (s)",
                ],
                [
                    [
                        str(rss.get("dataset")),
                        f"{rss.get('train_users')} + {rss.get('test_users')}",
                        fmt(rss.get("episodes")),
                        f"{fmt(rss.get('after_imports_mb'), 0)} MB",
                        f"{fmt(rss.get('after_model_mb'), 0)} MB",
                        f"**{fmt(rss.get('peak_mb'), 0)} MB**",
                        fmt(rss.get("seconds"), 0),
                    ]
                ],
            ),
            f"Answers: {rss.get('answers')}; embeddings {rss.get('embeddings')}.",
            "",
        ]
    return lines


def quality(r: dict[str, Any], images: Images, fmt: Fmt) -> list[str]:
    """Every method on the same test users, % of oracle, with each row's budget and backend."""
    data, details = r.get("quality") or {}, r.get("quality_details") or {}
    if not data:
        return []
    budgets = details.get("budgets", {})
    lines = ["## 7. Quality", "", "Command: `python -m bench.quality`.", ""]
    for name, b in budgets.items():
        lines.append(
            f"- budget `{name}`: {b['test_users']} test users × seeds {b['seeds']}, "
            f"{b['train_users']} training users, max {b['max_steps']} steps"
        )
    lines += ["", str(details.get("note", "")), ""]
    if details.get("llm_note"):
        lines += [str(details["llm_note"]), ""]
    lines += _image(images, "quality", "% of oracle per method")
    paper = details.get("paper", {})
    head = [
        "method",
        "budget",
        "Len",
        "R_each",
        "R_traj ± 95% CI",
        "% oracle",
        "oracle",
        "LLM calls/ep",
        "s/ep",
        "grounding replaced",
        "paper R_traj",
    ]
    for dataset, rows in data.items():
        table = []
        for method, q in rows.items():
            ci = f" ± {fmt(q['ci95'])}" if q.get("ci95") is not None else ""
            ref = paper.get(dataset, {}).get(method)
            ref_r = ref.get("r_traj") if isinstance(ref, dict) else ref
            b = q["budget"]
            table.append(
                [
                    method,
                    f"{b['test_users']}u×{len(b['seeds'])}s, ≤{b['max_steps']}",
                    fmt(q["len"]),
                    fmt(q["r_each"]),
                    f"{fmt(q['r_traj'])}{ci}",
                    fmt(q["pct_oracle"], 1),
                    fmt(q.get("oracle_r_traj"), 1),
                    fmt(q["llm_calls_per_episode"], 1),
                    fmt(q["seconds_per_episode"], 1),
                    fmt(q["grounding_replacement_rate"]),
                    fmt(ref_r),
                ]
            )
        lines += [f"### {dataset}", "", f"Backends: {_backends(rows)}.", ""]
        lines += _table(head, table)
        lines += _learning_audit(rows, fmt)
    lines += [
        "CI: Student-t 95% half-width over seeds (over episodes when there is one seed). "
        "% oracle: mean R_traj over the oracle's on the same users, seeds and step limit "
        "(column `oracle`), so the LLM rows' short episodes are compared with a short oracle. "
        "Paper R_traj: GPT-3.5 on the reference's own matrices, for orientation only.",
        "",
    ]
    return lines


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f}%"


def _learning_audit(rows: dict[str, Any], fmt: Fmt) -> list[str]:
    """Return the learning methods' audit: did each memory fire, was it right, did it matter."""
    audited = {m: q for m, q in rows.items() if q.get("learning")}
    if not audited:
        return []
    head = [
        "method", "actor hint", "critic hint", "reflections/ep", "precision + (n)",
        "precision - (n)", "differs from reflexion", "train R_traj per batch", "fallback rate",
    ]  # fmt: skip
    table = []
    for method, q in audited.items():
        a, p = q["learning"], q["learning"]["hint_precision"]
        table.append(
            [
                method,
                _pct(a.get("actor_hint_rate")),
                _pct(a.get("critic_hint_rate")),
                fmt(a.get("reflections_per_episode")),
                f"{_pct(p['plus'])} ({p['n_plus']})",
                f"{_pct(p['minus'])} ({p['n_minus']})",
                _pct(a.get("differs_from", {}).get("reflexion")),
                ", ".join(fmt(v, 1) for v in a.get("train_curve", [])) or "–",
                _pct(q.get("fallback_rate")),
            ]
        )
    note = (
        "Learning audit (test episodes): hint rates are shares of test steps whose prompt "
        "carried the hint; precision is the share of hinted items the test env's ground truth "
        "would accept at that step; differs = share of the same (user, seed) episodes whose "
        "items differ from Reflexion's."
    )
    return [note, "", *_table(head, table)]


def _backends(rows: dict[str, Any]) -> str:
    seen: dict[str, list[str]] = {}
    for method, q in rows.items():
        seen.setdefault(q.get("backend") or "none", []).append(method)
    return "; ".join(f"{b} ({', '.join(ms)})" for b, ms in seen.items())


def memory_search(r: dict[str, Any], images: Images, fmt: Fmt) -> list[str]:
    """Single-query search latency and recall per memory size."""
    p50, p99 = r.get("memory_search_p50_ms") or {}, r.get("memory_search_p99_ms") or {}
    if not p50:
        return []
    m = r.get("memory_search") or {}
    lines = ["## 3. Memory search", "", "Command: `python -m bench.memory_search`.", ""]
    rows = []
    for size in p50:
        d = (m.get("sizes") or {}).get(size) or {}
        rows.append(
            [
                f"{int(size):,}",
                d.get("index_kind", "not run"),
                fmt(p50[size], 3),
                fmt(p99.get(size), 2),
                fmt(d.get("exact_p50_ms"), 2),
                fmt(d.get("recall_at_1"), 3),
                fmt(d.get("recall_at_2"), 3),
                fmt(d.get("recall_at_10"), 3),
                fmt(d.get("build_s"), 1),
            ]
        )
    head = ["entries", "index", "p50 ms", "p99 ms", "exact p50 ms", "recall@1", "recall@2"]
    lines += _table([*head, "recall@10", "build s (cumulative)"], rows)
    if m:
        lines += [
            f"VectorMemory searches exactly (IndexFlatIP) below "
            f"{fmt(m['threshold_approx_min_entries'])} entries and switches to IVF-Flat above "
            f"(nprobe {m['nprobe']}; lists = largest power of two ≤ 2√n, retrained when that "
            f"doubles). Recall@k is against exact search on the same vectors. k = {m['k']} (what "
            f"the memories ask for). {m['note']}.",
            f"Data: {m['data']}.",
            "",
        ]
    return lines + _image(images, "memory", "memory search latency")


ALL = [graph_overhead, simulator, memory_search, concurrency, prompt_cost, local_model, quality]
