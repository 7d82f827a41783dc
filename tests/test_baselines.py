"""Non-LLM methods behind `make_policy`: valid episodes, RL training, save/load, observations."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from eval.baselines import METHOD_KINDS, POLICY_METHODS, make_policy
from eval.rl import item_features
from simulator.build import EnvBundle, EnvConfig, build_env
from simulator.env import QUIT_REASONS, BatchedRecEnv
from simulator.policies import Policy, evaluate_policy, summarize

# Smoke budget: A2C re-ranking candidates for 256 users at once (~10 updates of 2048 steps).
# On the synthetic world every algorithm's curve is flat from ~60k steps (178 test R_traj at 100
# users vs item-CF 135, oracle 194; BENCHMARKS.md); 20k steps is already far above random.
SMOKE_STEPS = 20_000
TINY_STEPS = 256  # enough to build, step and save every algorithm; learns nothing


@pytest.fixture(scope="module")
def bundle() -> EnvBundle:
    return build_env(EnvConfig())


def play(bundle: EnvBundle, policy: Policy, users: list[int]) -> list[list[int]]:
    """Play the test world; return each row's recommended items (the actions it really took)."""
    env = BatchedRecEnv(bundle.world("test"))
    state = env.reset(torch.tensor(users))
    policy.reset(torch.tensor(users))
    taken: list[list[int]] = [[] for _ in users]
    while not bool(state.done.all()):
        actions = policy.act(state)
        assert actions.shape == (len(users),) and not actions.dtype.is_floating_point
        for row in state.active.nonzero().squeeze(1).tolist():
            taken[row].append(int(actions[row]))
        env.step(actions)
        state = env.state
    return taken


def check_frame(df, users: list[int], max_steps: int) -> None:
    """Assert `evaluate_policy` rows are well-formed episodes without repeat quits."""
    assert df["user"].tolist() == users
    assert ((df["len"] >= 0) & (df["len"] <= max_steps)).all()
    assert (df["r_traj"] <= 5 * df["len"] + 1e-9).all() and (df["r_traj"] >= df["len"]).all()
    assert set(df["quit_reason"]) <= set(QUIT_REASONS) - {None, "repeat"}
    assert ((df["steps"] == df["len"]) | (df["steps"] == df["len"] + 1)).all()


def test_unknown_method_lists_the_known_ones(bundle: EnvBundle) -> None:
    with pytest.raises(ValueError, match="unknown policy method 'sasrec'") as err:
        make_policy("sasrec", bundle, seed=0, run_dir=None)
    for name in POLICY_METHODS:
        assert repr(name) in str(err.value)
    assert set(METHOD_KINDS) == set(POLICY_METHODS) and METHOD_KINDS["oracle"] == "ceiling"


@pytest.mark.parametrize("name", POLICY_METHODS)
def test_every_method_plays_valid_episodes_without_repeats(
    bundle: EnvBundle, name: str, tmp_path: Path
) -> None:
    users = bundle.test_users[:24]
    policy = make_policy(name, bundle, seed=0, run_dir=tmp_path, rl_steps=TINY_STEPS, curves=False)
    assert isinstance(policy, Policy) and policy.name == name
    for items in play(bundle, policy, users):
        assert len(items) == len(set(items)), f"{name} repeated an item: {items}"
    df = evaluate_policy(bundle.world("test"), policy, users, seed=0)
    check_frame(df, users, bundle.config.max_steps)


def test_rl_training_beats_item_cf_and_reports_progress_and_a_curve(bundle: EnvBundle) -> None:
    calls: list[tuple[int, int]] = []
    policy = make_policy(
        "a2c",
        bundle,
        seed=0,
        run_dir=None,
        rl_steps=SMOKE_STEPS,
        progress=lambda done, total: calls.append((done, total)),
    )
    users = bundle.test_users[:100]
    world = bundle.world("test")
    learned = summarize(evaluate_policy(world, policy, users, seed=0))
    for floor in ("random", "itemcf"):
        ref = make_policy(floor, bundle, seed=0, run_dir=None)
        assert learned["r_traj"] > summarize(evaluate_policy(world, ref, users))["r_traj"]
    assert calls[-1] == (SMOKE_STEPS, SMOKE_STEPS) and len(calls) > 10
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(calls))
    stats = policy.train_stats
    assert stats["steps"] >= SMOKE_STEPS and not stats["loaded"]
    curve = stats["curve"]
    assert curve[0]["steps"] == 0 and curve[-1]["steps"] == stats["steps"] and len(curve) > 10
    assert all(a["steps"] < b["steps"] for a, b in itertools.pairwise(curve))
    # The curve's last point is the returned policy measured on the first 100 test users.
    assert curve[-1]["test"] == pytest.approx(learned["r_traj"], abs=1e-3)
    assert {"test", "test_len", "train", "train_len", "train_seconds"} <= set(curve[-1])


def test_save_then_load_gives_identical_actions(bundle: EnvBundle, tmp_path: Path) -> None:
    users = bundle.test_users[:64]
    world = bundle.world("test")
    for name in ("a2c", "dqn"):
        first = make_policy(
            name, bundle, seed=3, run_dir=tmp_path, rl_steps=TINY_STEPS, curve_points=2
        )
        folder = tmp_path / "policies" / f"{name}-seed3"
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "policy.safetensors"]
        meta = json.loads((folder / "config.json").read_text())
        assert meta["identity"]["config"]["algo"] == name
        assert meta["stats"]["curve"] == first.train_stats["curve"]  # the curve is kept too
        again = make_policy(
            name, bundle, seed=3, run_dir=tmp_path, rl_steps=TINY_STEPS, curve_points=2
        )
        assert again.train_stats["loaded"] and not first.train_stats["loaded"]
        assert again.train_stats["curve"] == first.train_stats["curve"]
        a, b = first.net.state_dict(), again.net.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert play(bundle, first, users) == play(bundle, again, users)
        frames = [evaluate_policy(world, p, users, seed=0) for p in (first, again)]
        assert frames[0].equals(frames[1])
    # Another budget is another config: retrained, and the save is replaced.
    other = make_policy(
        "a2c", bundle, seed=3, run_dir=tmp_path, rl_steps=TINY_STEPS + 64, curves=False
    )
    assert not other.train_stats["loaded"]
    meta = json.loads((tmp_path / "policies" / "a2c-seed3" / "config.json").read_text())
    assert meta["identity"]["config"]["total_steps"] == TINY_STEPS + 64


def test_item_features_scale_vectors_and_pad_with_zeros(bundle: EnvBundle) -> None:
    vectors = bundle.train_model.item_vectors()
    features = item_features(vectors * 7.0)
    assert features.shape == (vectors.shape[0] + 1, vectors.shape[1])
    assert torch.equal(features[-1], torch.zeros(vectors.shape[1]))
    assert float(features[:-1].square().mean().sqrt()) == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(features, item_features(vectors))  # scale-free


def test_rl_policies_never_recommend_logged_items(bundle: EnvBundle) -> None:
    users = bundle.test_users[:40]
    for name in ("a2c", "dqn", "ppo"):
        policy = make_policy(name, bundle, seed=1, run_dir=None, rl_steps=TINY_STEPS, curves=False)
        for user, items in zip(users, play(bundle, policy, users), strict=True):
            assert not set(items) & bundle.excluded(user), (name, user)
        assert "curve" not in policy.train_stats or not policy.train_stats["curve"]


def test_rl_budget_default_is_one_number_everywhere() -> None:
    """`--rl-steps` (run, compare), RunConfig and make_policy share the measured default."""
    import inspect

    from eval import cli
    from eval.baselines import DEFAULT_RL_STEPS
    from eval.protocol import RunConfig

    assert RunConfig(methods=["a2c"]).rl_steps == DEFAULT_RL_STEPS
    for command in (cli.run, cli.compare):
        assert inspect.signature(command).parameters["rl_steps"].default == DEFAULT_RL_STEPS
    assert inspect.signature(make_policy).parameters["rl_steps"].default == DEFAULT_RL_STEPS
