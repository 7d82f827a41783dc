"""Real environments keep their contract: AUC >= 0.8, 100+ test users, oracle > itemcf > random,
myopic play far below the oracle, and logged items excluded.

Builds Steam and Amazon-Book from `../shared/data` (or BILLP_DATA); skipped when absent.
"""

from __future__ import annotations

import pytest

from simulator.build import EnvConfig, build_env
from simulator.paths import data_dir

DATA = data_dir()


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("dataset", ["steam", "amazon"])
def test_real_environment_card(dataset):
    if DATA is None or not (DATA / dataset).is_dir():
        pytest.skip(f"no {dataset} data (set BILLP_DATA or provide ../shared/data/{dataset})")
    card = build_env(EnvConfig(dataset=dataset)).card
    assert card["user_model"]["auc"] >= 0.80
    assert card["n_test_users"] >= 100 and card["n_train_users"] >= 100
    p = card["policies"]
    assert p["oracle"]["r_traj"] > p["itemcf"]["r_traj"] > p["random"]["r_traj"]
    hist = card["rating_hist"]
    share_high = (hist["positives"]["4"] + hist["positives"]["5"]) / sum(hist["positives"].values())
    share_low = sum(hist["random"][k] for k in "123") / sum(hist["random"].values())
    assert share_high > 0.6 and share_low > 0.6
    # Issue 11: no echo of the user's own log, the env rewards planning, the model beats popularity.
    assert card["logged_items"] == "exclude"
    gap = card["planning_gap"]
    assert gap["myopic"]["len"] < gap["oracle"]["len"] / 5
    assert card["user_model"]["popularity_auc"] < card["user_model"]["auc"]
