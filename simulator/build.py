"""Build a dataset's train and test environments once, cache them, and describe them in a card.

The reference BiLLP never published how its reward and distance matrices were made. Here every
step is explicit and reproducible from raw files: load -> split users -> fit a ground-truth user
model on all logged data and a train model on training users only -> calibrate scores to ratings
-> pick tau from a percentile of item distances -> evaluate the reference policies on test users.
Artifacts are keyed by the input files' checksums and the config, so a changed input rebuilds.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from simulator.calibration import RatingCalibrator
from simulator.card import PopularityScorer, make_card
from simulator.datasets import dataset_sources, load_dataset
from simulator.env import BatchedRecEnv, RecEnv, UserWorld, distance_threshold
from simulator.logged import Exclusions, LoggedItems, check_mode
from simulator.paths import cache_dir
from simulator.policies import (
    ItemCFPolicy,
    OraclePolicy,
    PopularityPolicy,
    RandomPolicy,
)
from simulator.types import Dataset
from simulator.user_model import (
    UserModel,
    UserModelConfig,
    evaluate_leave_last_out,
    leave_last_out,
    train_user_model,
)
from storage.files import atomic_write_json, sha256_bytes, sha256_file

log = logging.getLogger(__name__)


def distance_vectors(model: UserModel) -> torch.Tensor:
    """Return the unit-length item vectors that define item distance in the quit rule.

    Directions, not raw MF vectors: an MF item vector's norm grows with its popularity, so raw
    Euclidean distance made popular items never "too similar" and rare items (short vectors near
    the origin) always similar to each other. On unit vectors the distance is a cosine distance:
    items liked by the same users are close whatever their popularity.
    """
    with torch.inference_mode():
        vectors = model.item_vectors().detach().float()
        return torch.nn.functional.normalize(vectors, dim=1).clone()


# Bump when the build logic changes in a way that changes artifacts: old caches then rebuild.
BUILD_VERSION = 4
# Learners know only the training model's geometry, not the true tau: they keep a margin.
LEARNER_TAU_MARGIN = 1.5
Split = Literal["train", "test"]
Progress = Callable[[str, float], None]


@dataclass(kw_only=True)
class EnvConfig:
    """Everything that determines a built environment (and so its cache key)."""

    dataset: str = "synthetic"
    """Dataset name: steam, amazon, csv or synthetic."""
    seed: int = 0
    """Seed of the user split, model training and policy evaluation."""
    test_fraction: float = 0.2
    """Share of users held out for the test environment."""
    min_split_users: int = 100
    """Each side of the split gets at least this many users (when the dataset has them)."""
    tau_percentile: float = 2.0
    """tau = this percentile of item-item (cosine) distances: lower means fewer similarity quits.

    2 keeps the rule biting (popularity, which serves look-alike blockbusters, quits at step 2)
    while a learner that diversifies can keep users for long sessions; see BENCHMARKS.md."""
    window: int = 4
    """How many of this episode's latest recommendations the similarity rule compares against."""
    max_steps: int = 50
    """Episodes are truncated after this many steps."""
    user_model: dict[str, Any] = field(default_factory=dict)
    """Overrides of `UserModelConfig` fields (kind, dim, epochs, ...)."""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """Loader options (e.g. synthetic sizes, csv paths)."""
    logged_items: LoggedItems = "exclude"
    """Whether items in a user's logged history may be recommended to them.

    "exclude" (default): never - both envs refuse them, and candidates, grounding and every
    baseline skip them. The ground-truth model was fit on those very logs, so echoing them back
    earns "exact hits" no real recommender gets (a real one does not re-sell a game the user
    owns). "allow": reference-style runs, where replaying the log is allowed (and rewarded)."""

    def __post_init__(self) -> None:
        check_mode(self.logged_items)

    def key(self, data_dir: str | Path | None) -> str:
        """Return the cache key: config + input checksums + build version."""
        sources = dataset_sources(self.dataset, data_dir, **self.dataset_options)
        payload = {
            "version": BUILD_VERSION,
            "config": asdict(self),
            "sources": sorted((p.name, sha256_file(p)) for p in sources),
        }
        return sha256_bytes(json.dumps(payload, sort_keys=True, default=str).encode())[:16]


@dataclass
class EnvBundle:
    """A built dataset: both environments, the models behind them, the user split and the card."""

    config: EnvConfig
    dataset: Dataset
    train_users: list[int]
    test_users: list[int]
    gt_model: UserModel
    train_model: UserModel
    gt_calibrator: RatingCalibrator
    train_calibrator: RatingCalibrator
    tau: float
    train_tau: float
    card: dict[str, Any]
    path: Path | None = None

    def users(self, split: Split) -> list[int]:
        """Return the global user ids of a split."""
        return self.train_users if split == "train" else self.test_users

    @cached_property
    def histories(self) -> dict[int, list[int]]:
        """Return each user's logged positive items in time order (what agents are shown)."""
        pos = self.dataset.interactions
        pos = pos[pos["signal"] > 0]
        users, order = pos["user"].to_numpy(np.int64), pos["order"].to_numpy()
        items = pos["item"].to_numpy(np.int64)
        rows = np.lexsort((order, users))  # numpy, not a pandas groupby: ~100x faster at start-up
        users, items = users[rows], items[rows]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if users.size else users
        chunks = np.split(items, starts[1:])
        return {int(users[s]): c.tolist() for s, c in zip(starts, chunks, strict=True)}

    @cached_property
    def train_interactions(self) -> pd.DataFrame:
        """Return the logged interactions of training users: all that learners may read."""
        inter = self.dataset.interactions
        return inter[inter["user"].isin(self.train_users)]

    @cached_property
    def popularity(self) -> torch.Tensor:
        """Return per-item positive counts in the training logs."""
        pos = self.train_interactions
        pos = pos[pos["signal"] > 0]
        counts = np.bincount(pos["item"].to_numpy(), minlength=self.dataset.n_items)
        return torch.as_tensor(counts, dtype=torch.float32)

    @cached_property
    def _logged(self) -> Exclusions:
        """Every user's logged items (any signal), one CSR row per dataset user id."""
        ds = self.dataset
        return Exclusions.from_interactions(ds.interactions, range(ds.n_users), ds.n_items)

    def logged(self, user: int) -> frozenset[int]:
        """Return every item the user logged (positive or negative), whatever `logged_items`."""
        if not 0 <= int(user) < self.dataset.n_users:
            raise ValueError(f"user {user} is not a user of {self.dataset.name}")
        return self._logged.row(int(user))

    def excluded(self, user: int) -> frozenset[int]:
        """Return the items that may never be recommended to the user (none under "allow")."""
        return self.logged(user) if self.config.logged_items == "exclude" else frozenset()

    def excluded_mask(self, users: torch.Tensor | list[int]) -> torch.Tensor:
        """Return a [B, n_items] bool mask of `excluded` per user, for batched policies / RL."""
        ids = torch.as_tensor(users, dtype=torch.long).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.dataset.n_users):
            raise ValueError(f"users must be ids of {self.dataset.name} users")
        if self.config.logged_items != "exclude":
            return torch.zeros(ids.numel(), self.dataset.n_items, dtype=torch.bool)
        return self._logged.mask(ids)

    def world(self, split: Split) -> UserWorld:
        """Return a split's rating world (train: train model, continuous; test: ground truth)."""
        cache = self.__dict__.setdefault("_worlds", {})
        if split not in cache:
            cache[split] = _make_world(self, split)
        return cache[split]

    def make_env(self, split: Split = "test") -> RecEnv:
        """Return a Gymnasium environment over the split's users."""
        return RecEnv(self.world(split), users=self.users(split))

    def make_batched_env(self, split: Split = "test") -> BatchedRecEnv:
        """Return the vectorized environment of a split."""
        return BatchedRecEnv(self.world(split))


def _make_world(bundle: EnvBundle, split: Split) -> UserWorld:
    users = bundle.users(split)
    model = bundle.gt_model if split == "test" else bundle.train_model
    calibrator = bundle.gt_calibrator if split == "test" else bundle.train_calibrator
    with torch.inference_mode():
        scores = model.score_matrix(torch.as_tensor(users, dtype=torch.long))
        ratings = calibrator(scores, integer=(split == "test"))
        vectors = distance_vectors(model)
    return UserWorld(
        ratings=ratings.float().contiguous(),
        item_vectors=vectors,
        tau=bundle.tau if split == "test" else bundle.train_tau,
        user_ids=torch.as_tensor(users, dtype=torch.long),
        window=bundle.config.window,
        max_steps=bundle.config.max_steps,
        excluded=bundle._logged.subset(users) if bundle.config.logged_items == "exclude" else None,
    )


def split_users(dataset: Dataset, config: EnvConfig) -> tuple[list[int], list[int]]:
    """Split users into disjoint train and test sets, seeded; each side >= min_split_users."""
    pos = dataset.interactions[dataset.interactions["signal"] > 0]
    eligible = np.sort(pos["user"].unique())
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(eligible)
    n_test = max(round(len(perm) * config.test_fraction), config.min_split_users)
    n_test = min(n_test, len(perm) // 2)
    return sorted(perm[n_test:].tolist()), sorted(perm[:n_test].tolist())


def _random_pairs_scores(model: UserModel, users: list[int], n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.as_tensor(users)[torch.randint(len(users), (n,), generator=gen)]
    i = torch.randint(model.n_items, (n,), generator=gen)
    with torch.inference_mode():
        return model.score(u, i)


def _fit(
    name: str,
    inter: pd.DataFrame,
    dataset: Dataset,
    users: list[int],
    mconf: UserModelConfig,
    seed: int,
    progress: Progress | None,
) -> tuple[UserModel, RatingCalibrator, dict[str, Any], dict[str, torch.Tensor]]:
    """Fit one user model with the last positive of each user held out; calibrate its ratings."""
    train_df, heldout = leave_last_out(inter)

    def report(epoch: int, epochs: int, loss: float) -> None:
        if progress:
            progress(f"{name} model: epoch {epoch}/{epochs} loss {loss:.4f}", epoch / epochs)

    model = train_user_model(train_df, dataset.n_users, dataset.n_items, mconf, progress=report)
    model.eval()
    quality = evaluate_leave_last_out(model, heldout, train_df, dataset.n_items, seed=seed)
    # Same held-out items, same negatives (same seed): the margin over popularity is fair.
    popularity = PopularityScorer(train_df, dataset.n_items)
    quality["popularity_auc"] = evaluate_leave_last_out(
        popularity,  # type: ignore[arg-type]
        heldout,
        train_df,
        dataset.n_items,
        seed=seed,
    )["auc"]
    with torch.inference_mode():
        pos_scores = model.score(
            torch.as_tensor(heldout["user"].to_numpy(copy=True)),
            torch.as_tensor(heldout["item"].to_numpy(copy=True)),
        )
    rand_scores = _random_pairs_scores(model, users, 20_000, seed)
    calibrator = RatingCalibrator.fit(pos_scores, rand_scores)
    return model, calibrator, quality, {"positives": pos_scores, "random": rand_scores}


def build_env(
    config: EnvConfig,
    data_dir: str | Path | None = None,
    *,
    cache: str | Path | None = None,
    rebuild: bool = False,
    progress: Progress | None = None,
) -> EnvBundle:
    """Return the built environments of `config`, from cache when inputs and config match."""
    root = cache_dir(cache) / "envs"
    path = root / f"{config.dataset}-{config.key(data_dir)}"
    if not rebuild and (path / "manifest.json").is_file():
        try:
            return load_env(path, data_dir)
        except (OSError, ValueError) as err:
            log.warning("Cached environment at %s is unusable (%s); rebuilding it.", path, err)
    bundle = _build(config, data_dir, progress)
    _save(bundle, path)
    bundle.path = path
    return bundle


def _build(config: EnvConfig, data_dir: str | Path | None, progress: Progress | None) -> EnvBundle:
    started = time.perf_counter()
    say = progress or (lambda msg, frac: None)
    say(f"loading {config.dataset}", 0.0)
    dataset = load_dataset(config.dataset, data_dir, **config.dataset_options)
    train_users, test_users = split_users(dataset, config)
    mconf = UserModelConfig.from_dict({"seed": config.seed, **config.user_model})
    inter = dataset.interactions
    gt_model, gt_cal, gt_q, gt_scores = _fit(
        "ground-truth", inter, dataset, test_users, mconf, config.seed, progress
    )
    train_inter = inter[inter["user"].isin(train_users)]
    train_model, train_cal, train_q, _ = _fit(
        "train", train_inter, dataset, train_users, mconf, config.seed, progress
    )
    with torch.inference_mode():
        tau = distance_threshold(
            distance_vectors(gt_model), config.tau_percentile, seed=config.seed
        )
        train_tau = distance_threshold(
            distance_vectors(train_model), config.tau_percentile, seed=config.seed
        )
    bundle = EnvBundle(
        config=config,
        dataset=dataset,
        train_users=train_users,
        test_users=test_users,
        gt_model=gt_model,
        train_model=train_model,
        gt_calibrator=gt_cal,
        train_calibrator=train_cal,
        tau=float(tau),
        train_tau=float(train_tau),
        card={},
    )
    say("evaluating reference policies", 0.95)
    policies = reference_policies(bundle, "test")
    bundle.card = make_card(bundle, gt_q, train_q, gt_scores, policies)
    bundle.card["build_seconds"] = round(time.perf_counter() - started, 1)
    return bundle


def reference_policies(bundle: EnvBundle, split: Split = "test") -> dict[str, Any]:
    """Return the four reference policies for a split, built from training logs (oracle aside)."""
    world = bundle.world(split)
    return {
        "random": RandomPolicy(bundle.dataset.n_items, seed=bundle.config.seed),
        "popularity": PopularityPolicy(bundle.popularity),
        "itemcf": ItemCFPolicy(
            bundle.train_interactions,
            bundle.dataset.n_items,
            history=bundle.histories,
            item_vectors=distance_vectors(bundle.train_model),
            tau=bundle.train_tau * LEARNER_TAU_MARGIN,
        ),
        "oracle": OraclePolicy(world),
    }


def _save(bundle: EnvBundle, path: Path) -> None:
    """Write artifacts, then a manifest of their checksums last (its presence means complete)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    bundle.gt_model.save(path / "gt_model")
    bundle.train_model.save(path / "train_model")
    atomic_write_json(
        path / "build.json",
        {
            "config": asdict(bundle.config),
            "train_users": bundle.train_users,
            "test_users": bundle.test_users,
            "gt_calibrator": bundle.gt_calibrator.to_dict(),
            "train_calibrator": bundle.train_calibrator.to_dict(),
            "tau": bundle.tau,
            "train_tau": bundle.train_tau,
        },
    )
    atomic_write_json(path / "card.json", bundle.card)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    checksums = {str(p.relative_to(path)): sha256_file(p) for p in files}
    atomic_write_json(path / "manifest.json", {"version": BUILD_VERSION, "files": checksums})


def load_env(path: str | Path, data_dir: str | Path | None = None) -> EnvBundle:
    """Load a built environment, verifying every artifact against the manifest's checksums."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError(f"'files' is a {type(files).__name__}, not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path / 'manifest.json'} is unreadable or incomplete ({err!r}); "
            "rebuild with `billp env build --rebuild`"
        ) from err
    if manifest.get("version") != BUILD_VERSION:
        raise ValueError(
            f"{path} was built by build version {manifest.get('version')}, this code is "
            f"{BUILD_VERSION}; rebuild with `billp env build --rebuild`"
        )
    for rel, digest in files.items():
        if not (path / rel).is_file() or sha256_file(path / rel) != digest:
            raise ValueError(
                f"{path / rel} is missing or corrupt; rebuild with `billp env build --rebuild`"
            )
    meta = json.loads((path / "build.json").read_text())
    config = EnvConfig(**meta["config"])
    dataset = load_dataset(config.dataset, data_dir, **config.dataset_options)
    return EnvBundle(
        config=config,
        dataset=dataset,
        train_users=meta["train_users"],
        test_users=meta["test_users"],
        gt_model=UserModel.load(path / "gt_model"),
        train_model=UserModel.load(path / "train_model"),
        gt_calibrator=RatingCalibrator.from_dict(meta["gt_calibrator"]),
        train_calibrator=RatingCalibrator.from_dict(meta["train_calibrator"]),
        tau=float(meta["tau"]),
        train_tau=float(meta["train_tau"]),
        card=json.loads((path / "card.json").read_text()),
        path=path,
    )
