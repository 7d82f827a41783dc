"""The `openai:` backend against a scripted local HTTP server: shapes, retries, errors.

Each test serves chat-completion replies (or errors) in a fixed order and checks what the client
sent and how the retry policy of `nodes.llm.calls` treated each answer.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from json_server import serve_json
from test_llms import MESSAGES, Pick, run

from nodes.llm.calls import (
    LLMError,
    call_structured,
    call_structured_sync,
    call_text,
)
from nodes.llm.factory import make_chat_model
from nodes.llm.scripted import default_responder

Reply = tuple[int, dict[str, Any], dict[str, str]]


def _completion(body: dict[str, Any]) -> Reply:
    """Answer like a chat-completions server: JSON content, or a tool call when tools are sent."""
    answer = {**default_responder([], Pick), "item_id": "i7"}
    message: dict[str, Any] = {"role": "assistant", "content": json.dumps(answer)}
    if body.get("tools"):
        name = body["tools"][0]["function"]["name"]
        call = {"id": "c1", "type": "function", "function": {"name": name}}
        call["function"]["arguments"] = json.dumps(answer)
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"]}
    return 200, {**payload, "choices": [choice], "usage": usage}, {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return status, {"error": {"message": message, "type": "invalid_request_error"}}, headers or {}


class FakeServer:
    """Serve scripted chat-completion replies on 127.0.0.1 and record the requests."""

    def __init__(self, replies: list[Callable[[dict[str, Any]], Reply]]) -> None:
        self.replies, self.requests = list(replies), []
        self.httpd, self.url = serve_json(self._answer, self.requests)

    def _answer(self, body: dict[str, Any]) -> Reply:
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return reply(body)

    def model(self, **kwargs: Any) -> Any:
        return make_chat_model("openai:test-model", base_url=self.url, api_key="k", **kwargs)


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(*replies: Callable[[dict[str, Any]], Reply]) -> FakeServer:
        servers.append(FakeServer(list(replies)))
        return servers[-1]

    yield start
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_openai_json_schema_structured_output(serve: Callable[..., FakeServer]) -> None:
    server = serve(_completion)
    result = run(call_structured(server.model(), MESSAGES, Pick))
    assert result.ok and result.value.item_id == "i7" and result.attempts == 1
    assert server.requests[0]["response_format"]["type"] == "json_schema"
    assert server.requests[0]["model"] == "test-model"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, 7)


def test_openai_malformed_answer_is_retried_then_fallback(serve: Callable[..., FakeServer]) -> None:
    def prose(body: dict[str, Any]) -> Reply:
        status, payload, headers = _completion(body)
        payload["choices"][0]["message"]["content"] = "I think you should play Portal."
        return status, payload, headers

    server = serve(prose)
    result = run(call_structured(server.model(), MESSAGES, Pick, retries=1))
    assert (result.ok, result.attempts, len(server.requests)) == (False, 2, 2)
    assert result.usage.calls == 2 and "further information" not in result.error
    assert "could not be used" in server.requests[1]["messages"][-1]["content"]


def test_openai_falls_back_to_function_calling_once_per_server(
    serve: Callable[..., FakeServer],
) -> None:
    def no_json_schema(body: dict[str, Any]) -> Reply:
        if "response_format" in body:
            return _error(400, "response_format json_schema is not supported")
        return _completion(body)

    server = serve(no_json_schema)
    first = run(call_structured(server.model(), MESSAGES, Pick))
    # json_schema, then json_object (both refused, naming response_format), then tools.
    assert first.ok and first.value.item_id == "i7" and len(server.requests) == 3
    assert [r.get("response_format", {}).get("type") for r in server.requests[:2]] == [
        "json_schema",
        "json_object",
    ]
    assert server.requests[2]["tool_choice"]["function"]["name"] == "Pick"
    assert first.attempts == 1  # a refused shape is not a failed attempt
    second = call_structured_sync(server.model(temperature=0.1), MESSAGES, Pick)
    assert second.ok and len(server.requests) == 4 and "tools" in server.requests[3]


def test_openai_rejected_request_is_a_fallback_not_a_retry(
    serve: Callable[..., FakeServer],
) -> None:
    server = serve(lambda body: _error(400, "maximum context length exceeded"))
    result = run(call_structured(server.model(), MESSAGES, Pick, base_delay=0))
    assert (result.ok, result.attempts) == (False, 1)
    assert "context length" in result.error


def test_openai_rate_limit_honours_retry_after(serve: Callable[..., FakeServer]) -> None:
    server = serve(lambda body: _error(429, "slow down", {"Retry-After": "0.3"}), _completion)
    start = time.perf_counter()
    result = run(call_structured(server.model(), MESSAGES, Pick, base_delay=0))
    assert result.ok and result.attempts == 2 and len(server.requests) == 2
    assert time.perf_counter() - start >= 0.3


def test_openai_server_errors_are_retried(serve: Callable[..., FakeServer]) -> None:
    server = serve(lambda body: _error(503, "overloaded"), _completion)
    result = call_structured_sync(server.model(), MESSAGES, Pick, base_delay=0)
    assert result.ok and result.attempts == 2


def test_openai_auth_failure_raises_llm_error(serve: Callable[..., FakeServer]) -> None:
    server = serve(lambda body: _error(401, "invalid api key"))
    with pytest.raises(LLMError, match=re.escape(server.url) + ".*invalid api key.*OPENAI_API_KEY"):
        run(call_structured(server.model(), MESSAGES, Pick))
    assert len(server.requests) == 1


def test_openai_unreachable_endpoint_raises_llm_error_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    model = make_chat_model("openai:test-model", base_url=url, api_key="k")
    with pytest.raises(LLMError, match="cannot reach " + re.escape(url)):
        run(call_text(model, MESSAGES, transient_retries=1, base_delay=0))
