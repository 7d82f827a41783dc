"""Time the HTML run report: written, then opened in real Chromium, for 10,000 synthetic episodes.

The records are generated (seeded), not played: a run this size would take hours with any LLM,
and what is measured here is the report, not the agent. They have the shape `eval.runner` writes
(shortlist grounding, so every step carries 10 candidates; plans, hints, critic values,
reflections), two seeds, four methods, and saved memories with thousands of entries, so the page
holds the most per-step detail a run of this size can.

Measured: seconds to render results (tables, plots) and to write report.html, its size, and in
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): the time from navigation
start to the `load` event and to the first trajectory shown (the page opens on the first test
user, which inflates its compressed block), and the time to show the next user. Median of
`LOADS` fresh page loads.

python -m bench.html_report [--quick] [--out FILE]
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, main

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LOADS = 5
WORDS = (
    "crimson", "harbor", "silent", "forest", "iron", "tide", "echo", "lantern", "hollow",
    "summit", "ember", "drift", "quiet", "storm", "glass", "orchard", "velvet", "river",
    "copper", "dawn", "shadow", "garden", "north", "falcon",
)  # fmt: skip
METHODS = ("random", "react", "reflexion", "billp")
LEARNING = ("reflexion", "billp")


@contextmanager
def chromium(viewport: tuple[int, int] = (1600, 1000)) -> Iterator[Any]:
    """Yield a Playwright page in headless Debian Chromium with a fresh profile (no downloads)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="billp-chromium-") as prof:
        context = pw.chromium.launch_persistent_context(
            prof,
            executable_path=CHROMIUM,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _steps(rng: random.Random, method: str, titles: list[str], max_steps: int) -> list[dict]:
    length = min(max_steps, 1 + int(rng.expovariate(1 / 7)))
    llm = method != "random"
    steps, value = [], 0.0
    for t in range(1, length + 1):
        item = rng.randrange(len(titles))
        rating = float(rng.choice((1, 2, 3, 4, 4, 5, 5)))
        last = t == length
        reason = None
        if last:
            reason = "max_steps" if t == max_steps else rng.choice(("low_rating", "similar"))
        step: dict[str, Any] = {
            "step": t, "item": item, "title": titles[item], "rating": rating,
            "reward": rating if not last or reason == "max_steps" else 0.0,
            "accepted": not last or reason == "max_steps", "quit_reason": reason,
            "min_distance": round(rng.random(), 4),
        }  # fmt: skip
        if llm:
            candidates = rng.sample(range(len(titles)), 10)
            hint = {str(i): rng.choice((1, -1)) for i in rng.sample(range(len(titles)), 3)}
            new_value = round(rng.uniform(-5, 5), 2)
            step.update(
                thought=f"Next, {_text(rng, 14)}.", action=str(rng.randrange(1, 11)),
                match="shortlist", replaced=False, candidates=candidates,
                actor_hint=hint if method == "billp" else None,
                hint={titles[int(k)]: v for k, v in hint.items()} if method == "billp" else None,
                actor_hint_sq_l2=round(rng.uniform(0, 0.5), 3) if method == "billp" else None,
                value=new_value, advantage=round(step["reward"] + 0.5 * new_value - value, 2),
                critic_hint=new_value if method == "billp" and rng.random() < 0.3 else None,
                fallbacks=["actor"] if rng.random() < 0.05 else [],
                usage={r: {"calls": 1, "prompt_tokens": 400} for r in ("planner", "actor")},
            )  # fmt: skip
            value = new_value
        steps.append(step)
    return steps


def synthetic_run(out: Path, test_users: int, train_users: int, seed: int = 0) -> int:
    """Write a run folder (config, episodes, memories) of generated records; return episodes."""
    from eval.log import EPISODES_FILE
    from eval.metrics import episode_metrics
    from eval.protocol import CONFIG_FILE, RunConfig
    from memory.vector import VectorMemory
    from storage.files import atomic_write_json

    rng = random.Random(seed)
    titles = [f"The {_text(rng, 2).title()} {i}" for i in range(2000)]
    seeds = [0, 1]
    config = RunConfig(
        methods=list(METHODS), dataset="synthetic", llm="scripted", embeddings="hashing",
        train_users=train_users, test_users=test_users, seeds=seeds, max_steps=20,
        grounding="shortlist",
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, config.to_dict())
    lines = []
    for s in seeds:
        phases = [("train", train_users, LEARNING), ("test", test_users, METHODS)]
        for phase, n, methods in phases:
            users = rng.sample(range(100_000), n)
            for method in methods:
                for index, user in enumerate(users):
                    steps = _steps(rng, method, titles, config.max_steps)
                    history = rng.sample(range(len(titles)), 10)
                    record = {
                        "method": method, "seed": s, "phase": phase, "user": user,
                        "index": index, "batch": index // config.train_batch,
                        "learning": "train" if phase == "train" else "frozen", "status": "ok",
                        "error": None, **episode_metrics(steps), "llm_calls": 3 * len(steps),
                        "prompt_tokens": 1200 * len(steps), "completion_tokens": 60 * len(steps),
                        "seconds": 1.0, "replaced": 0, "fallbacks": 0, "cache_hits": 0,
                        "history": history, "history_titles": [titles[i] for i in history],
                        "reflections": [_text(rng, 30) for _ in range(2)]
                        if method in LEARNING else [],
                        "reflection": _text(rng, 30) if method in LEARNING else None,
                        "steps": steps,
                    }  # fmt: skip
                    lines.append(record)
    with open(out / EPISODES_FILE, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in lines)
    sizes = {"macro": 2 * train_users, "actor": 8 * train_users, "critic": 8 * train_users}
    for method in LEARNING:
        for s in seeds:
            for kind, n in sizes.items():
                memory = VectorMemory(64, meta={"kind": kind, "embeddings": "hashing"})
                vectors = np.random.default_rng(s).normal(size=(n, 64)).astype("float32")
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                payloads: list[Any] = [
                    {"reflection": _text(rng, 30), "context": _text(rng, 40), "meta": None}
                    if kind == "macro"
                    else {"value": round(rng.uniform(-5, 5), 2)}
                    if kind == "critic"
                    else {str(rng.randrange(len(titles))): rng.choice((1, -1))}
                    for _ in range(n)
                ]
                keys = [f"{kind} state {i}: {_text(rng, 20)}" for i in range(n)]
                memory.add(keys, vectors, payloads)
                memory.save(out / method / f"seed-{s}" / "memory" / kind)
    return len(lines)


def measure_page(path: Path, loads: int = LOADS) -> dict[str, Any]:
    """Open report.html `loads` times in fresh pages; return median load/first-view/next times."""
    url = path.resolve().as_uri()
    load_ms, ready_ms, next_ms = [], [], []
    with chromium() as page:
        for _ in range(loads):
            page.goto("about:blank")
            page.goto(url)
            page.wait_for_function("document.documentElement.dataset.ready", timeout=60_000)
            if page.evaluate("document.documentElement.dataset.ready") != "1":
                raise RuntimeError(f"{path}: the page reported an error")
            nav = page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
            load_ms.append(nav["loadEventEnd"])
            ready_ms.append(page.evaluate("window.billpReadyMs"))
            before = page.get_attribute("#traj-table", "data-user")
            started = page.evaluate("performance.now()")
            page.click("#next")
            page.wait_for_function(
                f"document.querySelector('#traj-table').dataset.user !== '{before}'"
            )
            next_ms.append(page.evaluate("performance.now()") - started)
    return {
        "load_event_ms": round(statistics.median(load_ms), 1),
        "first_trajectory_ms": round(statistics.median(ready_ms), 1),
        "first_trajectory_ms_max": round(max(ready_ms), 1),  # the first load is the coldest
        "next_user_ms": round(statistics.median(next_ms), 1),
        "loads": loads,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Generate the run, render its report, and time the page in Chromium."""
    from eval.html_report import write_html
    from eval.report import render

    test_users, train_users = (100, 50) if quick else (1000, 500)
    with tempfile.TemporaryDirectory(prefix="billp-html-bench-") as tmp:
        out = Path(tmp) / "run"
        started = time.perf_counter()
        episodes = synthetic_run(out, test_users, train_users)
        generate_s = time.perf_counter() - started
        started = time.perf_counter()
        results, _ = render(out)
        render_s = time.perf_counter() - started
        started = time.perf_counter()
        page = write_html(out, results)
        html_s = time.perf_counter() - started
        browser = measure_page(page)
        size_mb = page.stat().st_size / 2**20
        jsonl_mb = (out / "episodes.jsonl").stat().st_size / 2**20
    return {
        "html_report": {
            "episodes": episodes,
            "generate_seconds": round(generate_s, 2),
            "render_seconds": round(render_s, 2),
            "write_html_seconds": round(html_s, 2),
            "html_mb": round(size_mb, 2),
            "episodes_jsonl_mb": round(jsonl_mb, 2),
            "chromium": browser,
            "machine": machine(),
        }
    }


def section(r: dict[str, Any], images: Any, fmt: Any) -> list[str]:
    """How fast the self-contained HTML run report opens for a big run."""
    h = r.get("html_report")
    if not h:
        return []
    c = h["chromium"]
    return [
        "## HTML run report",
        "",
        "Command: `python -m bench.html_report` (a generated run, opened from disk in headless "
        "Debian Chromium through Playwright; median of the loads).",
        "",
        "| episodes | report.html MB | episodes.jsonl MB | load event ms "
        "| first trajectory ms (max) | next user ms | write s |",
        "|---|---|---|---|---|---|---|",
        f"| {h['episodes']} | {fmt(h['html_mb'])} | {fmt(h['episodes_jsonl_mb'])} "
        f"| {fmt(c['load_event_ms'], 0)} | {fmt(c['first_trajectory_ms'], 0)} "
        f"({fmt(c['first_trajectory_ms_max'], 0)}) | {fmt(c['next_user_ms'], 0)} "
        f"| {fmt(h['write_html_seconds'], 1)} |",
        "",
    ]


if __name__ == "__main__":
    main(run, __doc__)
