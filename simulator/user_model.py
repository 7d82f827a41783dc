"""Fit the torch user model that is the simulator's ground truth, and measure how well it ranks.

Training is pointwise binary cross-entropy on positives plus uniformly sampled negatives
("pointneg", as DORL and EasyRL4Rec train their user models) rather than BPR: the environment
turns one absolute score per (user, item) into a rating, so scores must be comparable across
users, which a per-user pairwise loss does not ask for. Positives are weighted by their signal
strength; explicit negatives (signal < 0) are labeled negatives.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from simulator.types import DataError
from storage.files import atomic_write_bytes, atomic_write_json

WEIGHTS_FILE = "user_model.safetensors"
CONFIG_FILE = "user_model.json"
_FORMAT = 1


class ModelFileError(DataError):
    """A saved user model is missing, truncated or does not match its config; rebuild it."""


@dataclass
class UserModelConfig:
    """Hyper-parameters of a user model; JSON-native so a build can be keyed and reproduced."""

    kind: str = "mf"
    """"mf" (dot product plus biases) or "deepfm" (FM term plus an MLP over both embeddings)."""
    dim: int = 32
    """Embedding size; item embeddings are also the item vectors used for item distance."""
    epochs: int = 10
    lr: float = 0.01
    """Adam learning rate."""
    batch_size: int = 4096
    n_negatives: int = 4
    """Uniformly sampled negatives per logged positive, each epoch afresh."""
    weight_decay: float = 1e-2
    """L2 penalty on the embeddings a batch touches (frequent users/items shrink more often)."""
    seed: int = 0
    hidden: int = 64
    """Width of the DeepFM MLP (unused by "mf")."""

    def __post_init__(self) -> None:
        if self.kind not in ("mf", "deepfm"):
            raise ValueError(f"UserModelConfig.kind must be 'mf' or 'deepfm', got {self.kind!r}")
        for name in ("dim", "epochs", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"UserModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_negatives < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                "UserModelConfig needs n_negatives >= 0, lr > 0 and weight_decay >= 0; got "
                f"{self.n_negatives}, {self.lr}, {self.weight_decay}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-native dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserModelConfig:
        """Build a config from a dict; unknown keys are an error so typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"UserModelConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


class UserModel(torch.nn.Module):
    """Score (user, item) pairs with logits; higher means the user is more likely to take it."""

    def __init__(self, n_users: int, n_items: int, config: UserModelConfig) -> None:
        super().__init__()
        self.n_users, self.n_items, self.config = n_users, n_items, config
        d = config.dim
        self.user_emb = torch.nn.Embedding(n_users, d)
        self.item_emb = torch.nn.Embedding(n_items, d)
        self.user_bias = torch.nn.Embedding(n_users, 1)
        self.item_bias = torch.nn.Embedding(n_items, 1)
        self.global_bias = torch.nn.Parameter(torch.zeros(1))
        torch.nn.init.normal_(self.user_emb.weight, std=0.1)
        torch.nn.init.normal_(self.item_emb.weight, std=0.1)
        torch.nn.init.zeros_(self.user_bias.weight)
        torch.nn.init.zeros_(self.item_bias.weight)
        if config.kind == "deepfm":
            self.mlp_user = torch.nn.Linear(d, config.hidden)
            self.mlp_item = torch.nn.Linear(d, config.hidden, bias=False)
            self.mlp_out = torch.nn.Sequential(
                torch.nn.ReLU(), torch.nn.Linear(config.hidden, config.hidden // 2),
                torch.nn.ReLU(), torch.nn.Linear(config.hidden // 2, 1),
            )  # fmt: skip

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return the logit of each (users[k], items[k]) pair."""
        u, i = self.user_emb(users), self.item_emb(items)
        out = (u * i).sum(-1) + self.user_bias(users)[:, 0] + self.item_bias(items)[:, 0]
        out = out + self.global_bias
        if self.config.kind == "deepfm":
            out = out + self.mlp_out(self.mlp_user(u) + self.mlp_item(i))[:, 0]
        return out

    @torch.no_grad()
    def score_matrix(self, users: torch.Tensor) -> torch.Tensor:
        """Return logits of every item for each user, shape [len(users), n_items]."""
        users = users.long()
        u = self.user_emb(users)
        out = u @ self.item_emb.weight.T + self.user_bias(users) + self.item_bias.weight[:, 0]
        out = out + self.global_bias
        if self.config.kind == "deepfm":
            hu, hi = self.mlp_user(u), self.mlp_item(self.item_emb.weight)
            # Chunk users so the [users, items, hidden] activations stay under ~64 MB.
            step = max(1, (1 << 24) // max(1, self.n_items * self.config.hidden))
            for s in range(0, len(users), step):
                hidden = hu[s : s + step, None, :] + hi[None, :, :]
                out[s : s + step] += self.mlp_out(hidden)[..., 0]
        return out

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """Return the item representations used for item–item distance, shape [n_items, dim]."""
        return self.item_emb.weight.detach().clone()

    def save(self, path_dir: str | Path) -> None:
        """Write weights (safetensors) and config (JSON) into `path_dir`, each atomically."""
        path_dir = Path(path_dir)
        path_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(path_dir / WEIGHTS_FILE, save_tensors(tensors))
        meta = {"format": _FORMAT, "n_users": self.n_users, "n_items": self.n_items}
        atomic_write_json(path_dir / CONFIG_FILE, {**meta, "config": self.config.to_dict()})

    @classmethod
    def load(cls, path_dir: str | Path) -> UserModel:
        """Load a model saved by `save`; a damaged or mismatched file raises ModelFileError."""
        path_dir = Path(path_dir)
        cfg_path, w_path = path_dir / CONFIG_FILE, path_dir / WEIGHTS_FILE
        rebuild = "delete the folder and rebuild the environment"
        try:
            meta = json.loads(cfg_path.read_text(encoding="utf-8"))
            config = UserModelConfig.from_dict(meta["config"])
            model = cls(int(meta["n_users"]), int(meta["n_items"]), config)
        except FileNotFoundError as e:
            raise ModelFileError(f"missing; {rebuild}", file=cfg_path) from e
        except (ValueError, KeyError, TypeError) as e:
            raise ModelFileError(f"unreadable config ({e}); {rebuild}", file=cfg_path) from e
        if meta.get("format") != _FORMAT:
            raise ModelFileError(
                f"format {meta.get('format')} != {_FORMAT}; {rebuild}", file=cfg_path
            )
        try:
            state = load_file(str(w_path))
        except FileNotFoundError as e:
            raise ModelFileError(f"missing; {rebuild}", file=w_path) from e
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelFileError(f"corrupt or truncated ({e}); {rebuild}", file=w_path) from e
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelFileError(
                f"does not match {CONFIG_FILE} ({e}); {rebuild}", file=w_path
            ) from e
        return model.eval()


@dataclass
class _Rows:
    """Validated training rows: positives with weights, explicit negatives."""

    pos_users: torch.Tensor
    pos_items: torch.Tensor
    pos_weights: torch.Tensor
    neg_users: torch.Tensor
    neg_items: torch.Tensor


def _training_rows(interactions: pd.DataFrame, n_users: int, n_items: int) -> _Rows:
    """Validate `interactions` and split them into weighted positives and explicit negatives."""
    for col in ("user", "item", "signal"):
        if col not in interactions.columns:
            raise DataError(f"interactions lack column {col!r}", field=col)
    users = interactions["user"].to_numpy(np.int64, copy=True)
    items = interactions["item"].to_numpy(np.int64, copy=True)
    signal = interactions["signal"].to_numpy(np.float64)
    for name, ids, n in (("user", users, n_users), ("item", items, n_items)):
        bad = np.flatnonzero((ids < 0) | (ids >= n))
        if len(bad):
            raise DataError(
                f"id {ids[bad[0]]} outside 0..{n - 1}",
                row=int(interactions.index[bad[0]]),
                field=name,
            )
    pos, neg = signal > 0, signal < 0
    if not pos.any():
        raise DataError("no positive interactions (signal > 0) to train on", field="signal")
    # Normalize strength to mean 1 and clip, so a few huge signals (e.g. playtime) cannot dominate.
    w = signal[pos] / signal[pos].mean()
    w = np.clip(w, 0.1, 5.0)
    t = torch.from_numpy
    return _Rows(t(users[pos]), t(items[pos]), t(w).float(), t(users[neg]), t(items[neg]))


def train_user_model(
    interactions: pd.DataFrame,
    n_users: int,
    n_items: int,
    config: UserModelConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> UserModel:
    """Train a user model on logged interactions; the same seed gives the same weights.

    Each epoch pairs every positive (weight = its signal / mean positive signal, clipped to
    [0.1, 5]) with `n_negatives` items drawn uniformly from those the user did not log, and adds
    explicit negatives as label-0 rows of weight 1. `progress(epoch, epochs, mean_loss)` is
    called after each epoch (epochs count from 1). Training runs on one thread (restored after).
    """
    rows = _training_rows(interactions, n_users, n_items)
    threads = torch.get_num_threads()
    # One thread: small embedding batches are dominated by thread synchronisation (10x+ slower
    # with 2 threads on a busy 2-core machine), and it keeps results independent of core count.
    torch.set_num_threads(1)
    try:
        return _train(rows, n_users, n_items, config, progress)
    finally:
        torch.set_num_threads(threads)


def _sample_negatives(
    users: torch.Tensor, logged: torch.Tensor, n_items: int, gen: torch.Generator
) -> torch.Tensor:
    """Draw one uniform item per user, redrawing (3 rounds) items the user logged.

    Without the redraw a dense catalogue (a user logging 10% of it) feeds that share of wrong
    labels; after 3 rounds the leftover collisions are negligible and kept.
    """
    items = torch.randint(0, n_items, (len(users),), generator=gen)
    for _ in range(3):
        keys = users * n_items + items
        pos = torch.searchsorted(logged, keys).clamp(max=len(logged) - 1)
        clash = torch.nonzero(logged[pos] == keys)[:, 0]
        if len(clash) == 0:
            break
        items[clash] = torch.randint(0, n_items, (len(clash),), generator=gen)
    return items


def _train(
    rows: _Rows,
    n_users: int,
    n_items: int,
    config: UserModelConfig,
    progress: Callable[[int, int, float], None] | None,
) -> UserModel:
    """Run the training loop of `train_user_model` on validated rows."""
    pu, pi, pw, nu, ni = (
        rows.pos_users, rows.pos_items, rows.pos_weights, rows.neg_users, rows.neg_items
    )  # fmt: skip
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = UserModel(n_users, n_items, config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    k = config.n_negatives
    ones, zeros = torch.ones(len(pu) + len(nu)), torch.zeros(len(pu) * k)
    fixed_u, fixed_i = torch.cat([pu, nu]), torch.cat([pi, ni])
    logged = torch.unique(fixed_u * n_items + fixed_i)
    fixed_w = torch.cat([pw, torch.ones(len(nu))])
    model.train()
    for epoch in range(1, config.epochs + 1):
        users = torch.cat([fixed_u, pu.repeat(k)])
        items = torch.cat([fixed_i, _sample_negatives(pu.repeat(k), logged, n_items, gen)])
        labels = torch.cat([ones, zeros])
        weights = torch.cat([fixed_w, torch.ones(len(pu) * k)])
        order = torch.randperm(len(users), generator=gen)
        total, seen = 0.0, 0
        for s in range(0, len(order), config.batch_size):
            idx = order[s : s + config.batch_size]
            bu, bi = users[idx], items[idx]
            logits = model.score(bu, bi)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels[idx], weight=weights[idx]
            )
            reg = model.user_emb(bu).pow(2).sum(-1) + model.item_emb(bi).pow(2).sum(-1)
            opt.zero_grad(set_to_none=True)
            (loss + config.weight_decay * reg.mean()).backward()
            opt.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        if progress is not None:
            progress(epoch, config.epochs, total / max(seen, 1))
    return model.eval()


def leave_last_out(interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off each user's last positive (highest `order`) for users with >= 2 positives."""
    pos = interactions[interactions["signal"] > 0]
    n_pos = pos.groupby("user")["item"].transform("size")
    eligible = pos[n_pos >= 2]
    last = eligible.loc[eligible.groupby("user")["order"].idxmax()]
    train = interactions.drop(index=last.index)
    return train, last.sort_values("user")


@torch.no_grad()
def evaluate_leave_last_out(
    model: UserModel,
    heldout: pd.DataFrame,
    train_positives: pd.DataFrame,
    n_items: int,
    n_negatives: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Rank each held-out positive against `n_negatives` items its user never interacted with.

    Negatives are drawn uniformly without replacement from items the user has no row for in
    `train_positives` (any signal) and that are not the held-out item. AUC counts a tie as half;
    HR@10 counts ties against the positive (a constant model scores HR@10 = 0, not 1).
    """
    if heldout.empty:
        raise DataError("no held-out rows to evaluate", field="user")
    h_users = heldout["user"].to_numpy(np.int64, copy=True)
    h_items = heldout["item"].to_numpy(np.int64, copy=True)
    seen_keys = np.unique(
        np.concatenate(
            [
                train_positives["user"].to_numpy(np.int64) * n_items
                + train_positives["item"].to_numpy(np.int64),
                h_users * n_items + h_items,
            ]
        )
    )
    rng = np.random.default_rng(seed)
    aucs, hits = [], []
    step = max(1, (1 << 22) // n_items)
    for s in range(0, len(h_users), step):
        users, pos_items = h_users[s : s + step], h_items[s : s + step]
        # Random keys, seen items pushed to +inf: the n smallest are a uniform sample without
        # replacement from each user's unseen items.
        keys = rng.random((len(users), n_items))
        grid = users[:, None] * n_items + np.arange(n_items)[None, :]
        seen = np.isin(grid, seen_keys, assume_unique=False)
        keys[seen] = np.inf
        n_unseen = (~seen).sum(1)
        if (n_unseen < n_negatives).any():
            u = int(users[np.argmax(n_unseen < n_negatives)])
            raise DataError(
                f"user {u} has only {n_unseen.min()} unseen items; lower n_negatives "
                f"(now {n_negatives})",
                field="user",
            )
        neg = np.argpartition(keys, n_negatives - 1, axis=1)[:, :n_negatives]
        scores = model.score_matrix(torch.from_numpy(users))
        s_pos = scores.gather(1, torch.from_numpy(pos_items)[:, None])
        s_neg = scores.gather(1, torch.from_numpy(neg))
        below = (s_neg < s_pos).float().sum(1) + 0.5 * (s_neg == s_pos).float().sum(1)
        aucs.append(below / n_negatives)
        hits.append(((s_neg >= s_pos).sum(1) < 10).float())
    auc, hr = torch.cat(aucs), torch.cat(hits)
    return {"auc": float(auc.mean()), "hr_at_10": float(hr.mean()), "n_users": len(h_users)}
