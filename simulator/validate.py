"""Does our simulator agree with the reference BiLLP's? Replay its logged episodes through ours.

Why: the reference never published its rating or distance matrices, so its GPT-3.5 run logs are
the only record of how its user behaved. Each mapped episode's *executed* items are replayed, in
order, through our ground-truth user and `judge` (the same quit rule the envs play); the two
users' ratings, lengths and quits are then compared. The logs are a judge only: no logged rating
is ever fed into a model. Episodes whose user does not map (all of Steam, the Amazon training
users) still feed the item-only checks, which need only our item geometry: would our similarity
rule have made their user leave where theirs stayed?

The replay world is built like the test env, over the mapped users: ground-truth ratings
calibrated to integers, `distance_vectors` of the ground-truth model, the build's tau, window and
max_steps, and logged items *allowed* (the reference allowed them; `logged_share` says how often
their agent recommended a user's own logged item).

An episode whose executed titles stop mapping at step t is replayed only up to t - 1, so "their"
Len and R_traj are taken over that same prefix (`theirs_full_log`: over the whole log). Ratings
are compared on the steps both users accepted; `popularity` adds the same correlation over every
mapped step (our rating of each, their rating of each continue), which does not depend on where
our user left.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from simulator.env import UserWorld
from simulator.reference_logs import (
    MIN_HISTORY_SHARE,
    MIN_HISTORY_TITLES,
    MIN_MATCH_MARGIN,
    MappedEpisode,
    RefEpisode,
    UserMatchMethod,
    map_episodes,
)
from simulator.rules import judge
from simulator.stats import confusion, hist, mean, pearson, share, spearman
from simulator.types import Dataset

if TYPE_CHECKING:
    from simulator.build import EnvBundle

UserSplit = tuple[int, Sequence[int]]
"""(modulus, residues): one subset per residue, of the episodes whose userid % modulus is it."""
_EXAMPLES = 10


@dataclass(frozen=True, eq=False)
class ReplaySim:
    """Our simulator as the replay needs it: geometry, rule parameters and the mapped users."""

    vectors: np.ndarray
    tau: float
    window: int
    max_steps: int
    world: UserWorld | None
    """Ratings of the mapped users (None when no user maps: item-only checks still run)."""
    popularity: np.ndarray
    """Per item, how many distinct users logged it positively."""
    logged: Callable[[int], frozenset[int]]
    """A dataset user's logged items."""


def positive_users(dataset: Dataset) -> np.ndarray:
    """Return per item the number of distinct users with a positive on it (pairs are unique)."""
    pos = dataset.interactions
    pos = pos.loc[pos["signal"] > 0, ["user", "item"]].drop_duplicates()
    return np.bincount(pos["item"].to_numpy(np.int64), minlength=dataset.n_items)


def replay_sim(bundle: EnvBundle, users: Sequence[int]) -> ReplaySim:
    """Return the replay's simulator: the test env's recipe, over `users`, logged items allowed."""
    from simulator.build import distance_vectors  # lazy: build imports a lot

    world = None
    with torch.inference_mode():
        vectors = distance_vectors(bundle.gt_model)
        if users:
            ids = torch.as_tensor(sorted(users), dtype=torch.long)
            ratings = bundle.gt_calibrator(bundle.gt_model.score_matrix(ids), integer=True)
            world = UserWorld(
                ratings=ratings.float().contiguous(),
                item_vectors=vectors,
                tau=bundle.tau,
                user_ids=ids,
                window=bundle.config.window,
                max_steps=bundle.config.max_steps,
            )
    return ReplaySim(
        vectors=vectors.numpy(),
        tau=float(bundle.tau),
        window=bundle.config.window,
        max_steps=bundle.config.max_steps,
        world=world,
        popularity=positive_users(bundle.dataset),
        logged=bundle.logged,
    )


@dataclass(frozen=True)
class Replay:
    """What our user did with one episode's executed items."""

    ratings: tuple[float, ...]
    """Our rating of each replayed step (the quitting one included)."""
    quit_t: int | None
    """The step our user left on (None: stayed to the end of the mapped sequence)."""
    reason: str | None

    @property
    def length(self) -> int:
        return len(self.ratings) - (self.quit_t is not None)

    @property
    def r_traj(self) -> float:
        return float(sum(self.ratings[: self.length]))


def replay(episode: MappedEpisode, sim: ReplaySim) -> Replay:
    """Replay the executed items of a user-mapped episode until our user quits."""
    if sim.world is None or episode.user.user is None:
        raise ValueError(f"episode {episode.ref.key!r}: its user is not mapped")
    row = sim.world.ratings[sim.world.row_of(episode.user.user)].numpy()
    ratings: list[float] = []
    for t, item in enumerate(episode.items, start=1):
        verdict = judge(
            float(row[item]),
            item,
            episode.items[: t - 1],
            sim.vectors,
            sim.tau,
            sim.window,
            sim.max_steps,
        )
        ratings.append(verdict.rating)
        if not verdict.accepted:
            return Replay(tuple(ratings), t, verdict.quit_reason)
        if verdict.quit_reason == "max_steps":
            break
    return Replay(tuple(ratings), None, None)


def similar_quit(items: Sequence[int], t: int, sim: ReplaySim) -> bool:
    """Whether our similarity rule (repeats included) quits on step t of an executed sequence."""
    recent = list(items[max(0, t - 1 - sim.window) : t - 1])
    if t < 2 or not recent:
        return False
    item = items[t - 1]
    diff = sim.vectors[recent] - sim.vectors[item]
    distance = float(np.sqrt(np.square(diff).sum(-1)).min())
    return item in recent or np.float32(distance) < np.float32(sim.tau)


# --- the metrics ----------------------------------------------------------------------------


def _theirs(ep: MappedEpisode, *, full: bool = False) -> tuple[int, float]:
    """Return their Len and R_traj, over the mapped prefix (what we replay) or the whole log."""
    steps = ep.ref.steps if full else ep.ref.steps[: len(ep.items)]
    kept = [s.reward or 0.0 for s in steps if not s.quit]
    return len(kept), float(sum(kept))


def _lengths(pairs: Sequence[tuple[int, float]]) -> dict[str, Any]:
    lengths = [n for n, _ in pairs]
    return {"len": mean(lengths), "r_traj": mean([r for _, r in pairs]), "hist": hist(lengths)}


def _user_metrics(episodes: Sequence[MappedEpisode], sim: ReplaySim) -> dict[str, Any]:
    """Ratings, lengths and quits of ours vs theirs on the user-mapped episodes."""
    theirs_r, ours_r, pop = [], [], []  # steps both users accepted
    ours_all, ours_all_pop, theirs_all, theirs_all_pop = [], [], [], []  # every mapped step
    ours_len: list[tuple[int, float]] = []
    reasons, reasons_disagree = Counter(), Counter()
    ours_quits = disagree = their_quits = reached = also = logged = replayed = capped = 0
    for ep in episodes:
        user = int(ep.user.user)  # type: ignore[arg-type]
        result = replay(ep, sim)
        row = sim.world.ratings[sim.world.row_of(user)].numpy()  # type: ignore[union-attr]
        steps, popularity = ep.ref.steps, sim.popularity[list(ep.items)].astype(float)
        mine = sim.logged(user)
        logged += sum(item in mine for item in ep.items[: len(result.ratings)])
        replayed += len(result.ratings)
        for k, (step, item) in enumerate(zip(steps, ep.items, strict=False)):
            ours_all.append(float(row[item]))
            ours_all_pop.append(popularity[k])
            if not step.quit:
                theirs_all.append(float(step.reward))  # type: ignore[arg-type]
                theirs_all_pop.append(popularity[k])
            if not step.quit and k < len(result.ratings) and step.t != result.quit_t:
                theirs_r.append(float(step.reward))  # type: ignore[arg-type]
                ours_r.append(result.ratings[k])
                pop.append(popularity[k])
        ours_len.append((result.length, result.r_traj))
        capped += ep.cut_at is not None and result.quit_t is None
        if result.quit_t is not None:
            ours_quits += 1
            reasons[result.reason] += 1
            if not steps[result.quit_t - 1].quit:
                disagree += 1
                reasons_disagree[result.reason] += 1
        stop = next((s.t for s in steps if s.quit), None)
        if stop is not None and stop <= len(ep.items):
            their_quits += 1
            if result.quit_t is None or result.quit_t >= stop:
                reached += 1
                also += result.quit_t == stop
    table = np.asarray(confusion(theirs_r, ours_r))
    return {
        "episodes": len(episodes),
        "users": len({ep.user.user for ep in episodes}),
        "replayed_steps": replayed,
        "cut_before_our_quit": capped,
        "logged_share": share(logged, replayed),
        "ratings": {
            "n": len(ours_r),
            "spearman": spearman(theirs_r, ours_r),
            "pearson": pearson(theirs_r, ours_r),
            "exact": share(int(np.trace(table)), len(ours_r)),
            "confusion": table.tolist(),
            "ours_mean": mean(ours_r),
            "theirs_mean": mean(theirs_r),
        },
        "length": {
            "ours": _lengths(ours_len),
            "theirs": _lengths([_theirs(ep) for ep in episodes]),
            "theirs_full_log": _lengths([_theirs(ep, full=True) for ep in episodes]),
        },
        "quits": {
            "ours": ours_quits,
            "ours_where_they_continued": disagree,
            "share_ours_where_they_continued": share(disagree, ours_quits),
            "theirs": their_quits,
            "theirs_reached": reached,
            "theirs_where_we_also_quit": also,
            "share_theirs_where_we_also_quit": share(also, reached),
            "reasons": dict(reasons),
            "reasons_where_they_continued": dict(reasons_disagree),
        },
        "popularity": {
            "n": len(pop),
            "spearman_ours": spearman(ours_r, pop),
            "spearman_theirs": spearman(theirs_r, pop),
            "n_ours_all_steps": len(ours_all),
            "spearman_ours_all_steps": spearman(ours_all, ours_all_pop),
            "n_theirs_all_continues": len(theirs_all),
            "spearman_theirs_all_continues": spearman(theirs_all, theirs_all_pop),
        },
    }


def _item_metrics(episodes: Sequence[MappedEpisode], sim: ReplaySim) -> dict[str, Any]:
    """Their Len/R_traj and how often our similarity rule fires on their continues and quits.

    `repeats` checks their rule against ours on the log alone: a repeat inside the window must
    always quit (`in_window_continue` == 0), one outside it need not."""
    cont = cont_sim = quit_ = quit_sim = 0
    for ep in episodes:
        for step in ep.ref.steps[: len(ep.items)]:
            if step.t < 2:
                continue
            fires = similar_quit(ep.items, step.t, sim)
            if step.quit:
                quit_, quit_sim = quit_ + 1, quit_sim + fires
            else:
                cont, cont_sim = cont + 1, cont_sim + fires
    lengths = [ep.ref.length for ep in episodes]
    repeats: Counter[str] = Counter()  # by title over the whole log: needs no mapping
    for ep in episodes:
        seen = [s.executed for s in ep.ref.steps]
        for k, step in enumerate(ep.ref.steps[1:], start=1):
            where = "in" if seen[k] in seen[max(0, k - sim.window) : k] else "out"
            if where == "in" or seen[k] in seen[:k]:
                repeats[f"{where}_window_{'quit' if step.quit else 'continue'}"] += 1
    return {
        "episodes": len(episodes),
        "theirs_len": mean(lengths),
        "theirs_r_traj": mean([ep.ref.r_traj for ep in episodes]),
        "theirs_len_hist": hist(lengths),
        "continue_steps": cont,
        "similar_on_continue": share(cont_sim, cont),
        "quit_steps": quit_,
        "similar_on_quit": share(quit_sim, quit_),
        "repeats": {
            k: repeats[k]
            for k in (
                "in_window_continue",
                "in_window_quit",
                "out_window_continue",
                "out_window_quit",
            )
        },
    }


def agreement(episodes: Sequence[MappedEpisode], sim: ReplaySim) -> dict[str, Any]:
    """Return every metric of one subset of episodes (see the module docstring)."""
    mapped = [ep for ep in episodes if ep.user.user is not None and sim.world is not None]
    files = sorted({ep.ref.source for ep in episodes})
    return {
        "user_mapped": _user_metrics(mapped, sim) if mapped else None,
        "items": {
            "all": _item_metrics(episodes, sim),
            "per_file": {
                f: _item_metrics([e for e in episodes if e.ref.source == f], sim) for f in files
            },
        },
    }


def mapping_report(episodes: Sequence[MappedEpisode]) -> dict[str, Any]:
    """Count what did not map: titles (with examples), cut episodes, users and why."""
    unmapped = Counter(ep.unmapped for ep in episodes if ep.unmapped)
    shares = [ep.user.share for ep in episodes if ep.user.share is not None]
    ok = [ep for ep in episodes if ep.user.user is not None]
    return {
        "episodes": len(episodes),
        "per_file": dict(Counter(ep.ref.source for ep in episodes)),
        "steps": sum(len(ep.ref.steps) for ep in episodes),
        "steps_mapped": sum(len(ep.items) for ep in episodes),
        "episodes_cut": sum(ep.cut_at is not None for ep in episodes),
        "episodes_cut_at_step_1": sum(ep.cut_at == 1 for ep in episodes),
        "unmapped_titles": len(unmapped),
        "unmapped_examples": [t for t, _ in unmapped.most_common(_EXAMPLES)],
        "loose_title_steps": sum(ep.loose_titles for ep in episodes),
        "duplicate_title_steps": sum(ep.duplicate_titles for ep in episodes),
        "replaced_steps": sum(s.replaced for ep in episodes for s in ep.ref.steps),
        "ended_by_limit": sum(ep.ref.ended_by == "limit" for ep in episodes),
        "users": {
            "episodes_mapped": len(ok),
            "distinct": len({ep.user.user for ep in ok}),
            "reasons": dict(Counter(ep.user.reason for ep in episodes)),
            "history_share_mapped_min": min((ep.user.share for ep in ok), default=None),
            "history_share_best_max": max(shares, default=None),
            "history_share_best_mean": mean(shares),
            "threshold": MIN_HISTORY_SHARE,
            "min_titles": MIN_HISTORY_TITLES,
            "min_margin": MIN_MATCH_MARGIN,
        },
    }


def subsets(episodes: Sequence[MappedEpisode], split: UserSplit | None) -> dict[str, list]:
    """Return "all" and, with `split`, one subset per residue of the numeric userid."""
    out = {"all": list(episodes)}
    if split is not None:
        modulus, residues = split
        for r in residues:
            out[f"userid % {modulus} == {r}"] = [
                ep
                for ep in episodes
                if ep.ref.userid.isdigit() and int(ep.ref.userid) % modulus == r
            ]
    return out


def reference_agreement(
    episodes: Sequence[MappedEpisode], sim: ReplaySim, split: UserSplit | None = None
) -> dict[str, Any]:
    """Return the JSON-native agreement report: mapping, simulator parameters and per subset."""
    return {
        "mapping": mapping_report(episodes),
        "simulator": {"tau": sim.tau, "window": sim.window, "max_steps": sim.max_steps},
        "subsets": {name: agreement(eps, sim) for name, eps in subsets(episodes, split).items()},
    }


def validate(
    bundle: EnvBundle,
    episodes: Sequence[RefEpisode],
    *,
    split: UserSplit | None = None,
    method: UserMatchMethod | None = None,
) -> dict[str, Any]:
    """Map reference episodes onto a built env's dataset, replay them, and report agreement.

    `method` defaults to "id" on Amazon (its ids are the source ids) and "history" elsewhere.
    """
    dataset = bundle.dataset
    method = method or ("id" if dataset.name == "amazon" else "history")
    mapped = map_episodes(episodes, dataset, method)
    users = sorted({ep.user.user for ep in mapped if ep.user.user is not None})
    report = reference_agreement(mapped, replay_sim(bundle, users), split)
    return {"dataset": dataset.name, "user_match": method, **report}
