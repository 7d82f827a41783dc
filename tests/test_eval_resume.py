"""Kill `billp run` with SIGKILL mid-run, then run it again: the same episodes as a run
that was never interrupted, none lost and none recorded twice.

The killed run is a real `billp run` subprocess; the resumption runs the same experiment
in-process (what `billp run` does), which keeps the test under a minute on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from eval.experiment import Experiment
from eval.protocol import RunConfig
from nodes.resources import clear_cache

ARGS = dict(
    dataset="synthetic",
    llm="scripted",
    embeddings="hashing",
    train_users=2,
    test_users=2,
    max_steps=4,
    train_batch=1,
    concurrency=2,
)


def command(out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "eval.cli", "run", "--method", "billp", "--seeds", "0"]
    for key, value in ARGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    # The hidden --step-pause sleeps after each actor step, so the kill lands mid-episode.
    return [*args, "--out", str(out), "--step-pause", "0.1", *extra]


def episodes(run: Path) -> dict:
    lines = (run / "episodes.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    keys = [(r["method"], r["seed"], r["phase"], r["user"]) for r in records]
    assert len(keys) == len(set(keys)), "an episode was recorded twice"
    return {
        k: (r["status"], r["r_traj"], [s["item"] for s in r["steps"]], r.get("reflections"))
        for k, r in zip(keys, records, strict=True)
    }


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    Experiment(RunConfig(methods=["billp"], seeds=[0], **ARGS), reference, step_pause=0.01).run()
    clear_cache()

    run = tmp_path / "killed"
    log = run / "episodes.jsonl"
    proc = subprocess.Popen(
        command(run),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and len(log.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    partial = len(episodes(run))
    assert 2 <= partial < len(episodes(reference))

    # Resume in-process (the CLI re-run is the same call; tests/test_eval_cli.py runs it).
    Experiment(RunConfig(methods=["billp"], seeds=[0], **ARGS), run, step_pause=0.01).run()
    clear_cache()
    assert episodes(run) == episodes(reference)
