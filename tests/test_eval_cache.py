"""The LLM response cache: hits skip the model, replay the same answer and usage, and persist."""

from __future__ import annotations

import json

from langchain_core.messages import HumanMessage, SystemMessage

from nodes import prompts
from nodes.llm.cache import CachedChatModel, LLMCache, count_hits, model_identity
from nodes.llm.calls import call_structured, call_text
from nodes.llm.scripted import ScriptedChatModel

MESSAGES = [SystemMessage("You plan."), HumanMessage("User history: ...")]


def wrapped(tmp_path, inner=None):
    inner = inner or ScriptedChatModel()
    cache = LLMCache(tmp_path / "cache.sqlite")
    model = CachedChatModel(inner=inner, store=cache, identity=model_identity("s", inner, 0, 0))
    return inner, model


async def test_structured_hits_skip_the_model_and_replay_usage(tmp_path):
    inner, model = wrapped(tmp_path)
    with count_hits() as first_count:
        first = await call_structured(model, MESSAGES, prompts.Plan)
    assert inner.calls == 1 and first_count.misses == 1 and first_count.hits == 0
    with count_hits() as second_count:
        second = await call_structured(model, MESSAGES, prompts.Plan)
    assert inner.calls == 1, "a cache hit must not call the model"
    assert second_count.hits == 1
    assert second.value == first.value and second.ok
    assert second.usage.prompt_tokens == first.usage.prompt_tokens > 0
    assert second.usage.completion_tokens == first.usage.completion_tokens
    other = await call_structured(model, [*MESSAGES, HumanMessage("more")], prompts.Plan)
    assert other.ok and inner.calls == 2  # another prompt is another key


async def test_text_calls_are_cached_and_survive_a_reopen(tmp_path):
    inner, model = wrapped(tmp_path)
    first = await call_text(model, MESSAGES)
    model.store.close()
    reopened = CachedChatModel(
        inner=inner, store=LLMCache(tmp_path / "cache.sqlite"), identity=model.identity
    )
    second = await call_text(reopened, MESSAGES)
    assert second.text == first.text and inner.calls == 1
    assert len(reopened.store) == 1


async def test_unusable_answers_are_replayed_too(tmp_path):
    inner, model = wrapped(tmp_path, ScriptedChatModel(faults=("malformed",)))
    first = await call_structured(model, MESSAGES, prompts.Plan, retries=1)
    assert not first.ok and inner.calls == 2  # the answer, then the retry with feedback
    second = await call_structured(model, MESSAGES, prompts.Plan, retries=1)
    assert not second.ok and second.attempts == first.attempts and inner.calls == 2


def test_sync_structured_path_uses_the_cache(tmp_path):
    inner, model = wrapped(tmp_path)
    runnable = model.with_structured_output(prompts.Plan)
    a = runnable.invoke(MESSAGES)
    b = runnable.invoke(MESSAGES)
    assert a == b and inner.calls == 1


def test_identity_ignores_the_seed_only_at_temperature_zero():
    model = ScriptedChatModel()
    assert model_identity("x", model, 0.0, 1) == model_identity("x", model, 0.0, 2)
    assert model_identity("x", model, 0.5, 1) != model_identity("x", model, 0.5, 2)
    assert json.loads(model_identity("x", model, 0.5, 3))["seed"] == 3
