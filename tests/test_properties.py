"""Property-based tests of the functions that meet untrusted text: data files and model output.

Title normalization and genre parsing read whatever a dataset holds; grounding and output
parsing read whatever a model writes. Each must hold its contract for any input.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage
from pydantic import BaseModel

from memory.embeddings import HashingEmbeddings
from nodes import prompts
from nodes.grounding import TitleIndex
from nodes.llm.calls import call_structured_sync
from nodes.llm.scripted import ScriptedChatModel
from nodes.llm.structured import parse_json_message
from simulator.datasets import normalize_title, parse_genres

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EMB = HashingEmbeddings(64)

# Pieces that real catalogues combine: entities (escaped once or more), marks, odd whitespace.
FRAGMENTS = st.sampled_from(
    [
        "&", "amp;", "&amp;", "&lt;", "&gt;", "&#38;", "&#x26;", "&trade;", "&reg;", "&copy",
        "&nbsp;", "™", "®", "©", " ", "  ", "\t", "\n", "\r\n", "\xa0", "\u2003", "\x1c",
        "a", "é", "Portal", ";", "#", "<b>", "</span>", "|", "[", "]", "'", '"', "\\",
    ]
)  # fmt: skip
MESSY = st.one_of(st.text(), st.lists(st.one_of(FRAGMENTS, st.text(max_size=3)), max_size=25))
MESSY = MESSY.map(lambda v: v if isinstance(v, str) else "".join(v))


# ---------------------------------------------------------------- title normalization


@SETTINGS
@given(MESSY)
@example("&am™p;")  # a mark hiding an entity: removing it makes a new one
@example("&amp;" + "amp;" * 6 + "lt;")  # escaped more often than a fixed number of passes
@example("&amp;am&trade;p;")
def test_normalize_title_is_idempotent_and_clean(text):
    out = normalize_title(text)
    assert normalize_title(out) == out
    assert not set(out) & set("™®©")
    assert "  " not in out and out == out.strip()
    assert all(c == " " or not c.isspace() for c in out)  # no tabs, newlines, nbsp
    assert html.unescape(out) == out  # no entity left, however deeply it was escaped


@SETTINGS
@given(st.text(alphabet=st.characters(exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"])))
def test_normalize_title_keeps_plain_titles(text):
    assume("&" not in text and not set(text) & set("™®©") and not any(c.isspace() for c in text))
    assert normalize_title(text) == text


def test_normalize_title_rejects_non_text():
    assert normalize_title(None) == normalize_title(float("nan")) == normalize_title("") == ""


# ---------------------------------------------------------------- genre parsing

TAG = re.compile(r"<[^>]*>")


def check_genres(genres: list[str]) -> None:
    assert isinstance(genres, list) and len(set(genres)) == len(genres)
    for genre in genres:
        assert genre and normalize_title(genre) == genre and not TAG.search(genre)


@SETTINGS
@given(st.one_of(MESSY, MESSY.map(lambda t: "[" + t)))
def test_parse_genres_of_any_text_is_clean_or_a_value_error(text):
    try:
        genres = parse_genres(text)
    except ValueError:
        assert text.strip().startswith("[")  # only a broken list literal is an error
        return
    check_genres(genres)


@SETTINGS
@given(st.lists(st.one_of(MESSY, st.integers(), st.none()), max_size=6))
def test_parse_genres_of_lists(values):
    as_literal = repr(values)
    if all(isinstance(v, str) for v in values):
        check_genres(parse_genres(values))
        assert parse_genres(values) == parse_genres(as_literal) == parse_genres(tuple(values))
    else:
        with pytest.raises(ValueError):
            parse_genres(values)
        with pytest.raises(ValueError):
            parse_genres(as_literal)


@SETTINGS
@given(st.lists(st.text(alphabet="abcdefgh -&'", min_size=1, max_size=8), max_size=6))
def test_parse_genres_round_trips_pipe_lists(genres):
    clean = list(dict.fromkeys(g for g in map(normalize_title, genres) if g))
    assert parse_genres("|".join(genres)) == clean


# ---------------------------------------------------------------- grounding

CATALOGUE = st.lists(
    MESSY.map(normalize_title).filter(bool), min_size=1, max_size=12
)  # normalized, as every loader stores titles (duplicates allowed, as in real catalogues)


def index_of(titles: list[str]) -> TitleIndex:
    return TitleIndex(titles, EMB.embed(titles))


@SETTINGS
@given(CATALOGUE, st.data())
def test_exact_titles_ground_to_themselves_unless_excluded(titles, data):
    index = index_of(titles)
    exclude = set(data.draw(st.sets(st.integers(0, len(titles) - 1), max_size=len(titles) - 1)))
    for i, title in enumerate(titles):
        got = index.ground(title, EMB.embed([title])[0], exclude)
        assert got.item not in exclude and got.title == titles[got.item]
        if i not in exclude:
            assert got.title == title and got.match == "exact" and not got.replaced


@SETTINGS
@given(CATALOGUE, st.text(), st.data())
def test_any_answer_grounds_to_a_real_allowed_item(titles, answer, data):
    index = index_of(titles)
    exclude = set(data.draw(st.sets(st.integers(0, len(titles) - 1), max_size=len(titles) - 1)))
    got = index.ground(answer, EMB.embed([answer])[0], exclude)
    assert 0 <= got.item < len(titles) and got.item not in exclude
    assert got.title == titles[got.item]
    assert got.replaced == (got.match in ("fuzzy", "embedding"))
    matched = index.match(answer, exclude)
    assert matched is None or (matched.item not in exclude and matched == got)
    with pytest.raises(ValueError, match="every catalogue item is excluded"):
        index.ground(answer, EMB.embed([answer])[0], set(range(len(titles))))


def test_ground_needs_an_embedding_when_no_title_matches():
    index = index_of(["Portal", "Doom"])
    with pytest.raises(ValueError, match="no query embedding"):
        index.ground("Something else entirely", None)
    assert index.ground("portal", None).match == "normalized"


# ---------------------------------------------------------------- output parsing

SCHEMAS: list[type[BaseModel]] = [
    prompts.Plan,
    prompts.TitleChoice,
    prompts.Value,
    prompts.Reflection,
    prompts.shortlist_schema(5),
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = st.sampled_from(["thought", "title", "value", "reflection", "choice", "extra"])
ANSWER_LIKE = st.dictionaries(FIELDS, JSON_VALUES | st.integers(-10, 10), max_size=3).map(
    json.dumps
)
MODEL_TEXT = st.one_of(
    st.text(),
    ANSWER_LIKE,
    ANSWER_LIKE.map(lambda t: t[: len(t) // 2]),  # cut off mid-answer
    st.text(alphabet=st.characters(), max_size=40),  # any code point, lone surrogates too
    st.integers(1, 500).map(lambda n: "[" * n),  # deep nesting
)


@SETTINGS
@given(st.sampled_from(SCHEMAS), MODEL_TEXT, st.sampled_from(["stop", "length", None]))
def test_parsing_any_text_gives_an_answer_or_output_parser_exception(schema, text, finish):
    message = AIMessage(content=text, response_metadata={"finish_reason": finish})
    try:
        value = parse_json_message(message, schema)
    except OutputParserException as exc:
        assert str(exc).startswith(schema.__name__)
        return
    assert isinstance(value, schema)
    assert schema.model_validate(value.model_dump()) == value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SCHEMAS), MODEL_TEXT)
def test_structured_call_on_any_text_never_raises(schema, text):
    model = ScriptedChatModel(responder=lambda messages, s: text)
    result = call_structured_sync(model, [HumanMessage("next?")], schema, retries=0)
    assert result.attempts == 1 and result.usage.calls == 1
    if result.ok:
        assert isinstance(result.value, schema)
    else:
        assert result.value is None and result.error and len(result.error) <= 300


def test_value_schema_rejects_out_of_range_values():
    for bad in (10**9, 6, -6, 2.5, "5", None):
        with pytest.raises(OutputParserException):
            parse_json_message(AIMessage(json.dumps({"value": bad})), prompts.Value)
    assert parse_json_message(AIMessage('{"value": -5}'), prompts.Value).value == -5
    assert np.isfinite(parse_json_message(AIMessage('{"value": 5}'), prompts.Value).value)
