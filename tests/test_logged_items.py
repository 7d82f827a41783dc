"""`logged_items="exclude"`: nobody is ever recommended an item from their own logged history.

Every path that produces a recommendation is played and each recommended item is checked against
the user's log (`bundle.logged`, built from the raw interactions, not from the code under test):
the four baselines and the card's myopic policy on the batched env, the candidate generator,
and the scripted double through the whole graph in both grounding modes. Each check is paired with
the same play under "allow", where logged items do get recommended, so the checks can fail.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from eval.experiment import Experiment
from eval.protocol import ENVIRONMENT_FILE, RunConfig, RunDir
from eval.report import render
from graph import Context, build_graph
from nodes.candidates import CandidateGenerator
from simulator.build import EnvBundle, EnvConfig, build_env, reference_policies
from simulator.card import EchoHistoryPolicy, MyopicPolicy, verdict
from simulator.env import BatchedRecEnv, RecEnv, UserWorld
from simulator.logged import Exclusions
from simulator.policies import Policy, evaluate_policy

USERS = 60  # test users played per policy: enough to meet heavy and light logs


@pytest.fixture(scope="module")
def excluded() -> EnvBundle:
    return build_env(EnvConfig(dataset="synthetic"))


@pytest.fixture(scope="module")
def allowed() -> EnvBundle:
    return build_env(EnvConfig(dataset="synthetic", logged_items="allow"))


def play(world: UserWorld, policy: Policy, users: list[int]) -> dict[int, list[int]]:
    """Play one episode per user; return every item recommended to each (active rows only)."""
    env = BatchedRecEnv(world)
    ids = torch.as_tensor(users)
    state = env.reset(ids)
    policy.reset(ids)
    shown: dict[int, list[int]] = {u: [] for u in users}
    for _ in range(world.max_steps):
        if bool(state.done.all()):
            break
        actions = policy.act(state)
        for row in state.active.nonzero().squeeze(1).tolist():
            shown[users[row]].append(int(actions[row]))
        env.step(actions)
        state = env.state
    return shown


def logged_hits(bundle: EnvBundle, shown: dict[int, list[int]]) -> int:
    return sum(len(set(items) & bundle.logged(u)) for u, items in shown.items())


def test_the_default_is_exclude_and_the_setting_is_part_of_the_cache_key(excluded, allowed):
    assert EnvConfig().logged_items == "exclude"
    assert EnvConfig().key(None) != EnvConfig(logged_items="allow").key(None)
    assert excluded.path != allowed.path
    with pytest.raises(ValueError, match="logged_items"):
        EnvConfig(logged_items="sometimes")  # type: ignore[arg-type]


def test_logged_sets_come_from_every_interaction(excluded):
    inter = excluded.dataset.interactions
    for user in excluded.test_users[:20]:
        assert excluded.logged(user) == set(inter.loc[inter["user"] == user, "item"].tolist())
        assert set(excluded.histories[user]) <= excluded.logged(user)
        assert excluded.excluded(user) == excluded.logged(user)
    users = excluded.test_users[:5]
    mask = excluded.excluded_mask(users)
    assert mask.shape == (5, excluded.dataset.n_items)
    for row, user in enumerate(users):
        assert set(mask[row].nonzero().squeeze(1).tolist()) == excluded.logged(user)
    world = excluded.world("test")
    assert torch.equal(world.excluded_mask(users), mask)
    with pytest.raises(ValueError, match="user"):
        excluded.logged(excluded.dataset.n_users)


def test_allow_excludes_nothing(allowed):
    user = allowed.test_users[0]
    assert allowed.logged(user) and allowed.excluded(user) == frozenset()
    assert not bool(allowed.excluded_mask([user]).any())
    assert allowed.world("test").excluded is None


@pytest.mark.parametrize("split", ["test", "train"])
def test_gymnasium_env_refuses_a_logged_item_naming_user_and_item(excluded, allowed, split):
    user = excluded.users(split)[0]
    item = min(excluded.logged(user))
    env = excluded.make_env(split)
    env.reset(options={"user": user})
    with pytest.raises(ValueError, match=rf"item {item} is in user {user}'s logged history"):
        env.step(item)
    fresh = next(i for i in range(excluded.dataset.n_items) if i not in excluded.logged(user))
    assert env.step(fresh)[-1]["step"] == 1  # a refused item costs nothing; others play on
    open_env = allowed.make_env(split)
    open_env.reset(options={"user": user})
    assert open_env.step(item)[-1]["step"] == 1


def test_batched_env_refuses_a_logged_item_of_a_running_row(excluded):
    users = excluded.test_users[:2]
    item = min(excluded.logged(users[1]))
    fresh = next(i for i in range(excluded.dataset.n_items) if i not in excluded.logged(users[0]))
    env = excluded.make_batched_env("test")
    state = env.reset(users)
    assert torch.equal(state.excluded, excluded.excluded_mask(users))
    with pytest.raises(ValueError, match=rf"row 1: item {item} is in user {users[1]}'s"):
        env.step(torch.tensor([fresh, item]))


def test_hand_built_worlds_take_exclusion_lists():
    world = UserWorld(
        torch.full((2, 4), 4.0), torch.eye(4), 0.1, torch.tensor([7, 9]), excluded=[[1, 3], []]
    )
    assert world.excluded_of(7) == {1, 3} and world.excluded_of(9) == frozenset()
    env = RecEnv(world)
    env.reset(options={"user": 7})
    with pytest.raises(ValueError, match="item 3 is in user 7's"):
        env.step(3)
    assert dataclasses.replace(world, max_steps=3).excluded is world.excluded
    with pytest.raises(ValueError, match="excluded"):
        UserWorld(torch.full((2, 4), 4.0), torch.eye(4), 0.1, torch.tensor([7, 9]), excluded=[[1]])
    ex = Exclusions.from_lists([[3, 1, 1], [], [0]], 4)
    assert ex.row(0) == {1, 3} and ex.subset([2, 0]).row(1) == {1, 3}
    assert ex.mask([1, 2]).tolist() == [[False] * 4, [True, False, False, False]]


def test_no_baseline_ever_recommends_a_logged_item(excluded, allowed):
    users = excluded.test_users[:USERS]
    for bundle, expect_hits in ((excluded, False), (allowed, True)):
        world = bundle.world("test")
        policies = {**reference_policies(bundle, "test"), "myopic": MyopicPolicy(world)}
        hits = {}
        for name, policy in policies.items():
            shown = play(world, policy, users)
            assert all(shown[u] for u in users), name
            hits[name] = logged_hits(bundle, shown)
        if expect_hits:
            # The truth readers go straight for the items the model was fit on.
            assert hits["oracle"] > 0 and hits["myopic"] > 0 and hits["itemcf"] > 0, hits
        else:
            assert hits == dict.fromkeys(policies, 0)


def test_echo_history_replays_only_the_log_and_exclude_refuses_it(excluded, allowed):
    users = allowed.test_users[:USERS]
    world = allowed.world("test")
    shown = play(world, EchoHistoryPolicy(world, allowed.histories), users)
    for user in users:
        assert set(shown[user]) <= set(allowed.histories[user])
        assert shown[user][0] == allowed.histories[user][-1]  # most recent first
    closed = excluded.world("test")
    with pytest.raises(ValueError, match="logged history"):
        evaluate_policy(closed, EchoHistoryPolicy(closed, excluded.histories), users)


def test_candidates_never_offer_a_logged_item(excluded, allowed):
    open_hits = 0
    for bundle in (excluded, allowed):
        generator = CandidateGenerator(bundle)
        for user in bundle.test_users[:30]:
            history = bundle.histories[user][-10:]
            first = generator.shortlist(user, history, [], 20)
            later = generator.shortlist(user, history, first[:3], 20)
            hits = len((set(first) | set(later)) & bundle.logged(user))
            if bundle is excluded:
                assert hits == 0
            open_hits += hits
    assert open_hits > 0  # co-occurrence with the history ranks logged items high


@pytest.fixture
def graph_ctx(tmp_path: Path):
    return lambda **kw: Context(
        dataset="synthetic",
        llm="scripted",
        embeddings="hashing",
        memory_dir=str(tmp_path / "mem"),
        max_steps=6,
        **kw,
    )


@pytest.mark.parametrize("grounding", ["free", "shortlist"])
def test_the_scripted_double_through_the_graph_never_recommends_a_logged_item(
    excluded, allowed, graph_ctx, grounding
):
    ctx = graph_ctx(grounding=grounding)
    graph = build_graph()
    users = excluded.test_users[:4]
    for user in users:
        result = graph.invoke({"user_id": user}, context=ctx)
        assert result["recommended"]
        assert not set(result["recommended"]) & excluded.logged(user), (user, result["steps"])
    if grounding == "free":
        # Under "allow" the double's history titles ground exactly: it echoes the log.
        open_ctx = graph_ctx(grounding=grounding, logged_items="allow")
        result = graph.invoke({"user_id": users[0]}, context=open_ctx)
        assert set(result["recommended"]) & allowed.logged(users[0])


def test_card_reports_the_setting_the_planning_gap_and_popularity(excluded, allowed):
    for bundle in (excluded, allowed):
        card = bundle.card
        assert card["logged_items"] == bundle.config.logged_items
        gap = card["planning_gap"]
        assert set(gap) == {"myopic", "oracle"}
        assert all(set(gap[k]) == {"len", "r_traj"} for k in gap)
        assert gap["oracle"]["len"] == card["policies"]["oracle"]["len"]
        assert gap["myopic"]["len"] < gap["oracle"]["len"] / 2  # this world rewards planning
        um = card["user_model"]
        assert 0.5 < um["popularity_auc"] < um["auc"]
        assert card["verdict"].startswith("ok: ")
    assert "echo_history" in allowed.card["policies"]
    assert "echo_history" not in excluded.card["policies"]
    echo = allowed.card["policies"]["echo_history"]
    assert 1 <= echo["len"] < allowed.card["policies"]["oracle"]["len"]


def test_verdict_warns_on_a_small_gap_or_a_popularity_like_model():
    wide = {"myopic": {"len": 1.0, "r_traj": 5.0}, "oracle": {"len": 50.0, "r_traj": 240.0}}
    narrow = {"myopic": {"len": 30.0, "r_traj": 120.0}, "oracle": {"len": 50.0, "r_traj": 200.0}}
    assert verdict(wide, 0.90, 0.80).startswith("ok: ")
    small_gap = verdict(narrow, 0.90, 0.80)
    assert small_gap.startswith("warning: ") and "would not reward planning" in small_gap
    popular = verdict(wide, 0.904, 0.89)
    assert popular.startswith("warning: ") and "popularity" in popular
    assert "\n" not in verdict(narrow, 0.904, 0.89)


def test_run_directories_and_results_record_the_setting(excluded, tmp_path):
    run = RunDir(tmp_path / "dir")
    run.path.mkdir(parents=True)
    run.check_environment(excluded)
    assert '"logged_items": "exclude"' in (run.path / ENVIRONMENT_FILE).read_text()
    config = RunConfig(methods=["random"], dataset="synthetic", test_users=3, seeds=[0])
    Experiment(config, tmp_path / "run").run()
    results, _ = render(tmp_path / "run")
    assert results["environment"]["logged_items"] == "exclude"
    assert "logged items: `exclude`" in (tmp_path / "run" / "results.md").read_text()
