"""Test the LLM layer offline: factory, scripted double, retry policy, OpenAI path, local model."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from enum import StrEnum
from typing import Any, Literal

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from nodes.llm import local as local_llm
from nodes.llm.calls import (
    LLMError,
    Usage,
    call_structured,
    call_structured_sync,
    call_text,
)
from nodes.llm.factory import make_chat_model
from nodes.llm.local import ENV_MODEL, find_local_model
from nodes.llm.openai_chat import FallbackChatOpenAI
from nodes.llm.scripted import (
    ScriptedChatModel,
    ScriptedFatalError,
    default_responder,
    example_from_schema,
    register_scripted_responder,
)


class Mood(StrEnum):
    CALM = "calm"
    BORED = "bored"


class Pick(BaseModel):
    """A schema shaped like an agent answer: enum ids, bounded ints, text and a list."""

    item_id: Literal["i42", "i7", "i9"]
    mood: Mood
    value: int = Field(ge=-5, le=5)
    rank: int = Field(ge=3, le=9)
    score: float = Field(gt=1.5)
    thought: str = Field(min_length=20)
    titles: list[str] = Field(min_length=2)
    note: str | None = None


class Choice(BaseModel):
    item_id: Literal["i101", "i202", "i303"] = Field(description="the chosen catalogue id")


MESSAGES: list[BaseMessage] = [SystemMessage("You recommend games."), HumanMessage("Next item?")]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- factory -------------------------------------------------------------------------------------


def test_factory_builds_and_caches_each_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = make_chat_model("scripted")
    assert isinstance(scripted, ScriptedChatModel)
    assert make_chat_model("scripted") is scripted
    assert make_chat_model("scripted", temperature=0.0) is not scripted
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    remote = make_chat_model("openai:test-model", base_url="http://127.0.0.1:9/v1", seed=3)
    assert isinstance(remote, FallbackChatOpenAI)
    assert (remote.model_name, remote.max_retries, remote.temperature, remote.seed) == (
        "test-model",
        0,
        0.5,
        3,
    )


@pytest.mark.parametrize("spec", ["gpt-4", "openai:", "openai", "llama:x", ""])
def test_factory_rejects_unknown_specs_listing_valid_forms(spec: str) -> None:
    with pytest.raises(ValueError, match=r"valid forms:.*openai:MODEL.*scripted:NAME"):
        make_chat_model(spec)


def test_factory_reports_configuration_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="no scripted responder named 'nobody'"):
        make_chat_model("scripted:nobody")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        make_chat_model("openai:some-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_chat_model("local:/nonexistent/model.gguf")


def test_local_model_file_is_found_without_importing_its_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv(ENV_MODEL, raising=False)
    found = find_local_model()
    assert found.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and found.stat().st_size > 1_000_000
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    monkeypatch.setenv(ENV_MODEL, str(other))
    assert find_local_model() == other
    monkeypatch.setenv(ENV_MODEL, str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match=ENV_MODEL):
        find_local_model()


# --- scripted double ----------------------------------------------------------------------------


def test_default_responder_builds_the_simplest_valid_instance() -> None:
    pick = Pick.model_validate(default_responder(MESSAGES, Pick))
    assert (pick.item_id, pick.mood, pick.value, pick.rank) == ("i42", Mood.CALM, 0, 3)
    assert pick.score > 1.5 and len(pick.thought) >= 20 and len(pick.titles) == 2
    assert default_responder(MESSAGES, None) == "scripted answer"


@pytest.mark.parametrize(
    ("bounds", "kind", "expected"),
    [
        ({"minimum": -5, "maximum": 5}, "integer", 0),
        ({"minimum": 2.5}, "integer", 3),
        ({"exclusiveMaximum": 0}, "integer", -1),
        ({"maximum": -2.0}, "number", -2.0),
        ({"exclusiveMinimum": 0}, "integer", 1),
    ],
)
def test_example_numbers_prefer_zero_else_nearest_bound(
    bounds: dict[str, float], kind: str, expected: float
) -> None:
    assert example_from_schema({"type": kind, **bounds}) == expected


def test_scripted_structured_output_returns_validated_instance_with_usage() -> None:
    raw = make_chat_model("scripted").with_structured_output(Pick, include_raw=True)
    out = raw.invoke(MESSAGES)
    assert isinstance(out["parsed"], Pick) and out["parsing_error"] is None
    usage = Usage.from_message(out["raw"])
    # chars/4 rule: the two messages are 20 and 10 characters long.
    assert (usage.prompt_tokens, usage.completion_tokens > 10) == (5 + 3, True)


def test_registered_responder_is_used_and_can_be_replaced() -> None:
    def choose_last(messages: list[BaseMessage], schema: type[BaseModel] | None) -> dict | str:
        assert schema is Pick
        base = default_responder(messages, schema)
        return {**base, "item_id": "i9", "thought": f"because {messages[-1].text} matters"}

    register_scripted_responder("test-last", choose_last)
    model = make_chat_model("scripted:test-last")
    result = call_structured_sync(model, MESSAGES, Pick)
    assert result.ok and result.value.item_id == "i9" and "Next item?" in result.value.thought
    register_scripted_responder("test-last", lambda m, s: {**default_responder(m, s), "value": 5})
    assert call_structured_sync(model, MESSAGES, Pick).value.value == 5
    with pytest.raises(ValueError, match="without ':'"):
        register_scripted_responder("a:b", choose_last)


def test_unknown_fault_is_rejected() -> None:
    with pytest.raises(ValueError, match="faults must be"):
        ScriptedChatModel(faults=["ok", "flaky"])


# --- retry policy -------------------------------------------------------------------------------


def test_bad_output_is_retried_then_reported_as_fallback() -> None:
    model = ScriptedChatModel(faults=["malformed", "schema"])
    result = run(call_structured(model, MESSAGES, Pick, retries=2))
    assert (result.ok, result.value, result.attempts, model.calls) == (False, None, 3, 3)
    assert result.error and "Pick" in result.error and len(result.error) <= 300
    # Retries carry a feedback message, so they cost more prompt tokens than the first try.
    assert result.usage.calls == 3 and result.usage.prompt_tokens > 3 * 8
    assert "troubleshooting" not in result.error


def test_bad_output_then_good_answer_succeeds_with_feedback() -> None:
    seen: list[list[BaseMessage]] = []

    def record(messages: list[BaseMessage], schema: type[BaseModel] | None) -> dict | str:
        seen.append(messages)
        return default_responder(messages, schema)

    model = ScriptedChatModel(responder=record, faults=["schema", "ok"])
    result = run(call_structured(model, MESSAGES, Pick, retries=1))
    assert result.ok and isinstance(result.value, Pick) and result.attempts == 2
    assert result.error is None and result.usage.calls == 2
    # The retry tells the model what was wrong, so a seeded model does not repeat itself.
    assert len(seen) == 1 and seen[0][:2] == MESSAGES and len(seen[0]) == 3
    assert "could not be used" in seen[0][-1].text and "Pick invalid" in seen[0][-1].text


def test_transient_errors_back_off_and_succeed_later() -> None:
    model = ScriptedChatModel(faults=["error", "error", "ok"])
    result = run(call_structured(model, MESSAGES, Pick, transient_retries=2, base_delay=0))
    assert result.ok and result.attempts == 3
    assert result.usage.calls == 1  # failed requests return no tokens


def test_transient_errors_exhausted_give_fallback_not_exception() -> None:
    model = ScriptedChatModel(faults=["error"])
    result = run(call_structured(model, MESSAGES, Pick, transient_retries=2, base_delay=0.01))
    assert (result.ok, result.attempts) == (False, 3)
    assert "transient" in result.error


def test_backoff_grows_exponentially() -> None:
    model = ScriptedChatModel(faults=["error", "error", "ok"])
    start = time.perf_counter()
    result = call_structured_sync(model, MESSAGES, Pick, base_delay=0.05)
    # Waits are base * (1, 2) * (1 + jitter in [0, 1)): at least 0.15 s in total.
    assert result.ok and time.perf_counter() - start >= 0.15


def test_non_transient_errors_propagate() -> None:
    with pytest.raises(ScriptedFatalError):
        run(call_structured(ScriptedChatModel(faults=["fatal"]), MESSAGES, Pick))
    with pytest.raises(ValueError, match=">= 0"):
        call_structured_sync(make_chat_model("scripted"), MESSAGES, Pick, retries=-1)


def test_text_calls_share_the_policy() -> None:
    model = ScriptedChatModel(faults=["malformed", "error", "ok"])
    result = run(call_text(model, MESSAGES, base_delay=0))
    assert (result.ok, result.text, result.attempts) == (True, "scripted answer", 3)
    failed = run(call_text(ScriptedChatModel(faults=["malformed"]), MESSAGES, retries=1))
    assert (failed.ok, failed.text, failed.attempts) == (False, None, 2)
    assert "empty" in failed.error


def test_concurrent_calls_are_all_answered() -> None:
    async def many() -> list[Any]:
        model = ScriptedChatModel(faults=["ok", "error"])
        calls = [call_structured(model, MESSAGES, Pick, base_delay=0) for _ in range(8)]
        return await asyncio.gather(*calls)

    results = run(many())
    assert all(r.ok for r in results) and sum(r.attempts for r in results) >= 8


def test_usage_adds_up_and_reads_both_metadata_styles() -> None:
    a, b = Usage(1, 10, 5, 0.5), Usage(2, 3, 4, 0.25)
    total = a + b
    assert total == Usage(3, 13, 9, 0.75) and a == Usage(1, 10, 5, 0.5)
    assert a.add(b) is a and a.to_dict() == total.to_dict() and a.total_tokens == 22
    legacy = AIMessage("x", response_metadata={"token_usage": {"prompt_tokens": 7}})
    assert (Usage.from_message(legacy).prompt_tokens, Usage.from_message(None).calls) == (7, 1)
    assert json.loads(json.dumps(total.to_dict()))["completion_tokens"] == 9
    # `asks` counts answers asked for, not attempts: the base of the fallback rate.
    retried = call_structured_sync(ScriptedChatModel(faults=["schema", "ok"]), MESSAGES, Pick)
    assert (retried.usage.calls, retried.usage.asks, retried.usage.to_dict()["asks"]) == (2, 1, 1)
    assert (Usage(asks=2) + Usage(asks=3)).asks == 5


class FakeLlama:
    """Stand in for llama_cpp.Llama: record requests, answer like create_chat_completion."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def create_chat_completion(self, messages: list[dict[str, str]], **params: Any) -> dict:
        self.requests.append({"messages": messages, **params})
        if "overflow" in messages[-1]["content"]:
            raise ValueError("Requested tokens (5000) exceed context window of 4096")
        schema = params["logits_processor"][0].schema
        content = json.dumps({"item_id": schema["properties"]["item_id"]["enum"][1]})
        usage = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
        choice = {"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        return {"choices": [choice], "usage": usage}


class FakeGrammar:
    """Stand in for LazyGrammar: remember the schema and whether the native sampler was freed."""

    def __init__(self, llama: Any, schema: dict, temperature: float, seed: int | None) -> None:
        self.schema, self.temperature, self.seed, self.closed = schema, temperature, seed, False

    def close(self) -> None:
        self.closed = True


def test_local_wrapper_constrains_output_and_reports_usage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    weights = tmp_path / "fake.gguf"
    weights.write_bytes(b"GGUF")
    fake = FakeLlama()
    monkeypatch.setattr(local_llm, "LazyGrammar", FakeGrammar)
    monkeypatch.setitem(local_llm._MODELS, (str(weights.resolve()), 4096), (fake, threading.Lock()))
    model = make_chat_model(f"local:{weights}", temperature=0.2, seed=11)
    result = call_structured_sync(model, MESSAGES, Choice)
    assert result.ok and result.value.item_id == "i202"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (30, 9)
    sent = fake.requests[0]
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    grammar = sent["logits_processor"][0]  # constrained token by token, not by llama.cpp's mask
    assert "response_format" not in sent and grammar.closed
    assert grammar.schema["properties"]["item_id"]["enum"][0] == "i101"
    assert (grammar.temperature, grammar.seed) == (0.2, 11)
    assert (sent["temperature"], sent["seed"], sent["max_tokens"]) == (0.2, 11, 256)
    too_long = run(call_structured(model, [HumanMessage("overflow")], Choice))
    assert (too_long.ok, too_long.attempts) == (False, 1) and "too long" in too_long.error


# --- the embedded local model -------------------------------------------------------------------


@pytest.mark.slow
def test_local_model_picks_a_valid_enum_member(local_model_path) -> None:
    model = make_chat_model("local", temperature=0.5, seed=0)
    prompt = [
        SystemMessage("Pick one item id for the user. Answer in JSON."),
        HumanMessage(
            "Candidates: i101 (Portal), i202 (Doom), i303 (Tetris). The user loves puzzles."
        ),
    ]
    call_structured_sync(model, prompt, Choice)  # warm-up: load the weights once
    start = time.perf_counter()
    result = call_structured_sync(model, prompt, Choice)
    seconds = time.perf_counter() - start
    assert result.ok and result.value.item_id in {"i101", "i202", "i303"}
    assert result.usage.prompt_tokens > 20 and result.usage.completion_tokens > 3
    rate = result.usage.completion_tokens / result.usage.seconds

    async def concurrently() -> list[Any]:
        # Another temperature shares the loaded weights; the lock serializes the three calls.
        cold = make_chat_model("local", temperature=0.0, seed=0)
        return await asyncio.gather(*(call_structured(cold, prompt, Choice) for _ in range(3)))

    loaded = len(local_llm._MODELS)
    assert all(r.ok for r in run(concurrently())) and len(local_llm._MODELS) == loaded
    print(f"\nlocal structured call: {seconds:.2f} s, {result.usage.to_dict()}, {rate:.1f} tok/s")
