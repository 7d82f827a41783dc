"""Episodes on a real Ray cluster: a head node and a second node joined by address (1 CPU each).

The cluster is `ray start` processes on 127.0.0.1 (`eval.ray_cluster`), started once for this
module and stopped afterwards. Results through the Ray executor must equal the local runner's
episode for episode; a worker killed mid-run must cost no episode; a killed driver resumes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from kill_run import kill_after_records

from eval.executor import (
    LocalExecutor,
    RayExecutor,
    make_executor,
    pack_folder,
    unpack_folder,
)
from eval.experiment import Experiment
from eval.protocol import RunConfig

ARGS = dict(
    dataset="synthetic",
    llm="scripted",
    embeddings="hashing",
    train_users=4,
    test_users=4,
    max_steps=4,
    train_batch=2,
)


def _config(methods: list[str], seeds: list[int], concurrency: int = 4) -> RunConfig:
    return RunConfig(methods=methods, seeds=seeds, concurrency=concurrency, **ARGS)


def _episodes(run: Path) -> dict:
    """Return what must not depend on the executor: every episode's status, items and rewards."""
    records = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    keys = [(r["method"], r["seed"], r["phase"], r["user"]) for r in records]
    assert len(keys) == len(set(keys)), "an episode was recorded twice"
    return {
        k: (
            r["status"],
            r["r_traj"],
            [(s["item"], s["reward"], s.get("value"), s.get("actor_hint")) for s in r["steps"]],
            r.get("reflections"),
            r.get("reflection"),
        )
        for k, r in zip(keys, records, strict=True)
    }


def _metrics(run: Path) -> dict:
    from eval.report import render

    results, _ = render(run)
    drop = {"seconds_per_episode", "wall_seconds"}
    methods = {
        m: {k: v for k, v in r.items() if k not in drop} for m, r in results["methods"].items()
    }
    for r in methods.values():
        # The first radius in episodes.jsonl's order, which is finishing order (not a result).
        (r.get("learning") or {}).pop("actor_radius", None)
    return methods


@pytest.fixture(scope="module")
def ray_address():
    """Start a 2-node local cluster (1 CPU per node) for this module; stop it afterwards."""
    from eval.ray_cluster import local_cluster

    with local_cluster(nodes=2, cpus_per_node=1) as cluster:
        yield cluster.address


@pytest.fixture(scope="module")
def ray_executor(ray_address):
    """Two actors started once for the module (runs keep actors their caller started)."""
    executor = RayExecutor(address=ray_address, workers=2)
    executor.start()
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The local runner's run of billp (learning) plus itemcf, on two seeds."""
    run = tmp_path_factory.mktemp("ray-reference") / "run"
    Experiment(_config(["billp", "itemcf"], [0, 1]), run, executor=LocalExecutor()).run()
    return run


def test_make_executor_refuses_bad_options():
    assert isinstance(make_executor("local"), LocalExecutor)
    assert isinstance(make_executor("ray", "127.0.0.1:6379", 2), RayExecutor)
    with pytest.raises(ValueError, match="local or ray"):
        make_executor("dask")
    with pytest.raises(ValueError, match="need --executor ray"):
        make_executor("local", "127.0.0.1:6379")
    with pytest.raises(ValueError, match="host:port"):
        make_executor("ray", "127.0.0.1")
    with pytest.raises(ValueError, match=">= 1"):
        make_executor("ray", None, 0)


def test_ray_memory_snapshot_round_trips_and_refuses_escapes(tmp_path):
    folder = tmp_path / "memory"
    (folder / "actor").mkdir(parents=True)
    (folder / "actor" / "entries.json").write_text('{"a": 1}')
    (folder / "value_net.bin").write_bytes(b"\x00\x01")
    digest, files = pack_folder(folder)
    assert pack_folder(folder)[0] == digest  # content-addressed: same files, same digest
    out = unpack_folder(files, tmp_path, digest)
    assert pack_folder(out) == (digest, files)
    (folder / "value_net.bin").write_bytes(b"\x00\x02")
    assert pack_folder(folder)[0] != digest
    with pytest.raises(ValueError, match="outside its folder"):
        unpack_folder({"../evil": b"x"}, tmp_path, "d" * 64)


@pytest.mark.slow
def test_ray_cluster_runs_equal_the_local_runner(ray_executor, reference, tmp_path):
    executor = ray_executor
    run = tmp_path / "ray"
    Experiment(_config(["billp", "itemcf"], [0, 1]), run, executor=executor).run()
    assert executor.startup_s is not None and executor.deaths == 0
    assert len(executor.actors) == 2  # started by the fixture: the run kept them
    assert _episodes(run) == _episodes(reference)
    ours, theirs = _metrics(run), _metrics(reference)
    differing = {(m, k) for m in theirs for k in theirs[m] if ours[m].get(k) != theirs[m][k]}
    assert not differing, {key: (ours[key[0]][key[1]], theirs[key[0]][key[1]]) for key in differing}
    # The memories learnt at the batch barriers (on the driver) are the same too.
    for seed in (0, 1):
        ours = pack_folder(run / "billp" / f"seed-{seed}" / "snapshots")[1]
        theirs = pack_folder(reference / "billp" / f"seed-{seed}" / "snapshots")[1]
        assert ours.keys() == theirs.keys()
        for name in ours:
            if name.endswith("entries.json"):
                assert json.loads(ours[name]) == json.loads(theirs[name]), name


@pytest.mark.slow
def test_ray_worker_killed_mid_run_loses_no_episode(ray_executor, reference, tmp_path):
    """SIGKILL one actor while it has episodes in flight: they are rerun on another actor."""
    executor = ray_executor
    deaths = executor.deaths
    run = tmp_path / "killed-worker"
    killed: list[int] = []

    def progress(method: str, done: int, total: int | None) -> None:
        if method == "billp" and done >= 1 and not killed:
            pid = executor.pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    # Batches of 2 on each of 2 seeds, all 4 in flight: the killed actor holds about half.
    config = _config(["billp", "itemcf"], [0, 1], concurrency=8)
    experiment = Experiment(config, run, progress=progress, step_pause=0.05, executor=executor)
    experiment.run()
    assert killed and executor.deaths > deaths
    assert killed[0] not in executor.pids() and len(executor.actors) == 2
    assert _episodes(run) == _episodes(reference)


@pytest.mark.slow
def test_ray_driver_killed_then_resumed_matches_an_uninterrupted_run(
    ray_address, ray_executor, reference, tmp_path
):
    """SIGKILL a `billp run --executor ray` mid-run; the same command finishes it."""
    run = tmp_path / "killed-driver"
    args = [sys.executable, "-m", "eval.cli", "compare", "--methods", "billp,itemcf"]
    args += ["--seeds", "0,1", "--concurrency", "4", "--out", str(run)]
    for key, value in ARGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    args += ["--executor", "ray", "--ray-address", ray_address, "--ray-workers", "2"]
    log = run / "episodes.jsonl"
    kill_after_records(args, log, 3)
    partial = len(_episodes(run))
    assert partial == 3 < len(_episodes(reference))  # killed right after the third record
    # The killed driver's actors die with its Ray job; the resumed run uses the module's.
    Experiment(_config(["billp", "itemcf"], [0, 1]), run, executor=ray_executor).run()
    assert _episodes(run) == _episodes(reference)
