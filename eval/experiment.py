"""Run a whole experiment: every method, every seed, the protocol of `eval.protocol`.

Methods run one after another (so each one's wall time is measured); within a method all seeds
run at once, their episodes sharing one limit of `concurrency` episodes in flight. The oracle is
always played on the same users (it costs milliseconds) so every method's % of oracle can be
reported, even when the oracle is not one of the methods compared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from eval.audit import check_hints
from eval.executor import Executor, LocalExecutor
from eval.log import EpisodeLog
from eval.protocol import (
    CHECKPOINTS_FILE,
    LLM_METHODS,
    Progress,
    RunConfig,
    RunDir,
    RunDirError,
    commit_memory,
    learn_from,
    plan,
    restore_memory,
    select_users,
)
from eval.runner import llm_record, play_policy
from graph import build_graph
from nodes.llm.probe import ensure_llm_works
from nodes.resources import clear_cache, env_bundle, get_resources
from simulator.build import EnvBundle
from simulator.policies import OraclePolicy

REFERENCE = "oracle"


class Experiment:
    """One invocation of `billp run/compare` on a run directory."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        progress: Progress | None = None,
        step_pause: float = 0.0,
        executor: Executor | None = None,
    ) -> None:
        self.config = config.validate()
        self.executor: Executor = executor or LocalExecutor()
        """Where episodes run (`eval.executor`); the protocol stays here either way."""
        self.dir = RunDir(run_dir)
        self.progress = progress or (lambda method, done, total: None)
        self.step_pause = step_pause
        """Seconds to pause after each actor step: lets tests kill a run mid-episode."""
        self.timings: dict[str, float] = {}
        self._policies: dict[str, Any] = {}

    # --- setup -------------------------------------------------------------------------------

    def _bundle(self) -> EnvBundle:
        return env_bundle(self.config.context(seed=0, split="test", memory_dir=None))

    def users(self, bundle: EnvBundle, seed: int) -> tuple[list[int], list[int]]:
        """Return (train users, test users) of a seed."""
        c = self.config
        train = select_users(bundle.train_users, c.train_users, seed, "train")
        test = select_users(bundle.test_users, c.test_users, seed, "test")
        return train, test

    def totals(self, bundle: EnvBundle, method: str) -> int:
        """Return how many episodes a method has in this experiment."""
        total = 0
        for seed in self.config.seeds:
            train, test = self.users(bundle, seed)
            if method in LLM_METHODS:
                total += sum(len(b.users) for b in plan(self.config, method, train, test))
            else:
                total += len(test)
        return total

    # --- running -----------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Run (or resume) every method; return each method's wall seconds in this call."""
        return asyncio.run(self.arun())

    async def arun(self) -> dict[str, float]:
        """Run (or resume) every method from inside an event loop."""
        clear_cache()  # memories on disk may be restored below: never reuse stale objects
        c = self.config
        if any(m in LLM_METHODS for m in c.methods):
            ensure_llm_works(c.llm)  # a native crash fails a child with one line, not this run
        self.dir.prepare(self.config)
        self.log = EpisodeLog(self.dir.path)
        bundle = self._bundle()
        self.dir.check_environment(bundle)
        methods = list(c.methods)
        if REFERENCE not in methods:
            methods.append(REFERENCE)  # the % of oracle reference
        try:
            await self.executor.open(self)
            async with AsyncSqliteSaver.from_conn_string(
                str(self.dir.path / CHECKPOINTS_FILE)
            ) as saver:
                for method in methods:
                    started = time.perf_counter()
                    done = len(self.log.select(method=method))
                    self.progress(method, done, self.totals(bundle, method))
                    if method in LLM_METHODS:
                        await self._llm_method(method, bundle, saver)
                    else:
                        self._policy_method(method, bundle, reference=method not in c.methods)
                    self.timings[method] = time.perf_counter() - started
                    self.dir.add_time(method, self.timings[method])
        finally:
            await self.executor.close()
            clear_cache()  # closes the run's LLM cache file with the resources that used it
        return self.timings

    def _policy_method(self, method: str, bundle: EnvBundle, reference: bool = False) -> None:
        """Play a non-LLM method on each seed's test users (no train phase)."""
        from eval.baselines import REFERENCE_METHODS, make_policy

        c = self.config
        world = bundle.world("test")
        if world.max_steps != c.max_steps:
            world = dataclasses.replace(world, max_steps=c.max_steps)
        titles = bundle.dataset.titles()
        for seed in c.seeds:
            _, test = self.users(bundle, seed)
            todo = [u for u in test if (method, seed, "test", u) not in self.log]
            if not todo:
                continue
            policy = self._policies.get(method)
            if policy is None and reference:
                # Only the % of oracle needs it: the simulator's oracle, without building the
                # other reference policies that make_policy builds alongside it.
                policy = self._policies[method] = OraclePolicy(bundle.world("test"))
            if policy is None:
                label = f"{method} training (seed {seed})"
                policy = make_policy(
                    method,
                    bundle,
                    seed=seed,
                    run_dir=self.dir.path,
                    rl_steps=c.rl_steps,
                    progress=lambda done, total, label=label: self.progress(label, done, total),
                )
                if method in REFERENCE_METHODS:  # seed-free apart from reseeding: build once
                    self._policies[method] = policy
            records = play_policy(world, policy, test, seed=seed, titles=titles)
            for index, record in enumerate(records):
                if record["user"] in todo:
                    ident = {"method": method, "seed": seed, "phase": "test", "index": index}
                    self.log.append({**ident, "batch": 0, "learning": "none", **record})
            self.progress(method, len(self.log.select(method=method)), None)

    async def _llm_method(self, method: str, bundle: EnvBundle, saver: Any) -> None:
        await saver.setup()  # idempotent; an executor whose episodes run elsewhere never did it
        extra = {}
        if self.step_pause:
            pause = self.step_pause

            async def paused(state: dict, runtime: Any) -> dict:
                await asyncio.sleep(pause)
                return {}

            extra["insert_after"] = {"actor": ("pause", paused)}
        graph = build_graph(method, checkpointer=saver, **extra)  # type: ignore[arg-type]
        gate = asyncio.Semaphore(self.config.concurrency)
        runs = [self._llm_seed(method, s, bundle, graph, gate, saver) for s in self.config.seeds]
        await asyncio.gather(*runs)

    async def _llm_seed(
        self,
        method: str,
        seed: int,
        bundle: EnvBundle,
        graph: Any,
        gate: asyncio.Semaphore,
        saver: Any,
    ) -> None:
        c = self.config
        seed_dir = self.dir.seed_dir(method, seed)
        merged = restore_memory(seed_dir)
        memory_dir = seed_dir / "memory"
        cache = c.cache_file(self.dir.path)
        contexts = {
            split: c.context(seed=seed, split=split, memory_dir=memory_dir, llm_cache=cache)
            for split in ("train", "test")
        }
        resources = {split: get_resources(ctx, method) for split, ctx in contexts.items()}
        titles = resources["test"].catalogue.titles
        train, test = self.users(bundle, seed)
        position = {"train": {u: i for i, u in enumerate(train)}}
        position["test"] = {u: i for i, u in enumerate(test)}
        for number, batch in enumerate(plan(c, method, train, test)):
            keys = [(method, seed, batch.phase, u) for u in batch.users]
            todo = [(position[batch.phase][k[3]], k[3]) for k in keys if k not in self.log]
            if batch.learn and number < merged:
                if todo:
                    raise RunDirError(
                        f"{seed_dir}: memories include batch {number + 1} but "
                        f"{len(todo)} of its episodes are missing from episodes.jsonl"
                    )
                continue
            ctx = contexts[batch.phase]

            async def one(
                index: int, user: int, batch_no: int = number, phase: str = batch.phase, ctx=ctx
            ) -> None:
                thread = f"{method}/{seed}/{phase}/{user}"
                async with gate:
                    outcome = await self.executor.run_episode(
                        graph, ctx, method=method, user=user, thread_id=thread, retries=c.retries
                    )
                learning = "train" if phase == "train" else c.learning
                record = llm_record(
                    outcome,
                    titles=titles,
                    method=method,
                    seed=seed,
                    phase=phase,
                    user=user,
                    index=index,
                    batch=batch_no,
                    learning=learning,
                )
                if phase == "test":  # was each fired hint right? (ground truth; eval.audit)
                    check_hints(resources["test"], record, c.max_steps)
                self.log.append(record)
                await saver.adelete_thread(thread)
                self.progress(method, len(self.log.select(method=method)), None)

            await asyncio.gather(*(one(i, u) for i, u in todo))
            if batch.learn:
                res = resources[batch.phase]
                for key in keys:
                    record = self.log.get(key)
                    if record is not None and record["status"] == "ok":
                        await learn_from(res, ctx, record)
                commit_memory(seed_dir, res.memories, number + 1, batch.phase)
