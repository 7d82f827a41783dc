"""Structured-output negotiation and fail-fast against OpenAI-compatible servers (the fake one).

Each server here refuses some request shapes the way real servers do (llama-cpp-python answers
json_schema with HTTP 500 naming `response_format.type`); the client must land on the first mode
the server takes, remember it, and never count a refused shape as a failed attempt. An endpoint
whose first requests all fail the same way must stop the run with one line; one that has already
answered keeps the retry policy.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage
from pydantic import BaseModel, Field

from nodes.llm import health as llm_health
from nodes.llm.calls import (
    LLMError,
    call_structured,
    call_structured_sync,
    call_text,
)
from nodes.llm.factory import make_chat_model
from nodes.llm.fake_server import FakeOpenAI
from nodes.llm.health import FAIL_FAST_AFTER
from nodes.llm.openai_chat import negotiated
from nodes.llm.structured import extract_json, parse_json_text, parse_tool_message
from nodes.views import messages

LLAMA_CPP_PYTHON_500 = (
    "1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
)
KEY = "sk-test-0123456789abcdef"


class Pick(BaseModel):
    """An answer with a bounded title and an enum, like the actor's."""

    title: str = Field(max_length=80)
    mood: Literal["calm", "bored"]


MSGS = messages("You recommend games. Answer with JSON.", "Next game?")


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BILLP_LLM_BASE_DELAY", "0")
    yield


@pytest.fixture
def fake() -> Iterator[Any]:
    servers: list[FakeOpenAI] = []

    def start(**options: Any) -> FakeOpenAI:
        servers.append(FakeOpenAI(**options).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def model_of(server: FakeOpenAI, name: str = "m", **kw: Any) -> Any:
    return make_chat_model(f"openai:{name}", base_url=server.url, api_key=KEY, **kw)


def mode_of(server: FakeOpenAI, name: str = "m") -> dict[str, Any]:
    return negotiated()[f"{server.url} {name}"]


def shapes(server: FakeOpenAI) -> list[str]:
    out = []
    for body in server.requests:
        if body.get("tools"):
            out.append("tools")
        else:
            out.append((body.get("response_format") or {}).get("type", "text"))
    return out


def system_text(body: dict[str, Any]) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "system")


# --- negotiation --------------------------------------------------------------------------------


def test_server_that_takes_json_schema_keeps_it_and_prompt_is_unchanged(fake) -> None:
    server = fake()
    result = call_structured_sync(model_of(server), MSGS, Pick)
    assert result.ok and shapes(server) == ["json_schema"]
    assert "JSON Schema" not in system_text(server.requests[0])
    assert mode_of(server) == {"mode": "json_schema", "settled": True, "refused": {}}


def test_llama_cpp_python_500_moves_to_json_object_with_the_schema(fake) -> None:
    server = fake(refuse={"json_schema": (500, LLAMA_CPP_PYTHON_500)})
    model = model_of(server)
    first = call_structured_sync(model, MSGS, Pick)
    second = call_structured_sync(model, MSGS, Pick)
    assert first.ok and second.ok and first.attempts == second.attempts == 1
    # One probe of json_schema, then json_object for good: the refusal is not retried.
    assert shapes(server) == ["json_schema", "json_object", "json_object"]
    sent = server.requests[1]
    assert sent["response_format"]["schema"] == Pick.model_json_schema()
    assert "JSON Schema" in system_text(sent) and '"mood"' in system_text(sent)
    state = mode_of(server)
    assert state["mode"] == "json_object" and state["settled"]
    assert "response_format" in state["refused"]["json_schema"]
    assert server.stats()["refused"] == 1


def test_refused_response_format_moves_on_to_tools_then_text(fake) -> None:
    refusal = (400, "Unsupported parameter: 'response_format' is not supported with this model")
    server = fake(refuse={"json_schema": refusal, "json_object": refusal})
    assert call_structured_sync(model_of(server), MSGS, Pick).ok
    assert shapes(server) == ["json_schema", "json_object", "tools"]
    assert server.requests[-1]["tool_choice"]["function"]["name"] == "Pick"

    tools_refused = (422, "tool_choice: function calling is not available for this model")
    other = fake(refuse={"json_schema": refusal, "json_object": refusal, "tools": tools_refused})
    result = call_structured_sync(model_of(other), MSGS, Pick)
    # Plain text: schema in the prompt, the JSON read out of prose and a code fence.
    assert result.ok and shapes(other) == ["json_schema", "json_object", "tools", "text"]
    assert "JSON Schema" in system_text(other.requests[-1])
    assert mode_of(other)["mode"] == "text"


def test_concurrent_first_calls_share_one_negotiation(fake) -> None:
    server = fake(refuse={"json_schema": (500, LLAMA_CPP_PYTHON_500)}, latency=0.02)
    model = model_of(server)

    async def many() -> list[Any]:
        return await asyncio.gather(*(call_structured(model, MSGS, Pick) for _ in range(6)))

    results = asyncio.run(many())
    assert all(r.ok and r.attempts == 1 for r in results)
    seen = shapes(server)
    assert seen.count("json_object") == 6 and set(seen) == {"json_schema", "json_object"}
    assert mode_of(server)["mode"] == "json_object"


def test_unexplained_400_is_probed_but_a_request_fault_keeps_the_mode(fake) -> None:
    too_long = (400, "This model's maximum context length is 2048 tokens")
    server = fake(refuse={s: too_long for s in ("json_schema", "json_object", "tools", "text")})
    result = call_structured_sync(model_of(server), MSGS, Pick)
    # The next mode repeated the same rejection: the request is at fault, not its shape.
    assert (result.ok, result.attempts) == (False, 1) and "context length" in result.error
    assert shapes(server) == ["json_schema", "json_object"]
    assert mode_of(server) == {"mode": "json_schema", "settled": False, "refused": {}}


def test_unexplained_400_that_the_next_mode_answers_moves_on(fake) -> None:
    server = fake(refuse={"json_schema": (400, "Invalid request")})
    model = model_of(server)
    assert call_structured_sync(model, MSGS, Pick).ok
    assert call_structured_sync(model, MSGS, Pick).ok
    assert shapes(server) == ["json_schema", "json_object", "json_object"]
    assert mode_of(server)["mode"] == "json_object"


def test_modes_are_per_model_on_one_endpoint(fake) -> None:
    server = fake(refuse={"json_schema": (500, LLAMA_CPP_PYTHON_500)})
    call_structured_sync(model_of(server, "a"), MSGS, Pick)
    assert mode_of(server, "a")["mode"] == "json_object"
    assert f"{server.url} b" not in negotiated()


def test_bad_answers_in_a_weaker_mode_get_the_corrective_retry(fake) -> None:
    server = fake(refuse={"json_schema": (500, LLAMA_CPP_PYTHON_500)}, force={"mood": "angry"})
    result = call_structured_sync(model_of(server), MSGS, Pick, retries=1)
    assert (result.ok, result.attempts) == (False, 2) and "Pick invalid" in result.error
    assert "could not be used" in server.requests[-1]["messages"][-1]["content"]
    assert mode_of(server)["mode"] == "json_object"  # a bad answer is not a refused shape


# --- lenient readers ----------------------------------------------------------------------------


def test_json_is_read_from_fences_and_prose_but_not_from_a_cut_answer() -> None:
    fenced = 'Here:\n```json\n{"title": "Portal", "mood": "calm"}\n```'
    assert extract_json(fenced) == {"title": "Portal", "mood": "calm"}
    assert extract_json('I pick {"a": {"b": 1}} and {"c": 2}') == {"a": {"b": 1}}
    assert parse_json_text(AIMessage('ok {"title": "Doom", "mood": "bored"}'), Pick).title == "Doom"
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json('{"title": "Port')
    with pytest.raises(Exception, match="Pick invalid"):
        parse_json_text(AIMessage('{"title": "Doom", "mood": "sad"}'), Pick)


def test_tool_answers_are_read_from_the_call_or_else_the_text() -> None:
    call = AIMessage(
        "", tool_calls=[{"name": "Pick", "args": {"title": "Tetris", "mood": "calm"}, "id": "1"}]
    )
    assert parse_tool_message(call, Pick).title == "Tetris"
    text = AIMessage('{"title": "Tetris", "mood": "bored"}')  # a server ignoring tool_choice
    assert parse_tool_message(text, Pick).mood == "bored"
    wrong = AIMessage("", tool_calls=[{"name": "Pick", "args": {"title": 3}, "id": "1"}])
    with pytest.raises(Exception, match="Pick invalid"):
        parse_tool_message(wrong, Pick)


# --- fail fast ----------------------------------------------------------------------------------


def test_endpoint_failing_every_request_stops_after_three(fake) -> None:
    server = fake(fault_rate=1.0, faults=["500"])
    with pytest.raises(LLMError) as caught:
        call_structured_sync(model_of(server, "smol"), MSGS, Pick, transient_retries=10)
    line = str(caught.value)
    assert len(server.requests) == FAIL_FAST_AFTER  # not the 11 the retry policy allows
    assert "\n" not in line and KEY not in line and KEY[:12] not in line
    for part in (server.url, "model smol", "mode json_schema", "HTTP 500", "internal server"):
        assert part in line, part


def test_concurrent_first_calls_to_a_dead_endpoint_all_stop(fake) -> None:
    server = fake(fault_rate=1.0, faults=["500"], latency=0.01)
    model = model_of(server)

    async def many() -> list[Any]:
        calls = [call_structured(model, MSGS, Pick, transient_retries=10) for _ in range(4)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(many())
    assert all(isinstance(o, LLMError) for o in outcomes)
    assert len(server.requests) <= 4 + FAIL_FAST_AFTER


def test_refused_connections_stop_before_the_retries_run_out() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    model = make_chat_model("openai:m", base_url=url, api_key=KEY)
    with pytest.raises(LLMError, match=re.escape(url) + r".*mode text.*cannot connect"):
        asyncio.run(call_text(model, MSGS, transient_retries=50))


def test_scattered_faults_after_an_answer_keep_the_retry_policy(fake) -> None:
    server = fake()
    model = model_of(server)
    assert call_structured_sync(model, MSGS, Pick).ok
    server.fault_rate, server.faults = 1.0, ("500",)
    result = call_structured_sync(model, MSGS, Pick, transient_retries=4)
    assert (result.ok, result.attempts) == (False, 5)  # retried, then the node's fallback
    assert len(server.requests) == 1 + 5


def status_error(status: int, message: str) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = httpx.Response(status, request=request, json={"error": {"message": message}})
    return openai.APIStatusError(message, response=response, body={"message": message})


def test_only_identical_failures_in_a_row_are_a_broken_endpoint() -> None:
    model = make_chat_model("openai:m", base_url="http://127.0.0.1:9/v1", api_key=KEY)
    mixed = [status_error(500, "overloaded"), status_error(429, "slow down")] * 2
    assert all(llm_health.note_failure(model, e) is None for e in mixed)
    # Digits differ, the failure does not: the third in a row stops the run.
    same = [status_error(400, f"prompt of {n} tokens exceeds the context") for n in (5000, 6001)]
    assert llm_health.note_failure(model, same[0]) is None
    assert llm_health.note_failure(model, same[1]) is None
    line = llm_health.note_failure(
        model, status_error(400, "prompt of 7 tokens exceeds the context")
    )
    assert line is not None and "HTTP 400" in line and "mode text" in line
    assert (
        llm_health.note_failure(
            model, openai.APITimeoutError(request=httpx.Request("GET", "http://x"))
        )
        is None
    )


def test_an_answered_endpoint_is_never_failed_fast() -> None:
    model = make_chat_model("openai:m", base_url="http://127.0.0.1:9/v1", api_key=KEY)
    llm_health.note_answer(model)
    assert all(llm_health.note_failure(model, status_error(500, "x")) is None for _ in range(5))
    assert llm_health.note_failure(make_chat_model("scripted"), status_error(500, "x")) is None
