"""Where the episodes of a batch run: in this process (`local`) or on a Ray cluster (`ray`).

The protocol (`eval.protocol`, `eval.experiment`) stays in the driver either way: it plans the
batches, keeps the limit of `concurrency` episodes in flight, appends each finished episode to
`episodes.jsonl` as it arrives, and writes the lessons at the batch barrier with `learn_from`.
An executor only turns (context, user) into an `Outcome`:

- `LocalExecutor` runs the episode on this event loop (what `billp run` always did).
- `RayExecutor` sends it to a pool of async Ray actors, `workers` of them spread over the nodes.
  Each actor is one process holding its own process-wide resources (environment, model client,
  embeddings, compiled graphs), so nothing heavy is rebuilt per episode. Memories reach actors
  as a read-only snapshot per batch: the driver packs the seed's memory folder (frozen while a
  batch runs: lessons are written only at the barrier) into one Ray object per distinct
  content, and each actor unpacks it once into a local folder named by its digest. Nodes need
  no shared disk for memories. If an actor process dies, every episode it had in flight is
  sent to another actor (a replacement is started), from the start: with per-prompt
  deterministic models that reproduces what the dead actor would have returned.

Actors reserve `ACTOR_CPUS` of a CPU each, spread over the nodes: episodes wait on the model
endpoint, not on a core, so a 2-CPU cluster runs any `--concurrency` (each actor takes any number
of episodes at once; the driver's limit is the only one), and several runs can share a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from eval.runner import Outcome, run_llm_episode

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
# Passed to every actor so it builds the same clients and reads the same caches as the driver.
ENV_PREFIXES = ("BILLP_", "OPENAI_", "LANGSMITH_", "LANGCHAIN_", "HF_", "TRANSFORMERS_")
ACTOR_CPUS = 0.25
"""CPUs an actor reserves: a scheduling share (4 actors per core), not a limit on what it uses."""
MAX_ACTOR_DEATHS = 3
"""How many dead actors one episode may meet before the run stops (a crash loop, not bad luck)."""


class Executor(Protocol):
    """Run one LLM episode of an experiment somewhere and return its outcome."""

    name: str

    async def open(self, experiment: Any) -> None:
        """Learn what the episodes need from the experiment (called once, before any episode)."""

    async def run_episode(
        self, graph: Any, ctx: Any, *, method: str, user: int, thread_id: str, retries: int
    ) -> Outcome:
        """Run (or continue) one episode; raise only what `run_llm_episode` raises."""

    async def close(self) -> None:
        """Release what `open` and the episodes acquired."""


class LocalExecutor:
    """Run episodes on the driver's event loop, with the driver's checkpointer."""

    name = "local"

    async def open(self, experiment: Any) -> None:
        """Nothing to prepare: the graph and resources are the driver's own."""

    async def run_episode(
        self, graph: Any, ctx: Any, *, method: str, user: int, thread_id: str, retries: int
    ) -> Outcome:
        """Run the episode here (the graph carries the run's SQLite checkpointer)."""
        return await run_llm_episode(graph, ctx, user=user, thread_id=thread_id, retries=retries)

    async def close(self) -> None:
        """Nothing to release."""


def make_executor(kind: str, address: str | None = None, workers: int | None = None) -> Any:
    """Return the executor named on the command line; refuse options that do not fit it."""
    if kind not in EXECUTORS:
        raise ValueError(f"--executor is local or ray, got {kind!r}")
    if kind == "local":
        if address or workers:
            raise ValueError("--ray-address and --ray-workers need --executor ray")
        return LocalExecutor()
    if address is not None:
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--ray-address is host:port, as `ray start` prints it: {address!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"--ray-workers must be >= 1, got {workers}")
    return RayExecutor(address=address, workers=workers)


# --- memory snapshots -----------------------------------------------------------------------


def folder_stamp(folder: Path) -> tuple:
    """Return (relative path, size, mtime) of every file: changes whenever a save rewrote one."""
    if not folder.is_dir():
        return ()
    stats = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        stats.append((str(path.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return tuple(stats)


def pack_folder(folder: Path) -> tuple[str, dict[str, bytes]]:
    """Return (sha256 digest, {relative path: bytes}) of every file under `folder`."""
    files: dict[str, bytes] = {}
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            files[str(path.relative_to(folder))] = path.read_bytes()
    digest = hashlib.sha256()
    for name, data in files.items():
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest(), files


def unpack_folder(files: dict[str, bytes], root: Path, digest: str) -> Path:
    """Write a packed folder under `root/digest` (once; atomic rename) and return its path."""
    target = root / digest
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root))
    for name, data in files.items():
        path = (tmp / name).resolve()
        if tmp.resolve() not in path.parents:
            raise ValueError(f"memory snapshot holds a path outside its folder: {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    try:
        tmp.rename(target)
    except OSError:  # another episode of this actor unpacked it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- the Ray side ---------------------------------------------------------------------------


class EpisodeWorker:
    """A Ray actor: runs episodes with this process's resources, on its own event loop."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)  # the simulator's tensors are tiny; cores go to other actors
        self.root = Path(tempfile.mkdtemp(prefix="billp-ray-memory-"))
        self._graphs: dict[tuple[str, float], Any] = {}
        self._unpack = asyncio.Lock()

    def pid(self) -> int:
        """Return this actor's process id (tests kill it to check that no episode is lost)."""
        return os.getpid()

    def _graph(self, method: str, pause: float) -> Any:
        if (method, pause) not in self._graphs:
            from langgraph.checkpoint.memory import InMemorySaver

            from graph import build_graph

            extra = {}
            if pause:

                async def paused(state: dict, runtime: Any) -> dict:
                    await asyncio.sleep(pause)
                    return {}

                extra["insert_after"] = {"actor": ("pause", paused)}
            # In-memory checkpoints: an episode continues within its attempts here; one whose
            # actor died starts over on another actor.
            graph = build_graph(method, checkpointer=InMemorySaver(), **extra)  # type: ignore[arg-type]
            self._graphs[(method, pause)] = graph
        return self._graphs[(method, pause)]

    async def _memory_dir(self, snapshot: list[Any] | None) -> str | None:
        if snapshot is None:
            return None
        digest, ref = snapshot
        target = self.root / digest
        if not target.is_dir():
            async with self._unpack:
                if not target.is_dir():
                    files = await ref
                    await asyncio.to_thread(unpack_folder, files, self.root, digest)
        return str(target)

    async def run(
        self,
        method: str,
        ctx: Any,
        snapshot: list[Any] | None,
        user: int,
        thread_id: str,
        retries: int,
        spec: dict[str, Any],
    ) -> Outcome:
        """Run one episode against the memory snapshot; return its outcome to the driver.

        `spec`: test-only settings (the step pause).
        """
        memory_dir = await self._memory_dir(snapshot)
        if memory_dir is not None:
            ctx = dataclasses.replace(ctx, memory_dir=memory_dir)
        if ctx.llm_cache and not Path(ctx.llm_cache).parent.is_dir():
            # The run's answer cache is on the driver's disk, which this node does not see: the
            # same answers, paid for again (each call's seed is in the key, not the cache).
            ctx = dataclasses.replace(ctx, llm_cache=None)
        graph = self._graph(method, float(spec.get("step_pause") or 0.0))
        try:
            return await run_llm_episode(
                graph, ctx, user=user, thread_id=thread_id, retries=retries
            )
        finally:
            await graph.checkpointer.adelete_thread(thread_id)


class RayExecutor:
    """Run episodes on a pool of `EpisodeWorker` actors of the Ray cluster at `address`.

    `address` None starts a single-node Ray in this process. `workers` None: one actor per
    cluster CPU. A run starts the actors on its first episode and stops them at its end; call
    `start()` first to keep them for several runs (stop them with `shutdown()`).
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.address = address
        self.workers = workers
        self.spec: dict[str, Any] = {}
        self.actors: list[Any] = []
        self.deaths = 0
        self.startup_s: float | None = None
        """Seconds spent connecting and starting the actors (reported apart from episodes)."""
        self._load: dict[int, int] = {}
        self._snapshots: dict[tuple, list[Any]] = {}
        self._started: asyncio.Lock | None = None
        self._connected_here = False
        self._run_owns_actors = False
        self._actor_options: dict[str, Any] = {}

    async def open(self, experiment: Any) -> None:
        """Record what actors need; the cluster is joined on the first episode (if any)."""
        c = experiment.config
        if getattr(c, "memory_backend", "faiss") == "store":
            from memory.store_backend import STORE_URI_ENV

            if not os.environ.get(STORE_URI_ENV):
                raise ValueError(
                    f"--executor ray with --memory-backend store needs {STORE_URI_ENV} (a Postgres "
                    "every worker reaches): an in-memory store lives in one process"
                )
        self.spec = {"step_pause": experiment.step_pause}
        self._started = asyncio.Lock()

    def start(self) -> None:
        """Connect to the cluster and start the actors (blocking; also usable before a run)."""
        import time

        import ray

        started = time.perf_counter()
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                logging_level=logging.ERROR,
                log_to_driver=False,
                include_dashboard=False,
            )
            self._connected_here = True
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        count = self.workers or max(1, int(cpus))
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
        self._actor_options = {
            "num_cpus": min(ACTOR_CPUS, cpus / count),  # any --ray-workers fits the cluster
            "max_concurrency": 10_000,
            "scheduling_strategy": "SPREAD",
            "runtime_env": {"env_vars": env},
        }
        self.actors = [self._new_actor() for _ in range(count)]
        ray.get([a.pid.remote() for a in self.actors])  # wait until every actor is up
        self.startup_s = time.perf_counter() - started

    def _new_actor(self) -> Any:
        import ray

        actor = ray.remote(EpisodeWorker).options(**self._actor_options).remote()
        self._load[id(actor)] = 0
        return actor

    def pids(self) -> list[int]:
        """Return the process id of every live actor (tests use them to kill one)."""
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def _snapshot(self, memory_dir: str | None) -> list[Any] | None:
        """Return [digest, object ref] of the memory folder as it is now (packed once)."""
        if memory_dir is None:
            return None
        import ray

        folder = Path(memory_dir)
        stamp = (str(folder), folder_stamp(folder))
        if stamp not in self._snapshots:
            digest, files = pack_folder(folder)
            self._snapshots = {k: v for k, v in self._snapshots.items() if k[0] != str(folder)}
            self._snapshots[stamp] = [digest, ray.put(files)]
        return self._snapshots[stamp]

    def _pick(self) -> Any:
        return min(self.actors, key=lambda a: self._load[id(a)])

    def _replace(self, dead: Any) -> None:
        if dead in self.actors:
            import ray

            self.deaths += 1
            log.warning("a Ray episode worker died; starting a replacement")
            self.actors[self.actors.index(dead)] = self._new_actor()
            with contextlib.suppress(Exception):  # unreachable, not dead: never let it linger
                ray.kill(dead, no_restart=True)

    async def run_episode(
        self, graph: Any, ctx: Any, *, method: str, user: int, thread_id: str, retries: int
    ) -> Outcome:
        """Run the episode on the least busy actor; on actor death, on another one."""
        from ray.exceptions import RayActorError

        assert self._started is not None, "open() must run before run_episode()"
        async with self._started:
            if not self.actors:
                self._run_owns_actors = True
                await asyncio.to_thread(self.start)
        snapshot = self._snapshot(ctx.memory_dir)
        spec = self.spec
        for _ in range(MAX_ACTOR_DEATHS + 1):
            actor = self._pick()
            self._load[id(actor)] += 1
            try:
                return await actor.run.remote(method, ctx, snapshot, user, thread_id, retries, spec)
            except RayActorError as exc:
                log.warning("episode %s lost its worker (%s); retrying it", thread_id, exc)
                self._replace(actor)
            finally:
                self._load[id(actor)] = self._load.get(id(actor), 1) - 1
        raise RuntimeError(
            f"episode {thread_id}: {MAX_ACTOR_DEATHS + 1} Ray workers died running it; "
            "see the Ray logs of the cluster for why"
        )

    async def close(self) -> None:
        """End a run: stop what the run started (actors started by `start()` are kept)."""
        self._snapshots.clear()
        if self._run_owns_actors:
            self._run_owns_actors = False
            self.shutdown()

    def shutdown(self) -> None:
        """Stop the actors, and the Ray connection if this executor made it."""
        if not self.actors and not self._connected_here:
            return
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors.clear()
        self._snapshots.clear()
        if self._connected_here:
            ray.shutdown()
            self._connected_here = False
