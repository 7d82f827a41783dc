"""BiLLP's two learning levels act and are seen to act (billp must not behave like Reflexion).

Each test here failed on the code before the fix: the state key held the user's own history (no
other user's episode ever matched it), fixed thresholds cached with the memories, the quitting
step stored as "+", Reflexion retrieving reflections by similarity like BiLLP.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from eval.experiment import Experiment
from eval.protocol import RunConfig
from eval.report import render
from graph import Context, build_graph
from memory.rules import HintRule
from memory.stores import MacroMemory
from nodes.actor import act, exploration_genres
from nodes.draws import draw_seed
from nodes.lessons import learn_step
from nodes.resources import get_resources, memory_path
from nodes.views import STATE_WINDOW, state_key


def ctx(tmp_path: Path, **kw: Any) -> Context:
    base = dict(
        dataset="synthetic", llm="scripted", embeddings="hashing", memory_dir=str(tmp_path / "m")
    )
    return Context(**{**base, **kw})


def two_users_same_recent_items(res: Any) -> tuple[dict, dict]:
    """Return two states of different users whose last 10 recommended items are the same."""
    users = [u for u in res.bundle.train_users if len(res.history_of(u, 15)) >= 5][:2]
    a_hist, b_hist = res.history_of(users[0], 15), res.history_of(users[1], 15)
    assert a_hist != b_hist
    taken = set(a_hist) | set(b_hist)
    episode = [i for i in range(len(res.catalogue.titles)) if i not in taken][:STATE_WINDOW]
    a = {"user_id": users[0], "history": a_hist, "recommended": episode, "steps": []}
    b = {"user_id": users[1], "history": b_hist, "recommended": episode, "steps": []}
    return a, b


def test_a_state_reached_by_one_user_hints_another_users_episode(tmp_path):
    c = ctx(tmp_path, learn=True, hint_rule="reference", explore=False)
    res = get_resources(c)
    a, b = two_users_same_recent_items(res)
    assert state_key(res, a) == state_key(res, b)  # one sliding window over history + episode
    item = max(a["recommended"]) + 1  # not recommended yet: a hint worth showing
    asyncio.run(learn_step(res, "llm", state_key(res, a), item, advantage=1.0, target=2.0))
    out = asyncio.run(act(b, c, use_memory=True))
    assert out["pending"]["actor_hint"] == {str(item): 1}
    assert out["pending"]["hint_distance"] == pytest.approx(0.0, abs=1e-4)


def test_keys_are_newest_first_and_fit_minilm():
    from tokenizers import Tokenizer

    from memory.embeddings import minilm_model_dir

    long_titles = [
        f"The Chronicles of Item {i}: A Very Long Subtitle, Director's Cut Edition (Volume {i})"
        for i in range(30)
    ]
    res = SimpleNamespace(catalogue=SimpleNamespace(titles=long_titles))
    key = state_key(res, {"history": list(range(20)), "recommended": [25, 26, 27]})
    assert key.index("Item 27") < key.index("Item 26") < key.index("Item 25")
    assert "Item 13:" in key and "Item 12:" not in key  # the last 10 of history + episode
    tokenizer = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
    assert len(tokenizer.encode(key).ids) <= 256


def test_quitting_step_is_labelled_minus_even_when_valued_low(tmp_path):
    """With V(s) at the scale's floor A would have been 0 ('+'): the quit step teaches '-'."""
    from nodes.lessons import td_lesson

    for reason in ("low_rating", "similar", "repeat"):
        lesson = td_lesson(0.0, reason, value_next=0.0, value_now=-5.0, gamma=0.5)
        assert lesson.advantage < 0 and lesson.target == -5.0
    kept = td_lesson(5.0, None, value_next=5.0, value_now=5.0, gamma=0.5)
    assert kept.target == pytest.approx(4.5) and kept.advantage < 0  # did worse than expected
    good = td_lesson(5.0, None, value_next=2.0, value_now=0.0, gamma=0.5)
    assert good.advantage == pytest.approx(3.0)


def test_changed_thresholds_take_effect_in_the_same_process(tmp_path):
    strict = ctx(tmp_path, learn=True, hint_rule="reference", actor_near=0.0001, actor_band=[0, 0])
    res = get_resources(strict)
    a, _ = two_users_same_recent_items(res)
    far = {**a, "recommended": a["recommended"][:-3]}
    item = max(a["recommended"]) + 1
    asyncio.run(learn_step(res, "llm", state_key(res, far), item, advantage=1.0, target=1.0))
    assert asyncio.run(act(a, strict, use_memory=True))["pending"]["actor_hint"] is None
    loose = ctx(tmp_path, learn=True, hint_rule="reference", actor_near=4.0)
    assert get_resources(loose).memories is res.memories  # one folder, one object
    hint = asyncio.run(act(a, loose, use_memory=True))["pending"]["actor_hint"]
    assert hint == {str(item): 1}


def test_derived_rule_fires_within_the_quantile_of_observed_distances(tmp_path):
    rule = HintRule.derived(0.5, near=0.001)
    assert not rule.fires(0.3, rule.radius([]))  # nothing observed yet: only near-identical
    observed = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert rule.radius(observed) == pytest.approx(0.3)
    assert rule.fires(0.3, rule.radius(observed)) and not rule.fires(0.31, rule.radius(observed))
    res = get_resources(ctx(tmp_path))
    res.memories.actor.observe([*observed, None, float("nan")])
    assert res.memories.actor.observed == observed
    assert res.memories.actor.radius(rule) == pytest.approx(0.3)
    res.memories.actor.observe([0.01] * 10)  # the radius follows new observations at once
    assert res.memories.actor.radius(rule) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="quantile"):
        HintRule.derived(0.0)


def test_reflexion_samples_reflections_at_random_and_never_searches(tmp_path, monkeypatch):
    c = ctx(tmp_path, learn=True)
    build_graph("reflexion").invoke({"user_id": 1}, context=c)
    macro = get_resources(c).memories.macro
    for i in range(5):
        macro.add(f"Lesson {i}: vary genres after {i} items.", f"history of user {i}")

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Reflexion must not retrieve reflections by similarity")

    monkeypatch.setattr(MacroMemory, "retrieve", forbidden)
    monkeypatch.setattr(MacroMemory, "aretrieve", forbidden)
    first = build_graph("reflexion").invoke({"user_id": 9}, context=ctx(tmp_path, learn=False))
    again = build_graph("reflexion").invoke({"user_id": 9}, context=ctx(tmp_path, learn=False))
    assert len(first["reflections"]) == 2
    assert first["reflections"] == again["reflections"]  # seeded by (run seed, user)
    picks = {tuple(macro.sample(2, np.random.default_rng(s))) for s in range(20)}
    assert len(picks) > 3  # a random sample, not a fixed top-2
    others = {
        tuple(
            build_graph("reflexion").invoke({"user_id": u}, context=ctx(tmp_path, learn=False))[
                "reflections"
            ]
        )
        for u in range(10, 16)
    }
    assert len(others) > 1  # users draw their own
    with pytest.raises(AssertionError, match="similarity"):
        build_graph("billp").invoke({"user_id": 9}, context=ctx(tmp_path, learn=False))


def test_exploration_hint_avoids_recent_genres_and_is_seeded(tmp_path):
    res = get_resources(ctx(tmp_path))
    state = {"user_id": 5, "recommended": [0, 1, 2, 3, 4, 5]}
    genres = exploration_genres(res, state, seed=0)
    recent = {g for i in state["recommended"][-res.window :] for g in res.catalogue.genres[i]}
    assert len(genres) == 2 and not set(genres) & recent
    assert genres == exploration_genres(res, state, seed=0)
    drawn = {tuple(exploration_genres(res, {**state, "user_id": u}, seed=0)) for u in range(30)}
    assert len(drawn) > 1
    out = asyncio.run(act({**state, "history": []}, ctx(tmp_path), use_memory=False))
    assert out["pending"]["explore"] == genres
    quiet = asyncio.run(act({**state, "history": []}, ctx(tmp_path, explore=False), False))
    assert quiet["pending"]["explore"] == []


def test_draws_depend_on_who_plays_which_step_only():
    assert draw_seed(0, 5, 3, "actor") == draw_seed(0, 5, 3, "actor")
    seeds = {draw_seed(s, u, t, r) for s in (0, 1) for u in (5, 6) for t in (0, 1) for r in "ab"}
    assert len(seeds) == 16 and all(0 <= s < 2**31 for s in seeds)


def test_variants_keep_their_own_default_memories(tmp_path, monkeypatch):
    monkeypatch.setenv("BILLP_CACHE", str(tmp_path / "cache"))
    c = Context(dataset="synthetic", llm="scripted", embeddings="hashing", split="train")
    paths = {memory_path(c, v) for v in ("billp", "reflexion", "billp-nomicro", "billp-nomacro")}
    assert len(paths) == 4
    build_graph("reflexion").invoke({"user_id": 1}, context=c)  # learns: the train split
    assert len(get_resources(c, "reflexion").memories.macro) == 1
    assert len(get_resources(c, "billp").memories.macro) == 0


def test_billp_acts_differently_from_reflexion_and_the_audit_shows_it(tmp_path):
    methods = ["reflexion", "billp", "billp-nomicro", "billp-nomacro"]
    config = RunConfig(
        methods=methods,
        dataset="synthetic",
        llm="scripted",
        embeddings="hashing",
        train_users=30,
        test_users=12,
        max_steps=12,
    )
    Experiment(config, tmp_path / "run").run()
    results, _ = render(tmp_path / "run")
    audit = {m: results["methods"][m]["learning"] for m in methods}
    billp = audit["billp"]
    assert billp["actor_hint_rate"] > 0.2 and billp["critic_hint_rate"] > 0.1
    assert billp["differs_from"]["reflexion"] > 0
    assert billp["hint_precision"]["n_plus"] + billp["hint_precision"]["n_minus"] > 0
    assert len(billp["train_curve"]) == 3  # 30 training users in batches of 10
    for m in ("reflexion", "billp-nomicro"):
        assert audit[m]["actor_hint_rate"] == 0 and audit[m]["critic_hint_rate"] == 0
    assert audit["billp-nomacro"]["reflections_per_episode"] == 0
    assert audit["reflexion"]["reflections_per_episode"] == 2
    steps = [
        s
        for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()
        for s in json.loads(line)["steps"]
        if json.loads(line)["method"] == "billp"
    ]
    assert any(s.get("hint_distance") is not None for s in steps)  # step records keep it
    assert "Learning audit" in (tmp_path / "run" / "results.md").read_text()
