"""Measure how `billp run --concurrency K` scales against a slow OpenAI-compatible endpoint.

The endpoint is `nodes.llm.fake_server` with a fixed latency per request and no faults, answering
from the request alone (`--by-prompt`), so every K must reproduce K=1's episodes exactly. Each K
runs the same experiment (BiLLP, frozen test phase, synthetic data, `hashing` embeddings, LLM
cache off) through `eval.experiment.Experiment`, the code `billp run` runs; the wall time is the
method's own timer (resources, episodes, checkpoints and log writes included).

The server runs as a subprocess by default, so its threads do not compete with the client for
the GIL; `--server thread` serves from this process instead. Built environments come from
$BILLP_CACHE like any run.

The same experiment also runs through the Ray executor (`eval.executor.RayExecutor`) on a real
2-node local cluster (`ray start` head + one node joined by address, 1 CPU each), with 1 and then
2 actors at K=`RAY_K`. Cluster start, actor start and a warm-up run (each actor loading its
resources) are timed apart; the speedup is the steady-state run's, against local K=1.

python -m bench.concurrency [--quick] [--out PATH] [--server subprocess|thread] [--ray-workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import machine, write_json
from eval.experiment import REFERENCE, Experiment
from eval.protocol import RunConfig
from nodes.llm.fake_server import FakeOpenAI
from nodes.resources import env_bundle

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 4, 16, 64)
RAY_K = 16
RAY_WORKERS = (1, 2)
LATENCY_S = 0.2
METHOD = "billp"


@contextmanager
def fake_server(mode: str, latency: float, titles: Sequence[str], tmp: Path) -> Iterator[str]:
    """Serve the fake endpoint (subprocess or in-process thread); yield its base URL."""
    if mode == "thread":
        with FakeOpenAI(latency=latency, titles=titles, by_prompt=True) as fake:
            yield fake.url
        return
    titles_file = tmp / "titles.txt"
    titles_file.write_text("\n".join(titles) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "nodes.llm.fake_server", "--latency", str(latency), "--by-prompt"]
    cmd += ["--titles-file", str(titles_file)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "http://" not in line:
            raise RuntimeError(f"the fake server did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def server_stats(url: str, reset: bool = False) -> dict[str, Any]:
    """Return the server's counts since its last reset (then reset them, if asked)."""
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as resp:
        stats = json.load(resp)
    if reset:
        urllib.request.urlopen(urllib.request.Request(f"{url}/reset", b"{}"), timeout=10).close()
    return stats


def trajectory(record: dict[str, Any]) -> list[Any]:
    """Return what must not depend on K: per step the plan, action, item, reward and value."""
    keys = ("thought", "action", "item", "rating", "reward", "value", "advantage")
    steps = [[step.get(k) for k in keys] for step in record.get("steps", [])]
    return [record["status"], record.get("quit_reason"), record.get("reflection"), steps]


def lower_bound(calls: Sequence[int], k: int, latency: float) -> float:
    """Return the least wall time K slots need for episodes of `calls` sequential requests."""
    return max(max(calls, default=0), sum(calls) / k) * latency


async def measure(config: RunConfig, url: str, levels: Sequence[int], tmp: Path) -> list[dict]:
    """Run the experiment once per K in one event loop; return the per-K measurements."""
    out = []
    for k in levels:
        config.concurrency = k
        cpu: dict[str, float] = {}  # CPU seconds of this process when each method started

        def started_method(method: str, done: int, total: int | None, cpu=cpu) -> None:
            cpu.setdefault(method, time.process_time())

        experiment = Experiment(config, tmp / f"k{k}", progress=started_method)
        server_stats(url, reset=True)
        started = time.perf_counter()
        timings = await experiment.arun()
        total = time.perf_counter() - started
        stats = server_stats(url)
        requests = stats["requests"]
        client_cpu = cpu[REFERENCE] - cpu[METHOD]  # the reference oracle runs after the method
        records = sorted(experiment.log.select(method=METHOD), key=lambda r: r["user"])
        wall = timings[METHOD]
        out.append(
            {
                "k": k,
                "wall_s": round(wall, 3),
                "run_s": round(total, 3),
                "episodes": len(records),
                "failed": sum(r["status"] != "ok" for r in records),
                "requests": requests,
                "requests_per_s": round(requests / wall, 2),
                "episodes_wall_s": stats["busy_s"],
                "mean_in_flight": stats["mean_in_flight"],
                "max_in_flight": stats["max_in_flight"],
                "client_cpu_s": round(client_cpu, 3),
                "client_cpu_ms_per_request": round(1000 * client_cpu / max(requests, 1), 2),
                "calls": [int(r.get("llm_calls", 0)) for r in records],
                "trajectories": {r["user"]: trajectory(r) for r in records},
            }
        )
    return out


async def measure_ray(
    config: RunConfig, url: str, workers: Sequence[int], k: int, tmp: Path
) -> dict[str, Any]:
    """Run the experiment through Ray actors on a 2-node local cluster; time start-up apart."""
    import dataclasses

    from eval.executor import RayExecutor
    from eval.ray_cluster import start_cluster

    started = time.perf_counter()
    cluster = await asyncio.to_thread(start_cluster, 2, 1)
    out: dict[str, Any] = {"cluster_start_s": round(time.perf_counter() - started, 3), "runs": {}}
    try:
        for w in workers:
            executor = RayExecutor(address=cluster.address, workers=w)
            await asyncio.to_thread(executor.start)
            # Warm-up: one episode per actor, so each loads its environment and clients once.
            warm = dataclasses.replace(config, test_users=2 * w, concurrency=2 * w)
            t0 = time.perf_counter()
            await Experiment(warm, tmp / f"ray-w{w}-warmup", executor=executor).arun()
            warmup_s = time.perf_counter() - t0
            config.concurrency = k
            experiment = Experiment(config, tmp / f"ray-w{w}-k{k}", executor=executor)
            server_stats(url, reset=True)
            timings = await experiment.arun()
            stats = server_stats(url)
            records = sorted(experiment.log.select(method=METHOD), key=lambda r: r["user"])
            executor.shutdown()
            out["runs"][str(w)] = {
                "workers": w,
                "k": k,
                "actor_start_s": round(executor.startup_s or 0.0, 3),
                "warmup_s": round(warmup_s, 3),
                "wall_s": round(timings[METHOD], 3),
                "episodes": len(records),
                "failed": sum(r["status"] != "ok" for r in records),
                "requests": stats["requests"],
                "requests_per_s": round(stats["requests"] / timings[METHOD], 2),
                "mean_in_flight": stats["mean_in_flight"],
                "max_in_flight": stats["max_in_flight"],
                "trajectories": {r["user"]: trajectory(r) for r in records},
            }
    finally:
        await asyncio.to_thread(cluster.stop)
    return out


def summarize_ray(ray: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Return the Ray section: speedups against local K=1, and whether episodes match it."""
    runs = {}
    for w, row in ray["runs"].items():
        trajectories = row.pop("trajectories")
        expected = base["trajectories"]
        differing = sum(trajectories.get(u) != t for u, t in expected.items())
        differing += len(set(trajectories) - set(expected))
        runs[w] = {
            **row,
            "speedup_vs_local_k1": round(base["wall_s"] / row["wall_s"], 2),
            "episodes_differing_from_local_k1": differing
            + len(set(trajectories) - set(base["trajectories"])),
        }
    return {
        "cluster": "2 nodes x 1 CPU on 127.0.0.1 (ray start --head + ray start --address)",
        "cluster_start_s": ray["cluster_start_s"],
        "runs": runs,
        "results_match": all(r["episodes_differing_from_local_k1"] == 0 for r in runs.values()),
    }


def run(
    quick: bool = False,
    *,
    server: str = "subprocess",
    latency: float = LATENCY_S,
    levels: Sequence[int] = LEVELS,
    max_steps: int | None = None,
    ray_workers: Sequence[int] = RAY_WORKERS,
) -> dict[str, Any]:
    """Measure wall time per concurrency level; return speedups and the details behind them.

    Full: 100 episodes of at most 3 steps per K (about 8 requests each). Quick (a smoke test
    within a minute): 16 episodes of at most 2 steps, so K=16 and K=64 both run every episode
    at once and their speedup is capped by the one-time setup each K pays.
    """
    episodes = 16 if quick else 100
    max_steps = max_steps or (2 if quick else 3)
    config = RunConfig(
        methods=[METHOD],
        llm="openai:fake",
        embeddings="hashing",
        train_users=0,
        test_users=episodes,
        max_steps=max_steps,
        cache=False,
        temperature=0.0,
    )
    titles = env_bundle(config.context(seed=0, split="test", memory_dir=None)).dataset.titles()
    with tempfile.TemporaryDirectory(prefix="billp-concurrency-") as name:
        tmp = Path(name)
        with fake_server(server, latency, titles, tmp) as url:
            saved = dict(os.environ)
            os.environ.update(OPENAI_BASE_URL=url, OPENAI_API_KEY="bench")
            try:
                rows = asyncio.run(measure(config, url, levels, tmp))
                ray = None
                if ray_workers:
                    ray = asyncio.run(measure_ray(config, url, ray_workers, RAY_K, tmp))
            finally:
                os.environ.clear()
                os.environ.update(saved)
    report = summarize(rows, quick=quick, server=server, latency=latency, max_steps=max_steps)
    if ray is not None:
        report["concurrency"]["ray"] = summarize_ray(ray, rows[0])
    return report


def summarize(rows: list[dict], **setup: Any) -> dict[str, Any]:
    """Return the JSON report: speedups, bounds, and whether every K reproduced K=1."""
    base = rows[0]
    expected = base["trajectories"]
    per_k = {}
    for row in rows:
        k, calls, trajectories = row["k"], row["calls"], row["trajectories"]
        bound = lower_bound(calls, k, setup["latency"])
        differing = sum(trajectories.get(u) != t for u, t in expected.items())
        differing += len(set(trajectories) - set(expected))
        per_k[str(k)] = {
            **{key: v for key, v in row.items() if key not in ("k", "calls", "trajectories")},
            "wall_lower_bound_s": round(bound, 3),
            "ideal_speedup": round(lower_bound(calls, 1, setup["latency"]) / bound, 2),
            "speedup_bound_from_k1_wall": round(base["wall_s"] / bound, 2),
            "episodes_differing_from_k1": differing,
        }
    speedup = {str(r["k"]): round(base["wall_s"] / r["wall_s"], 2) for r in rows}
    busy = {str(r["k"]): round(base["episodes_wall_s"] / r["episodes_wall_s"], 2) for r in rows}
    return {
        "concurrency_speedup": speedup,
        "concurrency": {
            "method": METHOD,
            "latency_ms": round(setup["latency"] * 1000),
            "episodes": base["episodes"],
            "max_steps": setup["max_steps"],
            "quick": setup["quick"],
            "server": setup["server"],
            "episodes_speedup": busy,
            "results_match": all(v["episodes_differing_from_k1"] == 0 for v in per_k.values()),
            "per_k": per_k,
            "machine": machine(),
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Print the measurements as JSON (and write them to --out)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 short episodes per K, not 100")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--server", choices=("subprocess", "thread"), default="subprocess")
    parser.add_argument("--latency", type=float, default=LATENCY_S, help="seconds per request")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="K values, K=1 first")
    parser.add_argument("--max-steps", type=int, help="default: 3, or 2 with --quick")
    parser.add_argument(
        "--ray-workers", default="1,2", help="actor counts for the Ray runs ('' skips Ray)"
    )
    args = parser.parse_args(argv)
    levels = [int(k) for k in args.levels.split(",")]
    report = run(
        args.quick,
        server=args.server,
        latency=args.latency,
        levels=levels,
        max_steps=args.max_steps,
        ray_workers=[int(w) for w in args.ray_workers.split(",") if w.strip()],
    )
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
