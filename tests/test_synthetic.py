"""The synthetic dataset: deterministic, well-formed, and shaped like a real logged dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simulator.synthetic import GENRES, generate
from simulator.types import Dataset


@pytest.fixture(scope="module")
def small() -> Dataset:
    return generate(seed=3, n_items=400, n_users=300)


def test_same_seed_gives_identical_frames(small: Dataset) -> None:
    again = generate(seed=3, n_items=400, n_users=300)
    pd.testing.assert_frame_equal(small.interactions, again.interactions)
    pd.testing.assert_frame_equal(small.items, again.items)
    assert small.users == again.users


def test_different_seed_gives_different_data(small: Dataset) -> None:
    other = generate(seed=4, n_items=400, n_users=300)
    assert not small.interactions.equals(other.interactions)
    assert small.titles() != other.titles()


def test_items_have_unique_titles_and_known_genres(small: Dataset) -> None:
    items = small.items
    assert list(items.columns) == ["item", "title", "genres"]
    assert items["item"].tolist() == list(range(400)) == items.index.tolist()
    assert items["title"].is_unique
    assert all(isinstance(t, str) and t == t.strip() and len(t) > 3 for t in items["title"])
    for genres in items["genres"]:
        assert 1 <= len(genres) <= 3 and len(set(genres)) == len(genres)
        assert set(genres) <= set(GENRES)
    assert len({g for gs in items["genres"] for g in gs}) >= 15  # the catalogue spans genres


def test_titles_stay_unique_beyond_the_plain_combinations() -> None:
    ds = generate(seed=0, n_items=9000, n_users=5)
    assert ds.items["title"].is_unique and ds.n_items == 9000


def test_interactions_are_time_ordered_histories(small: Dataset) -> None:
    x = small.interactions
    assert list(x.columns) == ["user", "item", "signal", "order"]
    assert x["user"].between(0, small.n_users - 1).all()
    assert x["item"].between(0, small.n_items - 1).all()
    assert not x.duplicated(["user", "item"]).any()
    for _, g in x.groupby("user"):
        assert g["order"].tolist() == list(range(len(g)))
    pos = x[x["signal"] > 0].groupby("user").size()
    assert len(pos) == small.n_users and pos.between(10, 60).all()
    assert x.loc[x["signal"] > 0, "signal"].between(1.0, 3.0).all()
    neg = x[x["signal"] < 0]
    assert (neg["signal"] == -1.0).all() and 0 < len(neg) <= 3 * small.n_users
    assert neg.groupby("user").size().max() <= 3
    # Negatives are scattered through time, not always last.
    assert (neg["order"] < x.groupby("user")["order"].transform("max")[neg.index]).any()


def test_histories_follow_user_tastes(small: Dataset) -> None:
    """Each user's positives concentrate on few genres: far more than a random history does."""
    x = small.interactions[small.interactions["signal"] > 0]
    genres = small.items["genres"]
    rng = np.random.default_rng(0)

    def top_genre_share(items: np.ndarray) -> float:
        counts = pd.Series([g for i in items for g in genres[i]]).value_counts()
        return counts.iloc[0] / len(items)

    real = np.mean([top_genre_share(g["item"].to_numpy()) for _, g in x.groupby("user")])
    fake = np.mean(
        [top_genre_share(rng.choice(small.n_items, size=len(g))) for _, g in x.groupby("user")]
    )
    assert real > 1.8 * fake


def test_too_small_catalogue_is_refused() -> None:
    with pytest.raises(ValueError, match="n_items >= 80"):
        generate(n_items=50)
