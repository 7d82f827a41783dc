"""The SB3 vector env over the batched env, and the RL observation/candidate encoder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from eval.baselines import rl_encoder
from eval.rl import SB3Policy
from eval.rl_env import RecVecEnv
from simulator.build import EnvBundle, EnvConfig, build_env
from simulator.env import BatchedRecEnv, RecEnv


@pytest.fixture(scope="module")
def bundle() -> EnvBundle:
    return build_env(EnvConfig())


@pytest.mark.parametrize("learner_tau", ["default", 0.0])
def test_vec_env_plays_the_rules_of_recenv_step_by_step(bundle: EnvBundle, learner_tau) -> None:
    """Every slot's rewards, ends and returns match a `RecEnv` replaying the same items.

    With the learner's tau the candidates keep users to the step limit (truncations); with tau
    0 they are look-alikes of the window and users quit (terminations).
    """
    world = bundle.world("train")
    encoder = rl_encoder(bundle)
    if learner_tau != "default":
        encoder = dataclasses.replace(encoder, tau=learner_tau)
    venv = RecVecEnv(world, bundle.train_users[:50], encoder, num_envs=6, seed=1)
    venv.reset()
    rng = np.random.default_rng(0)
    singles: list[RecEnv | None] = [None] * venv.num_envs
    ends = {"terminated": 0, "truncated": 0}
    for _ in range(150):
        users = venv.state.users.tolist()
        for slot, user in enumerate(users):
            if singles[slot] is None:
                singles[slot] = RecEnv(world, users=[user])
                singles[slot].reset(options={"user": user})
        # Mostly the top candidate, sometimes any: long episodes and early quits both happen.
        actions = np.where(rng.random(6) < 0.7, 0, rng.integers(0, encoder.n_candidates, 6))
        obs, rewards, dones, infos = venv.step(actions)
        assert obs.shape == (6, encoder.obs_dim) and obs.dtype == np.float32
        for slot in range(venv.num_envs):
            single = singles[slot]
            _, reward, terminated, truncated, info = single.step(int(venv.last_items[slot]))
            assert rewards[slot] == pytest.approx(reward)
            assert bool(dones[slot]) == (terminated or truncated)
            if dones[slot]:
                episode = infos[slot]["episode"]
                assert episode["r"] == pytest.approx(info["return"]) and episode["l"] == info["len"]
                assert infos[slot]["TimeLimit.truncated"] == truncated
                assert infos[slot]["terminal_observation"].shape == (encoder.obs_dim,)
                ends["truncated" if truncated else "terminated"] += 1
                singles[slot] = None
    assert ends["terminated" if learner_tau == 0.0 else "truncated"] >= 6, ends


def test_vec_env_restarts_only_finished_slots_with_fresh_state(bundle: EnvBundle) -> None:
    world = bundle.world("train")
    venv = RecVecEnv(world, bundle.train_users, rl_encoder(bundle), num_envs=32, seed=0)
    venv.reset()
    for _ in range(60):
        before = venv.state.step.clone()
        _, _, dones, _ = venv.step(np.zeros(32, dtype=np.int64))
        s = venv.state
        assert not bool(s.done.any())  # auto-reset: every slot is running after a step
        done = torch.as_tensor(dones)
        assert bool((s.step[done] == 0).all()) and bool((s.ret[done] == 0).all())
        assert not bool(s.recommended[done].any())
        assert bool((s.step[~done] == before[~done] + 1).all())
        # The exclusion mask travels with the new user (their logged items).
        for row in done.nonzero().squeeze(1).tolist():
            assert torch.equal(s.excluded[row], bundle.excluded_mask([int(s.users[row])])[0])


def test_vec_env_is_seeded(bundle: EnvBundle) -> None:
    def run(seed: int) -> list[int]:
        venv = RecVecEnv(bundle.world("train"), bundle.train_users, rl_encoder(bundle), 8)
        venv.seed(seed)
        venv.reset()
        users = venv.state.users.tolist()
        for _ in range(30):
            venv.step(np.ones(8, dtype=np.int64))
            users += venv.state.users.tolist()
        return users

    assert run(3) == run(3) and run(3) != run(4)


def test_candidates_skip_logged_and_recommended_items_and_put_safe_ones_first(
    bundle: EnvBundle,
) -> None:
    assert bundle.config.logged_items == "exclude"
    encoder = rl_encoder(bundle)
    users = bundle.test_users[:40]
    env = BatchedRecEnv(bundle.world("test"))
    state = env.reset(users)
    ctx = encoder.start(users)
    logged = bundle.excluded_mask(users)
    assert bool(torch.isinf(ctx.score[logged]).all())  # logged items are never ranked
    for _ in range(12):
        obs, cand, valid = encoder.encode(ctx, state)
        assert obs.shape == (len(users), encoder.obs_dim) and bool(valid.all())
        assert not bool((state.recommended | logged).gather(1, cand).any())
        safe = obs[:, -encoder.n_candidates * 5 :].view(len(users), -1, 5)[..., 3]
        # Safe candidates come before unsafe ones.
        assert bool((safe[:, 1:] <= safe[:, :-1]).all())
        env.step(encoder.items(cand, valid, torch.arange(len(users)) % 3, state.active))
        state = env.state


def test_an_invalid_choice_maps_to_the_first_valid_candidate(bundle: EnvBundle) -> None:
    encoder = rl_encoder(bundle)
    cand = torch.tensor([[5, 6, 7], [8, 9, 10]])
    valid = torch.tensor([[False, True, True], [True, True, False]])
    active = torch.tensor([True, True])
    picked = encoder.items(cand, valid, torch.tensor([0, 2]), active)
    assert picked.tolist() == [6, 8]
    with pytest.raises(ValueError, match="row 1: no candidate left"):
        encoder.items(cand, torch.tensor([[True, False, False], [False] * 3]), active[:], active)


def test_test_time_policy_sees_the_training_observation(bundle: EnvBundle) -> None:
    """The policy's observation on a batched env equals the vec env's for the same episode."""
    from stable_baselines3 import PPO

    world = bundle.world("train")
    encoder = rl_encoder(bundle)
    venv = RecVecEnv(world, bundle.train_users, encoder, num_envs=5, seed=2)
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=40, seed=0, device="cpu")
    obs = venv.reset()
    policy = SB3Policy("ppo", model.policy, encoder)
    env = BatchedRecEnv(world)
    users = venv.state.users.clone()
    state = env.reset(users)
    policy.reset(users)
    for _ in range(5):
        mine, _, _ = encoder.encode(policy._ctx, state)
        np.testing.assert_allclose(mine.numpy(), obs, rtol=0, atol=1e-6)
        actions = policy.act(state)
        scores = policy.scores(torch.as_tensor(obs))
        expected, _ = model.predict(obs, deterministic=True)
        assert torch.equal(scores.argmax(1), torch.as_tensor(expected))
        obs, _, dones, _ = venv.step(expected)
        assert torch.equal(venv.last_items, actions)
        env.step(actions)
        state = env.state
        if dones.any():
            break


def test_encoder_window_check_matches_the_env_geometry_whatever_the_call_pattern(
    bundle: EnvBundle,
) -> None:
    """Candidates' distances equal `window_distances`; skipping calls changes nothing."""
    from simulator.env import window_distances

    encoder = rl_encoder(bundle)
    users = bundle.test_users[:16]
    env = BatchedRecEnv(bundle.world("test"))
    state = env.reset(users)
    every, sparse = encoder.start(users), encoder.start(users)
    k = encoder.n_candidates
    for step in range(14):
        obs, cand, valid = encoder.encode(every, state)
        feats = obs[:, -k * 5 :].view(len(users), k, 5)
        near = window_distances(
            encoder.distance_vectors, cand, state.window_items, env.world.n_items
        )
        expected = (near.min(-1).values / encoder.tau).clamp(max=3.0)
        torch.testing.assert_close(feats[..., 2], expected, atol=1e-4, rtol=0)
        assert torch.equal(feats[..., 3] == 1.0, near.min(-1).values >= encoder.tau - 1e-5)
        if step % 6 == 5:  # the second context skips 5 steps (more than the window) at a time
            again, cand2, _ = encoder.encode(sparse, state)
            torch.testing.assert_close(again, obs)
            assert torch.equal(cand2, cand)
        env.step(
            encoder.items(cand, valid, torch.zeros(len(users), dtype=torch.long), state.active)
        )
        state = env.state
    with pytest.raises(ValueError, match="without start"):
        encoder.encode(every, env.reset(users))


def test_ranking_folds_in_the_episode_items_as_item_cf_does(bundle: EnvBundle) -> None:
    """After a step the score is the mean of logged and episode item vectors, dotted with items."""
    encoder = rl_encoder(bundle)
    user = bundle.test_users[3]
    env = BatchedRecEnv(bundle.world("test"))
    state = env.reset([user])
    ctx = encoder.start([user])
    before = ctx.score.clone()
    _, cand, _ = encoder.encode(ctx, state)
    item = int(cand[0, 0])
    env.step(torch.tensor([item]))
    encoder.encode(ctx, env.state)
    logs = list(bundle.histories.get(user, []))
    taste = encoder.vectors[[*logs, item]].mean(0)
    raw = taste @ encoder.vectors.T + encoder.item_bias
    mu, sd = ctx.scale[0, 0], ctx.scale[0, 1]
    finite = torch.isfinite(ctx.score[0])
    torch.testing.assert_close(ctx.score[0][finite], ((raw - mu) / sd)[finite])
    assert not torch.equal(before, ctx.score)
    assert torch.isinf(ctx.key[0, item])  # recommended: never a candidate again
