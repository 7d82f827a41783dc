"""The quit rule, the Gymnasium contract, and the batched env agreeing with the single env."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from simulator.env import (
    QUIT_REASONS,
    BatchedRecEnv,
    RecEnv,
    UserWorld,
    distance_threshold,
    quit_reason,
)

N_ITEMS = 8


def line_world(window: int = 2, max_steps: int = 10) -> UserWorld:
    """Items on a line 10 apart, except item 5, which sits 0.5 from item 4; tau = 1.

    User 100 rates item 3 as 1 and everything else 5; user 200 rates everything 4; user 300
    rates item 5 as 1 and everything else 5.
    """
    xs = torch.tensor([0.0, 10, 20, 30, 40, 40.5, 60, 70])
    vectors = torch.stack([xs, torch.zeros(N_ITEMS)], 1)
    ratings = torch.full((3, N_ITEMS), 5.0)
    ratings[0, 3] = 1.0
    ratings[1] = 4.0
    ratings[2, 5] = 1.0
    return UserWorld(ratings, vectors, 1.0, torch.tensor([100, 200, 300]), window, max_steps)


def play(env: RecEnv, items: list[int], user: int = 100) -> list[tuple]:
    env.reset(options={"user": user})
    return [env.step(i) for i in items]


def test_distance_threshold_is_the_percentile_of_pair_distances() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0]])  # pair distances 1, 2, 3
    assert distance_threshold(points, 50) == pytest.approx(2.0)
    assert distance_threshold(points, 0) == pytest.approx(1.0)
    assert distance_threshold(points, 100) == pytest.approx(3.0)
    cloud = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    exact = distance_threshold(cloud, 10)  # 44,850 pairs: all of them
    sampled = distance_threshold(cloud, 10, n_pairs=20_000, seed=3)
    assert sampled == pytest.approx(exact, rel=0.03)
    assert sampled == distance_threshold(cloud, 10, n_pairs=20_000, seed=3)
    with pytest.raises(ValueError, match="percentile"):
        distance_threshold(cloud, 150)


def test_world_validates_and_maps_users() -> None:
    world = line_world()
    assert world.row_of(200) == 1
    assert world.rows_of(torch.tensor([300, 100, 200])).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="user 7"):
        world.row_of(7)
    with pytest.raises(ValueError, match=r"\[7\]"):
        world.rows_of([100, 7])
    vectors = torch.zeros(N_ITEMS, 2)
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        UserWorld(torch.zeros(1, N_ITEMS), vectors, 1.0, torch.tensor([0]))
    with pytest.raises(ValueError, match="items"):
        UserWorld(torch.ones(1, N_ITEMS + 1), vectors, 1.0, torch.tensor([0]))
    with pytest.raises(ValueError, match="unique"):
        UserWorld(torch.ones(2, N_ITEMS), vectors, 1.0, torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="tau"):
        UserWorld(torch.ones(1, N_ITEMS), vectors, -1.0, torch.tensor([0]))


def test_first_step_never_quits_even_at_rating_one() -> None:
    (_, reward, terminated, truncated, info), *_ = play(RecEnv(line_world()), [3])
    assert (reward, terminated, truncated) == (1.0, False, False)
    assert info["accepted"] and info["quit_reason"] is None and info["len"] == 1
    assert math.isinf(info["min_distance"])


def test_low_rating_quits_from_step_two_and_earns_nothing() -> None:
    steps = play(RecEnv(line_world()), [0, 3])
    _, reward, terminated, truncated, info = steps[-1]
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert info["quit_reason"] == "low_rating" and info["rating"] == 1.0
    assert info["len"] == 1 and info["return"] == 5.0


def test_repeat_inside_window_quits_outside_does_not() -> None:
    inside = play(RecEnv(line_world(window=2)), [0, 1, 0])[-1]
    assert inside[2] and inside[4]["quit_reason"] == "repeat" and inside[4]["min_distance"] == 0
    outside = play(RecEnv(line_world(window=2)), [0, 1, 2, 0])[-1]
    assert not outside[2] and outside[4]["accepted"] and outside[1] == 5.0


@pytest.mark.parametrize(
    ("user", "items", "reason"),
    [(100, [3, 3], "repeat"), (300, [4, 5], "low_rating"), (100, [4, 5], "similar")],
)
def test_quit_reason_priority_is_repeat_then_rating_then_similarity(
    user: int, items: list[int], reason: str
) -> None:
    world = line_world()
    _, _, terminated, _, info = play(RecEnv(world), items, user)[-1]
    assert terminated and info["quit_reason"] == reason
    env = BatchedRecEnv(world)
    env.reset(torch.tensor([user]))
    results = [env.step(torch.tensor([i])) for i in items]
    assert quit_reason(int(results[-1].quit_code[0])) == reason
    assert bool(results[-1].terminated[0]) and quit_reason(int(env.state.quit_code[0])) == reason


def test_similar_item_quits_only_inside_window() -> None:
    _, _, terminated, _, info = play(RecEnv(line_world(window=2)), [4, 5])[-1]
    assert terminated and info["quit_reason"] == "similar"
    assert info["min_distance"] == pytest.approx(0.5)
    _, _, terminated, _, info = play(RecEnv(line_world(window=2)), [4, 0, 1, 5])[-1]
    assert not terminated and info["min_distance"] == pytest.approx(30.5)


def test_truncation_at_max_steps_and_no_step_after_the_end() -> None:
    env = RecEnv(line_world(max_steps=3))
    steps = play(env, [0, 1, 2])
    assert [s[3] for s in steps] == [False, False, True]
    _, _, terminated, _, info = steps[-1]
    assert not terminated and info["quit_reason"] == "max_steps" and info["len"] == 3
    with pytest.raises(RuntimeError, match="reset"):
        env.step(4)
    # Quitting on the last step is a termination, not a truncation.
    _, _, terminated, truncated, info = play(env, [0, 1, 3])[-1]
    assert terminated and not truncated and info["quit_reason"] == "low_rating"


def test_a_new_episode_forgets_the_previous_one() -> None:
    env = RecEnv(line_world())
    play(env, [0, 1])
    steps = play(env, [1, 0])
    assert all(s[4]["accepted"] for s in steps) and steps[-1][4]["len"] == 2


def test_observation_pads_in_front_and_keeps_the_last_window() -> None:
    env = RecEnv(line_world(window=2))
    obs, info = env.reset(options={"user": 200})
    assert obs["recent_items"].tolist() == [N_ITEMS, N_ITEMS] and obs["user"] == 1
    assert info == {"user": 200, "step": 0, "len": 0, "return": 0.0}
    obs = env.step(6)[0]
    assert obs["recent_items"].tolist() == [N_ITEMS, 6]
    obs = [env.step(i)[0] for i in (0, 1)][-1]
    assert obs["recent_items"].tolist() == [0, 1] and obs["recent_ratings"].tolist() == [4, 4]
    assert obs["step"] == 3 and env.observation_space.contains(obs)


def test_invalid_actions_and_options_raise_clear_errors() -> None:
    env = RecEnv(line_world())
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(options={"user": 100})
    for bad in (-1, N_ITEMS, 1.5, True, "2"):
        with pytest.raises(ValueError, match="not an item id"):
            env.step(bad)
    assert env.step(np.int64(2))[4]["accepted"]
    with pytest.raises(ValueError, match="unknown options"):
        env.reset(options={"usr": 100})
    with pytest.raises(ValueError, match="user 5"):
        env.reset(options={"user": 5})


def test_seeded_reset_draws_only_allowed_users_reproducibly() -> None:
    env = RecEnv(line_world(), users=[200])
    assert {env.reset(seed=s)[1]["user"] for s in range(5)} == {200}
    env = RecEnv(line_world())
    first = [env.reset(seed=s)[1]["user"] for s in range(30)]
    assert first == [env.reset(seed=s)[1]["user"] for s in range(30)]
    assert set(first) == {100, 200, 300}


def test_check_env_passes_without_warnings() -> None:
    gen = torch.Generator().manual_seed(0)
    world = UserWorld(
        torch.randint(1, 6, (5, 30), generator=gen).float(),
        torch.randn(30, 4, generator=gen),
        1.0,
        torch.arange(5) + 10,
        window=4,
        max_steps=10,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(RecEnv(world), skip_render_check=True)


def random_world(seed: int, max_steps: int, n_users: int = 6, n_items: int = 25) -> UserWorld:
    gen = torch.Generator().manual_seed(seed)
    # Mostly good ratings so episodes last long enough to exercise the window.
    ratings = torch.multinomial(
        torch.tensor([0.08, 0.12, 0.2, 0.3, 0.3]), n_users * n_items, True, generator=gen
    )
    vectors = torch.randn(n_items, 3, generator=gen)
    return UserWorld(
        (ratings + 1).float().reshape(n_users, n_items),
        vectors,
        distance_threshold(vectors, 8),
        torch.arange(n_users) * 7 + 3,
        window=3,
        max_steps=max_steps,
    )


def random_actions(world: UserWorld, batch: int, seed: int) -> torch.Tensor:
    """Random items, a third of them repeats of one of the row's last 5 actions."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, world.n_items, (batch, world.max_steps))
    for b in range(batch):
        for t in range(1, world.max_steps):
            if rng.random() < 0.35:
                actions[b, t] = actions[b, max(0, t - rng.integers(1, 6))]
    return torch.as_tensor(actions)


def test_batched_env_equals_single_env_step_by_step() -> None:
    reasons: set[str] = set()
    for seed, max_steps in [(0, 15), (1, 15), (2, 4), (3, 6)]:
        reasons |= compare_envs(random_world(seed, max_steps), seed)
    assert reasons == set(QUIT_REASONS[1:])  # the random actions exercised every rule


def compare_envs(world: UserWorld, seed: int) -> set[str]:
    """Play the same actions in both envs; assert every step agrees; return the quit reasons."""
    users = torch.cat([world.user_ids, world.user_ids[:3]])  # repeats in one batch are fine
    actions = random_actions(world, users.numel(), seed)
    batched, single = BatchedRecEnv(world), RecEnv(world)
    state = batched.reset(users)
    results = [batched.step(actions[:, t]) for t in range(world.max_steps)]
    reasons = set()
    for b, user in enumerate(users.tolist()):
        single.reset(options={"user": user})
        t = 0
        while True:
            _, reward, terminated, truncated, info = single.step(int(actions[b, t]))
            r = results[t]
            assert bool(r.active[b])
            assert float(r.rating[b]) == info["rating"] and float(r.reward[b]) == reward
            assert bool(r.accepted[b]) == info["accepted"]
            assert (bool(r.terminated[b]), bool(r.truncated[b])) == (terminated, truncated)
            assert quit_reason(int(r.quit_code[b])) == info["quit_reason"]
            assert float(r.min_distance[b]) == pytest.approx(info["min_distance"])
            t += 1
            if terminated or truncated:
                reasons.add(info["quit_reason"])
                break
        # After the end the row ignores its actions.
        assert all(not bool(r.active[b]) and float(r.reward[b]) == 0 for r in results[t:])
        assert int(state.length[b]) == info["len"] and int(state.step[b]) == t
        assert float(batched.state.ret[b]) == pytest.approx(info["return"])
        assert quit_reason(int(batched.state.quit_code[b])) == info["quit_reason"]
        recommended = batched.state.recommended[b].nonzero().squeeze(1).tolist()
        assert recommended == sorted(set(actions[b, :t].tolist()))
    assert bool(batched.state.done.all())
    return reasons


def test_batched_env_validates_actions_of_running_rows_only() -> None:
    world = line_world(max_steps=2)
    env = BatchedRecEnv(world)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.tensor([0]))
    env.reset(torch.tensor([100, 200]))
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="row 1"):
        env.step(torch.tensor([0, N_ITEMS]))
    env.step(torch.tensor([0, 0]))
    result = env.step(torch.tensor([3, 1]))  # row 0 quits (rating 1), row 1 truncates
    assert result.terminated.tolist() == [True, False]
    assert result.truncated.tolist() == [False, True]
    result = env.step(torch.tensor([-5, 99]))  # finished rows: anything goes, nothing happens
    assert not bool(result.active.any()) and result.reward.tolist() == [0.0, 0.0]
    assert env.state.length.tolist() == [1, 2] and env.state.step.tolist() == [2, 2]
    assert env.state.window_items.tolist() == [[0, 3], [0, 1]]
