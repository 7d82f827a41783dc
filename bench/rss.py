"""Peak memory (RSS) of a 100-user BiLLP run, measured in a fresh child process.

python -m bench.rss [--quick] [--out FILE]

The child loads and warms the embedded local model (weights + a 4,096-token KV cache), then runs
`billp run -m billp` on 100 train + 100 test users of the main dataset with MiniLM embeddings,
memories, the SQLite checkpointer and the episode log — everything a local run holds. Answers
come from the `scripted` test double, because 200 episodes with the 135M model take hours on two
cores; the answers' text does not change what is resident. Peak RSS is the kernel's high-water
mark of the child (`ru_maxrss`), so it includes every transient allocation.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import main as cli

USERS = 100
QUICK_USERS = 20


def rss_mb() -> float:
    """Return this process's peak RSS so far in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(users: int, dataset: str, out: Path) -> None:
    """Run inside the measured process: load the model, run the experiment, write the numbers."""
    import torch

    from eval.experiment import Experiment
    from eval.protocol import RunConfig
    from nodes.llm.local import find_local_model, load_llama

    torch.set_num_threads(1)
    facts: dict[str, Any] = {"after_imports_mb": rss_mb()}
    started = time.perf_counter()
    llama, lock = load_llama(str(find_local_model()), 4096)
    with lock:
        llama.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    facts["after_model_mb"] = rss_mb()
    config = RunConfig(
        methods=["billp"],
        dataset=dataset,
        llm="scripted",
        embeddings="minilm",
        train_users=users,
        test_users=users,
        train_batch=10,
        concurrency=4,
        cache=False,
    )
    with tempfile.TemporaryDirectory(prefix="billp-rss-") as tmp:
        Experiment(config, Path(tmp) / "run").run()
        episodes = sum(1 for _ in (Path(tmp) / "run" / "episodes.jsonl").open())
    facts.update(
        peak_mb=rss_mb(),
        episodes=episodes,
        seconds=round(time.perf_counter() - started, 1),
        dataset=dataset,
        train_users=users,
        test_users=users,
    )
    out.write_text(json.dumps(facts))


def run(quick: bool = False) -> dict[str, Any]:
    """Measure in a child process; return `peak_rss_mb_100_users` and the details."""
    from bench.quality import datasets

    users = QUICK_USERS if quick else USERS
    dataset = datasets(quick)[0]
    tmp = Path(tempfile.mkdtemp(prefix="billp-rss-out-"))
    try:
        out = tmp / "rss.json"
        cmd = [sys.executable, "-m", "bench.rss", "--child", str(users), dataset, str(out)]
        subprocess.run(cmd, check=True)
        facts = json.loads(out.read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = round(facts["peak_mb"], 1)
    return {
        "peak_rss_mb_100_users": peak if users == USERS else None,
        "peak_rss": {
            **{k: round(v, 1) if isinstance(v, float) else v for k, v in facts.items()},
            "answers": "scripted test double; the local model loaded and warmed in-process",
            "embeddings": "minilm",
            "target_mb": 2048,
        },
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    else:
        cli(run, __doc__)
