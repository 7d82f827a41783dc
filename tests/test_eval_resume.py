"""Kill `billp run` with SIGKILL mid-episode, then run it again: the same episodes as a run
that was never interrupted, none lost and none recorded twice.

The killed run is a real `billp run` subprocess (this file run as a script) that kills itself at
a fixed point, not after a timer: a "fault" node after the actor sends SIGKILL at the first step
played once two episodes are recorded, with its checkpoints half-way through the episode. The
resumption runs the same experiment in-process (what `billp run` does) with the same graph shape,
whose "fault" node does nothing, so the killed episode continues from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import eval.experiment as experiment_module
from eval.experiment import Experiment
from eval.protocol import RunConfig

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
KILL_AFTER = 2
"""Recorded episodes before the kill: both training episodes; it lands in the test phase."""
HANG_GUARD_S = 600  # only a hung run waits this long; the kill itself never waits on a clock


def with_fault_node(fault: Any) -> Any:
    """Return `eval.experiment.build_graph` with `fault` inserted after the actor."""
    original = experiment_module.build_graph

    def build(variant: str, **kw: Any) -> Any:
        return original(variant, insert_after={"actor": ("fault", fault)}, **kw)

    return build


def _killed_run(log: Path, argv: list[str]) -> None:
    """Run the CLI; SIGKILL this process at the first step once `KILL_AFTER` episodes exist."""
    from eval.cli import main

    async def fault(state: dict) -> dict:
        if log.is_file() and len(log.read_bytes().splitlines()) >= KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)
        return {}

    experiment_module.build_graph = with_fault_node(fault)
    sys.argv = ["billp", *argv]
    main()


def command(out: Path) -> list[str]:
    args = [sys.executable, __file__, str(out / "episodes.jsonl")]
    args += ["run", "--method", "billp", "--seeds", "0"]
    for key, value in ARGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return [*args, "--out", str(out)]


def episodes(run: Path) -> dict:
    lines = (run / "episodes.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    keys = [(r["method"], r["seed"], r["phase"], r["user"]) for r in records]
    assert len(keys) == len(set(keys)), "an episode was recorded twice"
    return {
        k: (r["status"], r["r_traj"], [s["item"] for s in r["steps"]], r.get("reflections"))
        for k, r in zip(keys, records, strict=True)
    }


async def _no_fault(state: dict) -> dict:
    return {}


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    config = RunConfig(methods=["billp"], seeds=[0], **ARGS)
    reference = tmp_path / "reference"
    Experiment(config, reference).run()

    run = tmp_path / "killed"
    stderr = tmp_path / "killed.stderr"
    with stderr.open("wb") as sink:
        proc = subprocess.run(
            command(run), stdout=subprocess.DEVNULL, stderr=sink, timeout=HANG_GUARD_S
        )
    assert proc.returncode == -signal.SIGKILL, f"run was not killed:\n{stderr.read_text()}"
    assert len(episodes(run)) == KILL_AFTER  # the kill came mid-episode, before a third record

    # Resume in-process (the CLI re-run is the same call; tests/test_eval_cli.py runs it).
    monkeypatch.setattr(experiment_module, "build_graph", with_fault_node(_no_fault))
    Experiment(config, run).run()
    assert episodes(run) == episodes(reference)


if __name__ == "__main__":  # the killed run: python tests/test_eval_resume.py LOG billp-args...
    _killed_run(Path(sys.argv[1]), sys.argv[2:])
