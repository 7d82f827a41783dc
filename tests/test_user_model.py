"""The user model (simulator ground truth): it learns, its metric can fail, it saves safely."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from simulator.calibration import RatingCalibrator
from simulator.synthetic import generate
from simulator.types import DataError, Dataset
from simulator.user_model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    UserModel,
    UserModelConfig,
    evaluate_leave_last_out,
    leave_last_out,
    train_user_model,
)

# Small and fast (~1-2 s per model) yet enough to learn the synthetic tastes.
FAST = {"dim": 32, "epochs": 8, "lr": 0.02, "batch_size": 1024, "n_negatives": 1}


@pytest.fixture(scope="module")
def data() -> tuple[Dataset, pd.DataFrame, pd.DataFrame]:
    ds = generate(seed=1, n_items=300, n_users=500)
    train, heldout = leave_last_out(ds.interactions)
    return ds, train, heldout


@pytest.fixture(scope="module")
def mf(data: tuple[Dataset, pd.DataFrame, pd.DataFrame]) -> UserModel:
    ds, train, _ = data
    return train_user_model(train, ds.n_users, ds.n_items, UserModelConfig(**FAST))


def test_mf_learns_synthetic_tastes(data, mf: UserModel) -> None:
    ds, train, heldout = data
    quality = evaluate_leave_last_out(mf, heldout, train, ds.n_items)
    assert quality["n_users"] == ds.n_users
    assert quality["auc"] >= 0.9
    assert quality["hr_at_10"] >= 0.6


def test_untrained_model_scores_chance(data) -> None:
    ds, train, heldout = data
    torch.manual_seed(0)
    quality = evaluate_leave_last_out(
        UserModel(ds.n_users, ds.n_items, UserModelConfig()), heldout, train, ds.n_items
    )
    assert 0.45 <= quality["auc"] <= 0.55
    assert quality["hr_at_10"] <= 0.2


def test_deepfm_learns_too(data) -> None:
    ds, train, heldout = data
    model = train_user_model(train, ds.n_users, ds.n_items, UserModelConfig(kind="deepfm", **FAST))
    assert evaluate_leave_last_out(model, heldout, train, ds.n_items)["auc"] >= 0.88
    users = torch.tensor([0, 7, 42])
    matrix = model.score_matrix(users)
    items = torch.tensor([3, 150, 299])
    pairs = model.score(users.repeat_interleave(3), items.repeat(3)).detach().view(3, 3)
    torch.testing.assert_close(matrix[:, items], pairs)


def test_score_matrix_matches_pairwise_scores(mf: UserModel) -> None:
    users = torch.tensor([4, 4, 9])
    matrix = mf.score_matrix(users)
    assert matrix.shape == (3, mf.n_items)
    pairs = mf.score(torch.tensor([4, 9]), torch.tensor([17, 250])).detach()
    torch.testing.assert_close(torch.stack([matrix[0, 17], matrix[2, 250]]), pairs)
    assert mf.item_vectors().shape == (mf.n_items, 32)


def test_training_is_deterministic_and_reports_progress(data) -> None:
    ds, train, _ = data
    seen: list[tuple[int, int, float]] = []
    cfg = UserModelConfig(**{**FAST, "epochs": 3})
    a = train_user_model(train, ds.n_users, ds.n_items, cfg, progress=lambda *p: seen.append(p))
    b = train_user_model(train, ds.n_users, ds.n_items, cfg)
    c = train_user_model(
        train, ds.n_users, ds.n_items, UserModelConfig(**{**FAST, "epochs": 3, "seed": 1})
    )
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.item_emb.weight, c.item_emb.weight)
    assert [(e, n) for e, n, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert seen[-1][2] < seen[0][2]


def test_explicit_negatives_push_scores_down() -> None:
    # Users 0-19 all like items 0-4; half of them also explicitly reject item 5, which
    # otherwise co-occurs with nothing: its score must fall below the liked items.
    rows = [(u, i, 1.0) for u in range(20) for i in range(5)]
    rows += [(u, 5, -1.0) for u in range(10)]
    x = pd.DataFrame(rows, columns=["user", "item", "signal"])
    model = train_user_model(x, 20, 30, UserModelConfig(epochs=60, batch_size=64, lr=0.05))
    scores = model.score_matrix(torch.arange(10))
    assert (scores[:, 5] < scores[:, :5].min(1).values).all()


def test_bad_ids_name_the_row() -> None:
    x = pd.DataFrame({"user": [0, 1, 2], "item": [0, 1, 9], "signal": [1.0, 1.0, 1.0]})
    with pytest.raises(DataError, match=r"row 2.*'item'.*outside 0..4"):
        train_user_model(x, 3, 5, UserModelConfig(epochs=1))


def test_leave_last_out_holds_out_each_users_latest_positive() -> None:
    x = pd.DataFrame(
        {
            "user": [0, 0, 0, 0, 1, 1, 2, 2, 2],
            "item": [5, 6, 7, 8, 1, 2, 3, 4, 9],
            "signal": [1.0, 2.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, 3.0],
            "order": [0, 1, 2, 3, 0, 1, 2, 0, 1],
        }
    )
    train, heldout = leave_last_out(x)
    # User 0's last row is a negative, so its last positive (item 7) is held out; user 1 has a
    # single positive and keeps it; user 2's positives are out of row order.
    assert heldout[["user", "item"]].values.tolist() == [[0, 7], [2, 3]]
    assert len(train) == len(x) - 2
    assert not set(heldout.index) & set(train.index)


class _FixedScores:
    """A stand-in model whose score matrix is given, to check the metric by hand."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix

    def score_matrix(self, users: torch.Tensor) -> torch.Tensor:
        return self.matrix[users]


def test_evaluate_on_a_hand_built_case() -> None:
    # 102 items; every user has item 0 in training and one held-out item, so exactly 100 items
    # are unseen and all of them are the sampled negatives: the answer is fully determined.
    n = 102
    idx = torch.arange(n, dtype=torch.float32)
    matrix = torch.stack([idx, idx, -idx, torch.zeros(n)])
    heldout = pd.DataFrame({"user": [0, 1, 2, 3], "item": [1, 101, 10, 5]})
    train = pd.DataFrame({"user": [0, 1, 2, 3], "item": [0, 0, 0, 0]})
    q = evaluate_leave_last_out(_FixedScores(matrix), heldout, train, n, seed=5)
    # user 0: below every negative; user 1: above all; user 2: 9 items (1..9) above it, 91
    # below; user 3: all tied (half credit each, and ties count against the hit).
    assert q["auc"] == pytest.approx((0.0 + 1.0 + 0.91 + 0.5) / 4)
    assert q["hr_at_10"] == pytest.approx(2 / 4)
    assert q["n_users"] == 4


def test_evaluate_refuses_users_with_too_few_unseen_items() -> None:
    heldout = pd.DataFrame({"user": [0], "item": [1]})
    train = pd.DataFrame({"user": [0], "item": [0]})
    with pytest.raises(DataError, match="user 0 has only 48 unseen"):
        evaluate_leave_last_out(_FixedScores(torch.zeros(1, 50)), heldout, train, 50)


@pytest.mark.parametrize("kind", ["mf", "deepfm"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    model = UserModel(7, 11, UserModelConfig(kind=kind, dim=4, hidden=8, seed=3)).eval()
    model.save(tmp_path)
    loaded = UserModel.load(tmp_path)
    assert loaded.config == model.config and (loaded.n_users, loaded.n_items) == (7, 11)
    users = torch.arange(7)
    torch.testing.assert_close(loaded.score_matrix(users), model.score_matrix(users))
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["config"]["kind"] == kind


def test_corrupt_or_missing_files_say_rebuild(tmp_path: Path) -> None:
    UserModel(5, 6, UserModelConfig(dim=4)).save(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(ModelFileError, match=rf"{WEIGHTS_FILE}.*rebuild"):
        UserModel.load(tmp_path)
    weights.write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match=rf"{WEIGHTS_FILE}.*corrupt"):
        UserModel.load(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match=rf"{CONFIG_FILE}.*rebuild"):
        UserModel.load(tmp_path)
    with pytest.raises(ModelFileError, match="missing"):
        UserModel.load(tmp_path / "nowhere")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    UserModel(5, 6, UserModelConfig(dim=4)).save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["n_items"] = 9
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="does not match"):
        UserModel.load(tmp_path)


def test_config_round_trips_through_json_and_rejects_typos() -> None:
    cfg = UserModelConfig(kind="deepfm", dim=16, epochs=3, seed=9)
    assert UserModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        UserModelConfig.from_dict({"dims": 8})
    with pytest.raises(ValueError, match="kind"):
        UserModelConfig(kind="bpr")


# --- calibration -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def separated() -> tuple[torch.Tensor, torch.Tensor, RatingCalibrator]:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(2000, generator=gen) + 2.0
    rnd = torch.randn(5000, generator=gen) - 1.0
    return pos, rnd, RatingCalibrator.fit(pos, rnd)


def test_calibration_is_monotone_and_bounded(separated) -> None:
    _, _, cal = separated
    scores = torch.linspace(-1e4, 1e4, 20001)
    for integer in (False, True):
        r = cal(scores, integer=integer)
        assert r.dtype == torch.float32 and r.shape == scores.shape
        assert (r.diff() >= 0).all()
        assert r.min() == 1.0 and r.max() == 5.0
    # Continuous (not stepped) between the outer knots: ratings 1.5 .. 4.5.
    inner = cal(torch.linspace(cal.knots[0], cal.knots[3], 1001, dtype=torch.float64))
    assert (inner.diff() > 0).all()
    assert inner[0].item() == pytest.approx(1.5) and inner[-1].item() == pytest.approx(4.5)


def test_integer_ratings_are_whole_and_split_at_the_knots(separated) -> None:
    _, rnd, cal = separated
    r = cal(rnd, integer=True)
    assert torch.equal(r, r.round())
    t = torch.tensor(cal.knots[2], dtype=torch.float64)  # the 3|4 boundary
    eps = 1e-6
    assert cal(torch.stack([t - eps, t, t + eps]), integer=True).tolist() == [3.0, 4.0, 4.0]


def test_positives_rate_high_and_random_items_rate_low(separated) -> None:
    pos, rnd, cal = separated
    pos_hist, rnd_hist = cal.histogram(pos), cal.histogram(rnd)
    assert list(pos_hist) == ["1", "2", "3", "4", "5"]
    assert sum(pos_hist.values()) == len(pos) and sum(rnd_hist.values()) == len(rnd)
    assert (pos_hist["4"] + pos_hist["5"]) / len(pos) >= 0.9
    assert (rnd_hist["1"] + rnd_hist["2"] + rnd_hist["3"]) / len(rnd) >= 0.9
    # Random items spread over 1-3 (a third of them would make the user quit).
    assert all(0.25 <= rnd_hist[k] / len(rnd) <= 0.35 for k in "123")


def test_inseparable_scores_still_calibrate() -> None:
    gen = torch.Generator().manual_seed(1)
    same = torch.randn(3000, generator=gen)
    cal = RatingCalibrator.fit(same[:1000], same[1000:])
    hist = cal.histogram(same)
    assert sum(hist.values()) == 3000 and min(hist.values()) > 0


def test_calibrator_round_trips_through_json(separated) -> None:
    _, rnd, cal = separated
    back = RatingCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    torch.testing.assert_close(back(rnd), cal(rnd))
    with pytest.raises(ValueError, match="strictly increasing"):
        RatingCalibrator.from_dict({"knots": [1, 0, 2, 3]})
    with pytest.raises(ValueError, match="knots"):
        RatingCalibrator.from_dict({"rule": "x"})
