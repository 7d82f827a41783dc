"""What the RL agents see and how their action becomes an item; training and testing share it.

Observation, all from what a recommender logs (never the simulator's ratings):
- the user's logged history: the mean of the training model's item vectors over it, and its last
  `n_last` items (so a user with history is told apart from another: the agents personalize);
- the episode window: the vectors of the last `window` recommended items and their ratings / 5;
- the share of the episode elapsed;
- K candidate items, each with a few scalars (history score, item bias, distance to the window
  over the learner's tau, whether that distance is safe, whether the candidate is valid).

Action: one of the K candidates (`Discrete(K)`) — RL re-ranking a candidate set, as RL4Rec work
does at catalogue scale: the action space does not grow with the 13k Amazon items, DQN applies
as is, and every action is a legal item. Items are ranked per user by a history score (mean
vector of the user's logged items and of this episode's accepted ones, as item-CF folds them in,
dotted with each item vector, plus the item bias; all of the *training* model); excluded items
(the user's logged items when the env excludes them) and items already recommended are never
candidates. Each step every item is checked against the window (one matmul on unit vectors, as
item-CF's full scan does): the K candidates are the best-ranked safe items, then unsafe ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from simulator.env import BatchState

N_CAND_FEATURES = 5
_UNSAFE = 256.0  # key offset of unsafe items: above any standardized score's range


def item_features(item_vectors: Tensor) -> Tensor:
    """Return the vectors the agent sees: scaled to unit RMS entry, plus a zero row for padding.

    Scaling keeps features O(1) whatever the user model's embedding scale; row `n_items` (the
    env's padding id) maps to zeros.
    """
    vectors = item_vectors.detach().to(torch.float32)
    rms = vectors.square().mean().sqrt().clamp_min(1e-8)
    return torch.cat([vectors / rms, torch.zeros(1, vectors.shape[1])]).contiguous()


@dataclass
class UserContext:
    """Per-row data of an episode: history features, the item ranking and the window's geometry."""

    history: Tensor
    """[B, (1 + n_last) * d]: mean history features, then the last logged items' features."""
    score: Tensor
    """[B, I] history scores standardized per row; -inf for excluded items."""
    key: Tensor
    """[B, I] sort key of the ranking: -score (clamped), inf once an item is excluded or used."""
    ring: Tensor
    """[B, W, I] cosine of every item to this episode's item of step t in slot (t - 1) % W
    (-2 while empty): the window's similarities, one new row per step instead of W."""
    ring_step: Tensor
    """[B] the step up to which `ring` is filled."""
    taste: Tensor
    """[B, d] sum of the training model's vectors of the user's logged items."""
    count: Tensor
    """[B, 1] how many logged items `taste` sums."""
    session: Tensor
    """[B, d] sum of the vectors of this episode's recommended (hence accepted) items."""
    scale: Tensor
    """[B, 2] mean and std of the row's start-of-episode scores (to standardize later ones)."""


@dataclass(frozen=True, eq=False)
class Encoder:
    """Turn batched-env state into observations and candidates, the same way in every world.

    `vectors` [I, d] are the training model's raw item vectors and `item_bias` [I] its item
    biases (what the history score uses); `distance_vectors` and `tau` are the learner's
    similarity geometry (the training model's unit vectors and tau with a margin, as item-CF
    uses). `excluded(users)` returns a [B, I] mask of items never to recommend (the build's
    `EnvBundle.excluded_mask`: logged items under `logged_items="exclude"`); the env state's own
    `excluded` mask is honoured too.
    """

    vectors: Tensor
    item_bias: Tensor
    distance_vectors: Tensor
    tau: float
    histories: Mapping[int, Sequence[int]]
    excluded: Callable[[Tensor], Tensor] | None
    window: int
    max_steps: int
    n_candidates: int = 16
    n_last: int = 2

    def __post_init__(self) -> None:
        n = self.vectors.shape[0]
        if self.item_bias.shape != (n,) or self.distance_vectors.shape[0] != n:
            raise ValueError("Encoder: vectors, item_bias and distance_vectors disagree on items")
        if self.n_candidates < 1 or self.n_last < 0:
            raise ValueError("Encoder needs n_candidates >= 1 and n_last >= 0")
        object.__setattr__(self, "features", item_features(self.vectors))
        bias = self.item_bias.detach().float()
        object.__setattr__(self, "bias_z", (bias - bias.mean()) / bias.std().clamp_min(1e-8))

    @property
    def n_items(self) -> int:
        return self.vectors.shape[0]

    @property
    def obs_dim(self) -> int:
        d = self.vectors.shape[1]
        return (
            (1 + self.n_last + self.window) * d
            + self.window
            + 1
            + self.n_candidates * (N_CAND_FEATURES)
        )

    def start(self, users: Tensor | Sequence[int]) -> UserContext:
        """Compute each user's history features and item ranking (once per episode)."""
        users = torch.as_tensor(users, dtype=torch.long).reshape(-1)
        b, n, d = users.numel(), self.n_items, self.vectors.shape[1]
        logs = [list(self.histories.get(int(u), ())) for u in users.tolist()]
        lengths = torch.tensor([len(h) for h in logs], dtype=torch.long)
        flat = torch.tensor([i for h in logs for i in h], dtype=torch.long)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n):
            raise ValueError(f"Encoder: history item ids must lie in [0, {n})")
        owner = torch.repeat_interleave(torch.arange(b), lengths)
        count = lengths.clamp_min(1).unsqueeze(1).float()
        taste = torch.zeros(b, d).index_add_(0, owner, self.vectors[flat])
        raw = taste / count
        mean = torch.zeros(b, d).index_add_(0, owner, self.features[flat]) / count  # type: ignore[attr-defined]
        last = torch.full((b, self.n_last), n, dtype=torch.long)
        for row, h in enumerate(logs):
            tail = h[-self.n_last :] if self.n_last else []
            if tail:
                last[row, self.n_last - len(tail) :] = torch.tensor(tail)
        history = torch.cat([mean, self.features[last].view(b, -1)], 1)  # type: ignore[attr-defined]
        scores = raw @ self.vectors.T + self.item_bias
        if self.excluded is not None:
            scores.masked_fill_(self.excluded(users), -math.inf)
        finite = torch.isfinite(scores)
        kept = scores.masked_fill(~finite, 0.0)
        k = finite.sum(1, keepdim=True).clamp_min(1)
        mu = kept.sum(1, keepdim=True) / k
        sd = ((kept - mu).square() * finite).sum(1, keepdim=True).div(k).sqrt().clamp_min(1e-6)
        z = ((scores - mu) / sd).masked_fill(~finite, -math.inf)
        key = (-z).clamp(-_UNSAFE / 2, _UNSAFE / 2)  # so safe keys stay below unsafe ones
        key = key.masked_fill(~finite, math.inf)
        ring = torch.full((b, self.window, n), -2.0)
        steps = torch.zeros(b, dtype=torch.long)
        return UserContext(
            history=history, score=z, key=key, ring=ring, ring_step=steps, taste=taste,
            count=lengths.unsqueeze(1).float(), session=torch.zeros(b, d),
            scale=torch.cat([mu, sd], 1),
        )  # fmt: skip

    def _fill_ring(self, ctx: UserContext, state: BatchState) -> None:
        """Add the cosines of items recommended since the last call to each row's ring."""
        w = self.window
        if bool((state.step < ctx.ring_step).any()):
            raise ValueError("Encoder: a row restarted without start(); call start() per episode")
        gap = state.step - ctx.ring_step
        if not bool(gap.any()):
            return
        far = (gap > w).nonzero().squeeze(1)  # steps older than the window were not seen
        if far.numel():
            ctx.key[far] = ctx.key[far].masked_fill(state.recommended[far], math.inf)
            ctx.session[far] = state.recommended[far].float() @ self.vectors
        # Window position j holds the item of step t - (w - 1 - j); fill the missing steps.
        for j in range(w):
            item_step = state.step - (w - 1 - j)
            rows = ((item_step > ctx.ring_step) & (item_step >= 1)).nonzero().squeeze(1)
            if rows.numel():
                items = state.window_items[rows, j]
                cos = self.distance_vectors.index_select(0, items) @ self.distance_vectors.T
                ctx.ring[rows, (item_step[rows] - 1) % w] = cos
                ctx.key[rows, items] = math.inf  # recommended: never again
                near = gap[rows] <= w  # far rows got their session sum above
                ctx.session[rows[near]] += self.vectors[items[near]]
        self._rescore(ctx, state, gap.nonzero().squeeze(1))
        ctx.ring_step.copy_(state.step)

    def _rescore(self, ctx: UserContext, state: BatchState, rows: Tensor) -> None:
        """Re-rank `rows` by the mean of logged and episode items, as item-CF folds them in.

        The episode's items are part of what the user showed they like (every recommended item
        of a running episode was accepted); scores stay standardized by the start-of-episode
        mean and std, and excluded or used items keep their infinite key.
        """
        n_seen = ctx.count[rows] + state.step[rows].unsqueeze(1).float()
        taste = (ctx.taste[rows] + ctx.session[rows]) / n_seen.clamp_min(1.0)
        mu, sd = ctx.scale[rows, :1], ctx.scale[rows, 1:]
        z = (taste @ self.vectors.T + self.item_bias - mu) / sd
        blocked = ~torch.isfinite(ctx.key[rows])
        excluded = ~torch.isfinite(ctx.score[rows])
        ctx.score[rows] = z.masked_fill(excluded, -math.inf)
        key = (-z).clamp(-_UNSAFE / 2, _UNSAFE / 2)
        ctx.key[rows] = key.masked_fill(blocked, math.inf)

    def encode(self, ctx: UserContext, state: BatchState) -> tuple[Tensor, Tensor, Tensor]:
        """Return (observations [B, D], candidate items [B, K], valid [B, K])."""
        b, n = ctx.score.shape
        k = min(self.n_candidates, n)
        # Unit vectors: distance >= tau  <=>  cosine <= 1 - tau^2 / 2.
        self._fill_ring(ctx, state)
        near = ctx.ring.amax(1)  # [B, I]
        safe = near <= 1.0 - self.tau**2 / 2.0
        # Safe items by score, then unsafe ones by score; never a used or excluded one.
        key = torch.where(safe, ctx.key, ctx.key + _UNSAFE)
        cand = key.topk(k, dim=1, largest=False).indices
        valid = torch.isfinite(key.gather(1, cand))
        taken = getattr(state, "unavailable", None)  # the env's own exclusions, if it has them
        if taken is not None:
            valid &= ~taken.gather(1, cand)
        score = ctx.score.gather(1, cand).masked_fill(~valid, -3.0)
        near_cand = near.gather(1, cand)
        dist = (2.0 - 2.0 * near_cand).clamp_min(0.0).sqrt().masked_fill(near_cand < -1.5, math.inf)
        cand_feats = torch.stack(
            [
                score.clamp(-3.0, 3.0),
                self.bias_z[cand],  # type: ignore[attr-defined]
                (dist / max(self.tau, 1e-8)).clamp(max=3.0),
                safe.gather(1, cand).float(),
                valid.float(),
            ],
            -1,
        )
        if k < self.n_candidates:  # tiny catalogues: pad with invalid candidates
            pad = self.n_candidates - k
            cand_feats = torch.cat([cand_feats, torch.zeros(b, pad, N_CAND_FEATURES)], 1)
            cand = torch.cat([cand, cand[:, :1].expand(b, pad)], 1)
            valid = torch.cat([valid, torch.zeros(b, pad, dtype=torch.bool)], 1)
        window = self.features.index_select(0, state.window_items.reshape(-1)).view(b, -1)  # type: ignore[attr-defined]
        obs = torch.cat(
            [
                ctx.history,
                window,
                state.window_ratings.float() / 5.0,
                state.step.float().unsqueeze(1) / self.max_steps,
                cand_feats.view(b, -1),
            ],
            1,
        )
        return obs, cand, valid

    def items(self, cand: Tensor, valid: Tensor, actions: Tensor, active: Tensor) -> Tensor:
        """Map candidate indices to items; an invalid choice becomes the first valid candidate."""
        actions = actions.long().clamp(0, cand.shape[1] - 1).unsqueeze(1)
        ok = valid.gather(1, actions).squeeze(1)
        stuck = active & ~valid.any(1)
        if bool(stuck.any()):
            raise ValueError(
                f"row {int(stuck.nonzero()[0])}: no candidate left (all used or excluded)"
            )
        best = valid.int().argmax(1, keepdim=True)
        chosen = torch.where(ok.unsqueeze(1), actions, best)
        return cand.gather(1, chosen).squeeze(1)
