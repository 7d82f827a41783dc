"""The experimental protocol: train -> test per seed, for every method, resumable after a kill.

Per seed s (each seed with its own memories under `<run>/<method>/seed-<s>/memory`, so seeds are
independent), an LLM method that learns (billp, reflexion):
1. train: the first N training users in an order seeded by s, one episode each, in the train
   environment;
2. test: the first M held-out users in an order seeded by s, in the test environment, with
   memories frozen (default) or still learning (`continual`; results say which).
Methods that do not learn (react, actonly) and non-LLM methods (random, popularity, itemcf,
oracle, RL) skip the train phase (RL trains inside `eval.baselines.make_policy`); every method
sees the same test users for a seed.

Batches, and why results do not depend on `--concurrency`: learning users are processed in
batches of `train_batch` (default 10, the reference's batch size). All episodes of a batch read
the memories as they were when the batch started (the graph runs with `learn=False`); when the
whole batch has finished, the lessons of its episodes (actor and critic micro memories, learned
critic updates, reflections) are written in user order by `learn_from`, exactly the writes the
critic and reflector nodes make when `learn=True` (tests/test_eval_protocol.py checks that the
two agree). The reference likewise rebuilt its indexes only after each batch. So K concurrent
episodes give the same per-episode results as one at a time, and memories never see a
half-finished episode.

Resume: after each learning batch the memories are saved and copied to a snapshot, then
`learned.json` is written atomically to name it. On start, a seed's memory folder is restored
from the snapshot `learned.json` names (or emptied when there is none), so a kill during a batch
or during a save costs at most that batch's learning, which is redone from the episode records
(`episodes.jsonl`). Episodes already recorded are skipped; one that was in flight continues from
its LangGraph checkpoint (SQLite, thread id `method/seed/phase/user`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from graph import LEARNING_VARIANTS, VARIANTS, Context
from nodes.lessons import learn_episode
from nodes.llm.cache import CACHE_FILE
from storage.files import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

LLM_METHODS: tuple[str, ...] = VARIANTS
LEARNING_METHODS: tuple[str, ...] = LEARNING_VARIANTS
CONFIG_FILE = "config.json"
CHECKPOINTS_FILE = "checkpoints.sqlite"
TIMINGS_FILE = "timings.json"
ENVIRONMENT_FILE = "environment.json"
LEARNED_FILE = "learned.json"
# Fields that may change between a run and its resumption: they do not change any result.
RUNTIME_FIELDS = ("methods", "concurrency", "retries", "cache", "cache_dir")
Progress = Callable[[str, int, int | None], None]
"""progress(method, episodes done, total episodes or None when unchanged)."""


class RunDirError(ValueError):
    """The run directory cannot be resumed with this configuration."""


def policy_methods() -> tuple[str, ...]:
    """Return the non-LLM method names (imported lazily: RL code is heavy)."""
    from eval.baselines import POLICY_METHODS

    return tuple(POLICY_METHODS)


_GRAPH = Context()  # the graph's defaults: a field shared with Context never restates one


@dataclass(kw_only=True)
class RunConfig:
    """Everything an experiment depends on; saved as config.json beside its results.

    Fields named like a `Context` field (`CONTEXT_FIELDS`) take the Context's type and default
    and reach the graph through `context()`; the rest say what to run (methods, users, seeds,
    budgets) and how (concurrency, retries, cache).
    """

    methods: list[str]
    dataset: str = _GRAPH.dataset
    data_dir: str | None = _GRAPH.data_dir
    env_seed: int = _GRAPH.env_seed
    logged_items: Literal["exclude", "allow"] = _GRAPH.logged_items
    """Whether users may be recommended items from their own logged history (`EnvConfig`)."""
    llm: str = _GRAPH.llm
    embeddings: str = _GRAPH.embeddings
    train_users: int = 10
    test_users: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    max_steps: int = _GRAPH.max_steps
    continual: bool = False
    grounding: Literal["free", "shortlist"] = _GRAPH.grounding
    critic: Literal["llm", "learned"] = _GRAPH.critic
    memory_backend: Literal["faiss", "store"] = _GRAPH.memory_backend
    """faiss (files) or store (a LangGraph store: Postgres at $BILLP_STORE_URI, else in memory)."""
    temperature: float = _GRAPH.temperature
    """The paper's 0.5. Still reproducible: every call's sampling seed is derived from (seed,
    user, step, role) (`nodes.draws`), and the LLM cache keys on it."""
    gamma: float = _GRAPH.gamma
    hint_rule: Literal["derived", "reference"] = _GRAPH.hint_rule
    """When a remembered state hints (`memory.rules`): derived (per embedding) or reference."""
    actor_quantile: float = _GRAPH.actor_quantile
    critic_quantile: float = _GRAPH.critic_quantile
    explore: bool = _GRAPH.explore
    """The reference's per-step exploration hint in every LLM method's actor prompt."""
    train_batch: int = 10
    rl_steps: int = 250_000
    """RL training budget in env steps: the learning curves plateau by ~225k (BENCHMARKS.md)."""
    concurrency: int = 4
    retries: int = 2
    cache: bool | None = None
    """None: cache LLM answers (keyed on prompt, model, temperature and the per-call seed)."""
    cache_dir: str | None = None
    """Where the LLM cache lives (default: the run directory)."""

    def validate(self) -> RunConfig:
        """Raise ValueError naming the first bad option; return self."""
        known = (*LLM_METHODS, *policy_methods())
        unknown = [m for m in self.methods if m not in known]
        if not self.methods or unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(known)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"a method is listed twice in {self.methods}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct integers, got {self.seeds}")
        checks = [
            (self.train_users >= 0, "--train-users must be >= 0"),
            (self.test_users >= 1, "--test-users must be >= 1"),
            (self.max_steps >= 1, "--max-steps must be >= 1"),
            (self.train_batch >= 1, "--train-batch must be >= 1"),
            (self.concurrency >= 1, "--concurrency must be >= 1"),
            (self.retries >= 0, "--retries must be >= 0"),
            (self.temperature >= 0, "--temperature must be >= 0"),
            (self.grounding in ("free", "shortlist"), "--grounding is free or shortlist"),
            (self.critic in ("llm", "learned"), "--critic is llm or learned"),
            (self.memory_backend in ("faiss", "store"), "--memory-backend is faiss or store"),
            (self.hint_rule in ("derived", "reference"), "--hint-rule is derived or reference"),
            (self.logged_items in ("exclude", "allow"), "--logged-items is exclude or allow"),
            (0 < self.actor_quantile <= 1, "--actor-quantile must be in (0, 1]"),
            (0 < self.critic_quantile <= 1, "--critic-quantile must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

    @property
    def cache_enabled(self) -> bool:
        """Whether LLM answers are cached (default: yes; every call's seed is in its key)."""
        return True if self.cache is None else self.cache

    @property
    def learning(self) -> str:
        """How test memories behave: frozen (read-only) or continual."""
        return "continual" if self.continual else "frozen"

    def identity(self) -> dict[str, Any]:
        """Return the fields that must match for a run directory to be resumed."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-native config, with the derived learning mode spelled out."""
        return {**asdict(self), "learning": self.learning, "cache_enabled": self.cache_enabled}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild a config saved by `to_dict` (derived fields are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def context(
        self, *, seed: int, split: str, memory_dir: Path | None, llm_cache: Path | None = None
    ) -> Context:
        """Return the graph context of one phase; the graph never writes memories itself.

        Every field the two share by name comes from this config (`CONTEXT_FIELDS`), so a knob
        added to both reaches the graph without a hand-kept copy here. `llm_cache`: the run's
        answer cache file (`cache_file`), when the cache is on.
        """
        shared = {name: getattr(self, name) for name in CONTEXT_FIELDS}
        return Context(
            **shared,
            split=split,  # type: ignore[arg-type]
            memory_dir=str(memory_dir) if memory_dir else None,
            llm_cache=str(llm_cache) if llm_cache else None,
            learn=False,  # lessons are written after each batch by learn_from
            seed=seed,
        )

    def cache_file(self, run_dir: Path) -> Path | None:
        """Return the LLM answer cache of a run in `run_dir` (None when caching is off)."""
        if not self.cache_enabled:
            return None
        return (Path(self.cache_dir or run_dir) / CACHE_FILE).resolve()


CONTEXT_FIELDS = tuple(
    sorted(
        {f.name for f in dataclasses.fields(RunConfig)}
        & {f.name for f in dataclasses.fields(Context)}
        - {"split", "memory_dir", "llm_cache", "learn", "seed"}
    )
)
"""The RunConfig fields that configure the graph run (same name, same meaning in `Context`)."""


def select_users(users: list[int], n: int, seed: int, split: str) -> list[int]:
    """Return the first `n` of `users` in an order seeded by (seed, split)."""
    if n > len(users):
        raise ValueError(f"asked for {n} {split} users but the environment has {len(users)}")
    stream = 0 if split == "train" else 1
    order = np.random.default_rng([seed, stream]).permutation(sorted(users))
    return [int(u) for u in order[:n]]


@dataclass(frozen=True)
class Batch:
    """Episodes run together against one memory state; `learn`: write their lessons after."""

    phase: str
    users: list[int]
    learn: bool


def plan(config: RunConfig, method: str, train: list[int], test: list[int]) -> list[Batch]:
    """Return the batches of one LLM method and seed, in order."""
    if method not in LEARNING_METHODS:
        return [Batch("test", test, False)]
    size = config.train_batch
    batches = [Batch("train", train[i : i + size], True) for i in range(0, len(train), size)]
    if config.continual:
        batches += [Batch("test", test[i : i + size], True) for i in range(0, len(test), size)]
    else:
        batches.append(Batch("test", test, False))
    return batches


class RunDir:
    """The files of one run: config, episode log, checkpoints, cache, memories, timings."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def seed_dir(self, method: str, seed: int) -> Path:
        """Return the folder of one method and seed (memories, snapshots)."""
        return self.path / method / f"seed-{seed}"

    def read_config(self) -> RunConfig | None:
        """Return the saved config, or None for a new run directory."""
        file = self.path / CONFIG_FILE
        return RunConfig.from_dict(json.loads(file.read_text())) if file.is_file() else None

    def prepare(self, config: RunConfig) -> None:
        """Create or reopen the run directory; refuse one made with different settings."""
        saved = self.read_config()
        if saved is not None:
            old, new = saved.identity(), config.identity()
            diff = [k for k in new if old.get(k) != new[k]]
            if diff:
                detail = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff)
                raise RunDirError(
                    f"{self.path} holds a run with other settings ({detail}); "
                    "use the same options to resume it, or another --out"
                )
            methods = [*saved.methods, *(m for m in config.methods if m not in saved.methods)]
            config = dataclasses.replace(config, methods=methods)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / CONFIG_FILE, config.to_dict())

    def check_environment(self, bundle: Any) -> None:
        """Record which built environment the run uses; refuse to resume it on another one.

        Rebuilding an environment (new data, new build code) changes ratings and users: a
        resumed run would silently mix two simulators.
        """
        manifest = Path(bundle.path) / "manifest.json" if bundle.path else None
        env = {
            "environment": Path(bundle.path).name if bundle.path else None,
            "manifest_sha256": sha256_file(manifest) if manifest and manifest.is_file() else None,
            # Whether the user's own logged items could be recommended (issue 11): it moves scores.
            "logged_items": getattr(bundle.config, "logged_items", None),
        }
        file = self.path / ENVIRONMENT_FILE
        if file.is_file():
            saved = json.loads(file.read_text())
            if saved != env:
                raise RunDirError(
                    f"{self.path} was run on environment {saved['environment']} "
                    f"(manifest {str(saved['manifest_sha256'])[:12]}), but the environment is "
                    f"now {env['environment']} (manifest {str(env['manifest_sha256'])[:12]}): "
                    "it was rebuilt; start a new run with another --out"
                )
            return
        atomic_write_json(file, env)

    def add_time(self, method: str, seconds: float) -> None:
        """Accumulate a method's wall time over the invocations that ran it."""
        file = self.path / TIMINGS_FILE
        timings = json.loads(file.read_text()) if file.is_file() else {}
        timings[method] = round(timings.get(method, 0.0) + seconds, 3)
        atomic_write_json(file, timings)


def restore_memory(seed_dir: Path) -> int:
    """Reset the memory folder to the last committed snapshot; return the batches it holds."""
    memory = seed_dir / "memory"
    state_file = seed_dir / LEARNED_FILE
    if memory.exists():
        shutil.rmtree(memory)
    if not state_file.is_file():
        return 0
    state = json.loads(state_file.read_text())
    snapshot = seed_dir / "snapshots" / state["snapshot"]
    if not snapshot.is_dir():
        raise RunDirError(f"{state_file} names snapshot {snapshot}, which is missing")
    shutil.copytree(snapshot, memory)
    return int(state["batches"])


def commit_memory(seed_dir: Path, memories: Any, batches: int, phase: str) -> None:
    """Save memories, snapshot them, then name the snapshot in learned.json (atomic)."""
    memories.save()
    snapshots = seed_dir / "snapshots"
    name = f"b{batches:04d}-{phase}"
    tmp = snapshots / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(seed_dir / "memory", tmp)
    if (snapshots / name).exists():
        shutil.rmtree(snapshots / name)
    tmp.rename(snapshots / name)
    atomic_write_json(
        seed_dir / LEARNED_FILE, {"batches": batches, "snapshot": name, "phase": phase}
    )
    # Keep the newest snapshot and the last one of training (what the test phase started from).
    keep = {name}
    trains = sorted(p.name for p in snapshots.iterdir() if p.name.endswith("-train"))
    if trains:
        keep.add(trains[-1])
    for old in snapshots.iterdir():
        if old.name not in keep and not old.name.startswith("."):
            shutil.rmtree(old)


async def learn_from(res: Any, ctx: Context, record: dict[str, Any]) -> None:
    """Write one finished episode's lessons, exactly as the critic and reflector nodes do."""
    await learn_episode(res, ctx.critic, ctx.gamma, record)
