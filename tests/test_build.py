"""Environment build: split, card, cache hit, rebuild on changed input or corruption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import simulator.build as build
from simulator.build import EnvConfig, build_env, split_users

FIXTURES = Path(__file__).parent / "fixtures" / "datasets" / "csv"
SMALL = dict(
    dataset="synthetic",
    dataset_options={"n_items": 200, "n_users": 260},
    user_model={"epochs": 3, "dim": 8},
    min_split_users=100,
)
CARD_KEYS = {
    "dataset",
    "n_users",
    "n_items",
    "n_train_users",
    "n_test_users",
    "user_model",
    "tau",
    "tau_percentile",
    "window",
    "max_steps",
    "rating_hist",
    "policies",
    "logged_items",
    "planning_gap",
    "verdict",
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return build_env(EnvConfig(**SMALL), cache=cache), cache


def test_card_has_the_documented_keys(small):
    bundle, _ = small
    card = bundle.card
    assert set(card) >= CARD_KEYS
    assert {"auc", "popularity_auc", "hr_at_10"} <= set(card["user_model"])
    assert card["logged_items"] == "exclude"  # the default: no echo of the user's own log
    assert {k: set(v) for k, v in card["planning_gap"].items()} == {
        "myopic": {"len", "r_traj"},
        "oracle": {"len", "r_traj"},
    }
    assert card["verdict"].split(":")[0] in ("ok", "warning")
    assert set(card["rating_hist"]) == {"positives", "random"}
    assert set(card["policies"]) == {"random", "popularity", "itemcf", "oracle"}
    for metrics in card["policies"].values():
        assert {"len", "r_each", "r_traj"} <= set(metrics)
    json.dumps(card)  # JSON-native


def test_split_is_disjoint_and_large_enough(small):
    bundle, _ = small
    train, test = set(bundle.train_users), set(bundle.test_users)
    assert not train & test
    assert len(test) >= 100 and len(train) >= 100
    again = split_users(bundle.dataset, bundle.config)
    assert again == (bundle.train_users, bundle.test_users)  # seeded


def test_worlds_rate_in_range_and_test_ratings_are_integers(small):
    bundle, _ = small
    test, train = bundle.world("test"), bundle.world("train")
    assert test.ratings.min() >= 1 and test.ratings.max() <= 5
    assert bool((test.ratings == test.ratings.round()).all())
    assert not bool((train.ratings == train.ratings.round()).all())  # continuous in train
    assert test.n_users == len(bundle.test_users)


def test_second_build_is_a_cache_hit(small, monkeypatch):
    bundle, cache = small

    def no_build(*args, **kwargs):
        raise AssertionError("the second build should load from the cache")

    monkeypatch.setattr(build, "_build", no_build)
    again = build_env(EnvConfig(**SMALL), cache=cache)
    assert again.path == bundle.path
    assert again.card == bundle.card
    assert again.test_users == bundle.test_users


def test_corrupt_artifact_is_detected_and_rebuilt(small, tmp_path, caplog):
    _, cache = small
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    (model,) = (copy / "envs").glob("*/gt_model")
    victim = next(p for p in model.iterdir() if p.is_file())
    victim.write_bytes(victim.read_bytes()[:10])
    rebuilt = build_env(EnvConfig(**SMALL), cache=copy)
    assert "rebuilding" in caplog.text and str(victim) in caplog.text
    assert rebuilt.card["n_items"] == 200


def test_changed_input_rebuilds(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    config = EnvConfig(
        dataset="csv",
        dataset_options={
            "interactions": str(data / "interactions.csv"),
            "items": str(data / "items.csv"),
            "min_user_items": 1,
        },
        user_model={"epochs": 1, "dim": 4},
        min_split_users=1,
    )
    key = config.key(None)
    with open(data / "interactions.csv", "a", encoding="utf-8") as fh:
        fh.write("\n")
    assert config.key(None) != key
