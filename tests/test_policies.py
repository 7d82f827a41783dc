"""Reference policies: their invariants, their ranking in a world built to rank them, evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from simulator.env import BatchedRecEnv, UserWorld, distance_threshold, window_distances
from simulator.policies import (
    ItemCFPolicy,
    OraclePolicy,
    Policy,
    PopularityPolicy,
    RandomPolicy,
    evaluate_policy,
    greedy_pick,
    item_neighbors,
    summarize,
)


def spread_world(n_users: int, n_items: int, max_steps: int, rating: float = 5.0) -> UserWorld:
    """Every item far from every other (one-hot x 10, tau 1): only repeats and ratings matter."""
    return UserWorld(
        torch.full((n_users, n_items), rating),
        torch.eye(n_items) * 10,
        1.0,
        torch.arange(n_users),
        window=4,
        max_steps=max_steps,
    )


def run(world: UserWorld, policy: Policy, users: list[int]) -> torch.Tensor:
    """Play a batch to the end; return the actions [B, steps] (ignored ones included)."""
    env = BatchedRecEnv(world)
    state = env.reset(torch.tensor(users))
    policy.reset(torch.tensor(users))
    actions = []
    while not bool(state.done.all()):
        actions.append(policy.act(state))
        env.step(actions[-1])
        state = env.state
    return torch.stack(actions, 1)


def block_world(seed: int = 0) -> tuple[UserWorld, pd.DataFrame, dict[int, list[int]]]:
    """Three blocks of 25 items; env users like their block (3-5) and rate the rest 1.

    Training users of each group logged 12 items of their block, so co-occurrence finds the
    block. With max_steps 20 < 25, any policy's R_traj is at most the sum of the user's top-20
    ratings, which is what the greedy oracle earns.
    """
    rng = np.random.default_rng(seed)
    n_items, block = 75, 25
    ratings = torch.ones(9, n_items)
    history = {}
    for u in range(9):
        items = np.arange(block) + block * (u % 3)
        ratings[u, items] = torch.as_tensor(rng.integers(3, 6, block), dtype=torch.float32)
        history[1000 + u] = rng.choice(items, 3, replace=False).tolist()
    logs = [
        (t, int(i), 1.0)
        for t in range(30)
        for i in rng.choice(np.arange(block) + block * (t % 3), 12, replace=False)
    ]
    train = pd.DataFrame(logs, columns=["user", "item", "signal"])
    train["order"] = train.groupby("user").cumcount()
    world = UserWorld(
        ratings, torch.eye(n_items) * 10, 1.0, torch.arange(9) + 1000, window=4, max_steps=20
    )
    return world, train, history


def clustered_world(seed: int = 0) -> UserWorld:
    """200 items in 2-D with a real similarity constraint (tau = 5th percentile)."""
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.rand(200, 2, generator=gen) * 10
    ratings = torch.randint(1, 6, (6, 200), generator=gen).float()
    return UserWorld(
        ratings, vectors, distance_threshold(vectors, 5), torch.arange(6), window=4, max_steps=30
    )


def test_random_policy_never_repeats_and_is_seeded() -> None:
    world = spread_world(3, 6, max_steps=6)  # 6 steps over 6 items: a permutation is forced
    actions = run(world, RandomPolicy(6, seed=1), [0, 1, 2])
    for row in actions.tolist():
        assert sorted(row) == list(range(6))
    again = run(world, RandomPolicy(6, seed=1), [0, 1, 2])
    assert torch.equal(actions, again)
    assert not torch.equal(actions, run(world, RandomPolicy(6, seed=2), [0, 1, 2]))


def test_random_policy_is_roughly_uniform_over_free_items() -> None:
    world = spread_world(1, 5, max_steps=2)
    policy = RandomPolicy(5, seed=0)
    env = BatchedRecEnv(world)
    state = env.reset(torch.zeros(4000, dtype=torch.long))
    env.step(torch.zeros(4000, dtype=torch.long))
    counts = torch.bincount(policy.act(env.state), minlength=5)
    assert counts[0] == 0 and bool((counts[1:] > 850).all()) and state is env.state


def test_popularity_policy_follows_the_popularity_order() -> None:
    world = spread_world(2, 6, max_steps=6)
    popularity = torch.tensor([3.0, 9.0, 1.0, 9.0, 0.0, 5.0])  # tie 1 vs 3: lower id first
    actions = run(world, PopularityPolicy(popularity), [0, 1])
    assert actions.tolist() == [[1, 3, 5, 0, 2, 4]] * 2


def test_item_neighbors_match_brute_force_cosine() -> None:
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 1.0) for u in range(40) for i in rng.choice(30, 6, replace=False)]
    rows += [(0, 0, -1.0), (1, 1, 1.0), (1, 1, 2.0)]  # a negative and a duplicate positive
    df = pd.DataFrame(rows, columns=["user", "item", "signal"]).drop_duplicates(["user", "item"])
    x = torch.zeros(40, 30)
    for u, i, s in df.itertuples(index=False):
        x[u, i] = float(s > 0)
    co = x.T @ x
    n = co.diagonal().clone()
    cos = (co / (n[:, None] * n[None, :]).sqrt().clamp_min(1)).fill_diagonal_(0)
    idx, sim, counts = item_neighbors(df, 30, k=5, block=7)  # blocks that do not divide 30
    assert torch.equal(counts, n)
    assert torch.allclose(sim, cos.topk(5, dim=1).values)
    assert torch.allclose(cos.gather(1, idx), sim)
    assert not bool((idx == torch.arange(30)[:, None]).any())  # never its own neighbour


def test_greedy_pick_skips_unsafe_candidates_then_falls_back() -> None:
    vectors = torch.tensor([[0.0, 0], [0.5, 0], [0.6, 0], [5, 0], [9, 0]])
    window = torch.tensor([[5, 0], [5, 0]])  # padding 5, then item 0
    scores = torch.tensor([[1.0, 9, 8, 2, 3], [1.0, 9, 8, 2, 3]])
    fresh = torch.tensor([[False, True, True, True, True], [False, True, True, False, False]])
    pick = greedy_pick(scores, fresh, fresh, window, vectors, tau=1.0, n_candidates=2)
    # Row 0: items 1, 2 are too close to item 0; the full scan finds item 4 (score 3).
    # Row 1: no safe fresh item is left, so the best fresh one is taken.
    assert pick.tolist() == [4, 1]


def test_itemcf_follows_history_and_accepted_items() -> None:
    world, train, history = block_world()
    policy = ItemCFPolicy(train, world.n_items, history, world.item_vectors, world.tau)
    actions = run(world, policy, [1000, 1001, 1002])
    blocks = actions // 25
    assert blocks.tolist() == [[0] * 20, [1] * 20, [2] * 20]
    with pytest.raises(ValueError, match="history for user 5"):
        policy.reset(torch.tensor([5]))


def test_itemcf_scores_follow_the_items_accepted_in_the_episode() -> None:
    """A co-occurrence chain 0-1-...-9 from history [0], against more popular items 10-19.

    Only by adding each accepted item's neighbours can the policy walk the chain; from the
    history alone it would fall back to the popular items, which the user rates 1.
    """
    chain = [(u, i, 1.0) for u in range(9) for i in (u, u + 1)]
    popular = [(100 + u, 10 + u % 10, 1.0) for u in range(50)]
    train = pd.DataFrame(chain + popular, columns=["user", "item", "signal"])
    ratings = torch.ones(1, 20)
    ratings[0, :10] = 5.0
    world = UserWorld(ratings, torch.eye(20) * 10, 1.0, torch.tensor([7]), max_steps=10)
    policy = ItemCFPolicy(train, 20, {7: [0]}, world.item_vectors, world.tau)
    df = evaluate_policy(world, policy, [7])
    assert df.loc[0, "len"] == 10 and df.loc[0, "quit_reason"] == "max_steps"


def test_oracle_beats_itemcf_beats_random_where_it_must() -> None:
    world, train, history = block_world()
    users = world.user_ids.tolist()
    itemcf = ItemCFPolicy(train, world.n_items, history, world.item_vectors, world.tau)
    results = {
        p.name: evaluate_policy(world, p, users, seed=0)
        for p in (OraclePolicy(world), itemcf, RandomPolicy(world.n_items))
    }
    top20 = world.ratings.topk(20, dim=1).values.sum(1).double().numpy()
    assert np.array_equal(results["oracle"]["r_traj"].to_numpy(), top20)
    assert bool((results["oracle"]["r_traj"] >= results["itemcf"]["r_traj"]).all())
    means = {name: summarize(df)["r_traj"] for name, df in results.items()}
    assert means["oracle"] >= means["itemcf"] > 3 * means["random"]


def test_oracle_and_itemcf_never_trip_their_own_similarity_rule() -> None:
    world = clustered_world()
    users = world.user_ids.tolist()
    oracle = evaluate_policy(world, OraclePolicy(world), users)
    assert set(oracle["quit_reason"]) == {"max_steps"}  # plenty of safe, well-rated items
    assert (oracle["r_each"] >= 4.5).all()  # greedy on ratings: mostly 5s
    train = pd.DataFrame(
        [(u, i, 1.0) for u in range(20) for i in range(u, 200, 7)],
        columns=["user", "item", "signal"],
    )
    history = {u: [u, u + 50] for u in users}
    same = ItemCFPolicy(train, 200, history, world.item_vectors, world.tau)
    df = evaluate_policy(world, same, users)
    assert not set(df["quit_reason"]) & {"similar", "repeat"}
    # With vectors of its own, the rule it keeps is its own (tau from its own geometry).
    own = torch.randn(200, 3, generator=torch.Generator().manual_seed(9))
    own_tau = distance_threshold(own, 10)
    policy = ItemCFPolicy(train, 200, history, own, own_tau)
    env = BatchedRecEnv(world)
    state = env.reset(torch.tensor(users))
    policy.reset(state.users)
    for _ in range(world.max_steps):
        actions = policy.act(state)
        run_rows = state.active
        dist = window_distances(own, actions[:, None], state.window_items, world.n_items)
        assert bool((dist[run_rows] >= own_tau).all())
        assert not bool(state.recommended[torch.arange(len(users)), actions][run_rows].any())
        env.step(actions)
        state = env.state


def test_evaluate_policy_rows_and_summary() -> None:
    world = clustered_world(1)
    users = world.user_ids.tolist()
    df = evaluate_policy(world, RandomPolicy(world.n_items), users, seed=4)
    assert list(df.columns) == ["user", "len", "r_traj", "r_each", "quit_reason", "steps"]
    assert df["user"].tolist() == users
    assert (df["len"] >= 1).all()  # the first step never quits
    np.testing.assert_allclose(df["r_each"], df["r_traj"] / df["len"])
    truncated = df["quit_reason"] == "max_steps"
    assert (df.loc[truncated, "steps"] == df.loc[truncated, "len"]).all()
    assert (df.loc[~truncated, "steps"] == df.loc[~truncated, "len"] + 1).all()
    assert df.equals(evaluate_policy(world, RandomPolicy(world.n_items), users, seed=4))
    summary = summarize(df)
    assert summary["episodes"] == 6 and summary["len"] == pytest.approx(df["len"].mean())
    assert summary["r_traj"] == pytest.approx(df["r_traj"].mean())
    # Batching does not change a deterministic policy's episodes.
    oracle = OraclePolicy(world)
    whole = evaluate_policy(world, oracle, users)
    assert whole.equals(evaluate_policy(world, oracle, users, batch_size=4))
    with pytest.raises(ValueError, match="no episodes"):
        summarize(df.iloc[:0])


def test_every_policy_satisfies_the_protocol() -> None:
    world, train, history = block_world()
    policies = [
        RandomPolicy(world.n_items),
        PopularityPolicy(torch.ones(world.n_items)),
        ItemCFPolicy(train, world.n_items, history, world.item_vectors, world.tau),
        OraclePolicy(world),
    ]
    assert all(isinstance(p, Policy) for p in policies)
    assert len({p.name for p in policies}) == len(policies)
    for policy in policies:
        actions = run(world, policy, [1000, 1004, 1008])
        steps = BatchedRecEnv(world)  # replay to learn how many actions each row used
        state = steps.reset(torch.tensor([1000, 1004, 1008]))
        for t in range(actions.shape[1]):
            steps.step(actions[:, t])
        for row, n in zip(actions.tolist(), state.step.tolist(), strict=True):
            assert len(set(row[:n])) == n, policy.name  # never a repeat within an episode


def test_every_policy_skips_the_items_a_world_excludes() -> None:
    """Excluded items are the best-rated, most popular and most co-occurring: all skip them."""
    world, train, history = block_world()
    ex = [[*sorted(history[u])[:2], int(world.ratings[r].argmax())] for r, u in enumerate(history)]
    closed = UserWorld(
        world.ratings, world.item_vectors, world.tau, world.user_ids, 4, 20, excluded=ex
    )
    logged = torch.as_tensor(train["item"].to_numpy(copy=True))
    counts = torch.bincount(logged, minlength=75).float()
    counts[[i for row in ex for i in row]] += 100.0  # excluded items top the popularity list
    users = list(history)
    policies = {
        "random": RandomPolicy(75, seed=0),
        "popularity": PopularityPolicy(counts),
        "itemcf": ItemCFPolicy(train, 75, history, world.item_vectors, world.tau),
        "oracle": OraclePolicy(closed),
    }
    for name, policy in policies.items():
        actions = run(closed, policy, users)
        for row, user in enumerate(users):
            assert not set(actions[row].tolist()) & set(ex[row]), (name, user)
        # The same policy in the open world does take an excluded item.
        if name != "random":
            policy = OraclePolicy(world) if name == "oracle" else policy
            opened = run(world, policy, users)
            assert any(set(opened[r].tolist()) & set(ex[r]) for r in range(len(users))), name
