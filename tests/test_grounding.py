"""Grounding free-text titles: exact, normalized, fuzzy, embedding, never a repeat."""

from __future__ import annotations

import numpy as np
import pytest

from memory.embeddings import make_embeddings
from nodes.grounding import TitleIndex, normalize_for_match

TITLES = ["The Silent Harbor", "Crimson Orbit II", "Crimson Orbit", "Harbor Lights", "Zelda"]


@pytest.fixture(scope="module")
def index():
    emb = make_embeddings("hashing")
    return TitleIndex(TITLES, emb.embed(TITLES)), emb


def test_exact_title(index):
    idx, _ = index
    g = idx.match("Crimson Orbit")
    assert (g.item, g.match, g.replaced) == (2, "exact", False)


def test_normalized_title_ignores_case_punctuation_and_article(index):
    idx, _ = index
    g = idx.match("  silent harbor!! ")
    assert (g.item, g.match, g.replaced) == (0, "normalized", False)
    assert normalize_for_match("Café — The") == "cafe the"


def test_fuzzy_title_is_a_recorded_replacement(index):
    idx, _ = index
    g = idx.match("Crimson Orbitt II")
    assert (g.item, g.match, g.replaced) == (1, "fuzzy", True)


def test_embedding_fallback_for_unknown_titles(index):
    idx, emb = index
    answer = "Lights of a harbor at night"
    assert idx.match(answer) is None
    g = idx.ground(answer, emb.embed([answer])[0])
    assert g.match == "embedding" and g.replaced
    assert g.item == 3  # shares the most words with "Harbor Lights"


def test_excluded_items_are_never_returned(index):
    idx, emb = index
    g = idx.ground("Crimson Orbit", emb.embed(["Crimson Orbit"])[0], exclude={2})
    assert g.item != 2 and g.replaced
    every_but_one = set(range(len(TITLES))) - {4}
    g = idx.ground("The Silent Harbor", emb.embed(["x"])[0], exclude=every_but_one)
    assert g.item == 4
    with pytest.raises(ValueError, match="every catalogue item is excluded"):
        idx.ground("Zelda", emb.embed(["Zelda"])[0], exclude=set(range(len(TITLES))))


def test_mismatched_vectors_are_rejected():
    with pytest.raises(ValueError, match="2 titles but 1 title vectors"):
        TitleIndex(["a", "b"], np.ones((1, 4), dtype=np.float32))
