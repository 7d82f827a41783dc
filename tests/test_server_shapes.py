"""The request shapes of real OpenAI-compatible servers, replayed from tests/fixtures/servers/.

Each fixture holds a server's documented (or, for llama-cpp-python, recorded) structured-output
request, its response envelope (vLLM's `tool_calls: []` and `stop_reason`, Ollama's
`fp_ollama`, llama-server's `timings`...) and the refusals it answers some shapes with. A local
HTTP server replays them: it refuses what the fixture refuses and answers the rest in the
fixture's envelope, with content valid for the schema asked. The client must land on the mode
the fixture names, send the documented structured-output fields, and read the envelope's answer
and token counts.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from json_server import serve_json
from pydantic import BaseModel, Field

from nodes.llm.calls import call_structured_sync
from nodes.llm.factory import make_chat_model
from nodes.llm.fake_faults import SchemaInstance, request_schema
from nodes.llm.openai_chat import negotiated, pin_mode
from nodes.views import messages

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "servers").glob("*.json"))
MSGS = messages("You choose the next game. Answer only with JSON.", "Next?")


class Choice(BaseModel):
    """The actor's answer: a title and how sure it is."""

    title: str = Field(max_length=100)
    confidence: Literal[1, 2, 3]


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


class Replay:
    """Serve one fixture's behaviour on 127.0.0.1 and record the requests."""

    def __init__(self, fixture: dict[str, Any]) -> None:
        self.fixture, self.requests = fixture, []
        self.httpd, self.url = serve_json(lambda body: (*self.answer(body), {}), self.requests)

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        shape, schema, tool = request_schema(body)
        refusal = self.fixture["refusals"].get(shape)
        if refusal is not None:
            return refusal["status"], refusal["body"]
        value = SchemaInstance(random.Random(len(self.requests))).valid(schema or {})
        payload = copy.deepcopy(self.fixture["documented_response"])
        payload["model"] = body["model"]
        message = payload["choices"][0]["message"]
        message["content"] = json.dumps(value)
        if shape == "tools" and not self.fixture.get("ignores_tool_choice"):
            arguments = {"name": tool, "arguments": json.dumps(value)}
            message["tool_calls"] = [{"id": "call_0", "type": "function", "function": arguments}]
            message["content"] = None
            payload["choices"][0]["finish_reason"] = "tool_calls"
        return 200, payload

    def model(self) -> Any:
        return make_chat_model("openai:served", base_url=self.url, api_key="not-needed")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def replay() -> Iterator[Any]:
    servers: list[Replay] = []

    def start(path: Path) -> Replay:
        servers.append(Replay(load(path)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def paths(value: Any, prefix: str = "", stop: tuple[str, ...] = ("schema",)) -> set[str]:
    """Return the key paths of a request field, not descending into JSON Schemas."""
    if not isinstance(value, dict):
        return set()
    out = set()
    for key, inner in value.items():
        path = f"{prefix}{key}"
        out.add(path)
        if key not in stop:
            out |= paths(inner, path + ".")
    return out


def test_every_fixture_names_its_sources_and_mode() -> None:
    assert {p.stem for p in FIXTURES} >= {"vllm", "ollama", "llama_server", "llama_cpp_python"}
    for path in FIXTURES:
        fixture = load(path)
        assert fixture["transcribed_from"] and fixture["start"], path.name
        assert fixture["expected_mode"] in ("json_schema", "json_object", "tools", "text")
        assert fixture["documented_response"]["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_client_lands_on_the_servers_mode_and_reads_its_envelope(replay, path: Path) -> None:
    server = replay(path)
    fixture = server.fixture
    model = server.model()
    first = call_structured_sync(model, MSGS, Choice)
    second = call_structured_sync(model, MSGS, Choice)
    assert first.ok and second.ok and first.attempts == second.attempts == 1
    state = negotiated()[f"{server.url} served"]
    assert state["mode"] == fixture["expected_mode"] and state["settled"]
    usage = fixture["documented_response"]["usage"]
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    refused = list(fixture["refusals"])
    assert len(server.requests) == len(refused) + 2  # each refused shape tried once, ever
    for shape in refused:
        said = fixture["refusals"][shape]["body"]["error"]["message"]
        assert state["refused"][shape][:40] == " ".join(said.split())[:40]
    sent = server.requests[-1]
    documented = fixture["documented_request"].get("response_format")
    if documented is not None:  # we send at least the structured-output fields it documents
        assert paths(documented) <= paths(sent["response_format"]), fixture["server"]
        assert sent["response_format"]["type"] == documented["type"]


def test_ollama_ignoring_tool_choice_is_still_read_in_tools_mode(replay) -> None:
    server = replay(next(p for p in FIXTURES if p.stem == "ollama"))
    model = server.model()
    pin_mode(model, "tools")
    result = call_structured_sync(model, MSGS, Choice)
    assert result.ok and "tools" in server.requests[-1]
    assert server.requests[-1]["tool_choice"]["function"]["name"] == "Choice"


def test_llama_cpp_python_recorded_tool_call_is_read() -> None:
    from langchain_openai.chat_models.base import _convert_dict_to_message

    from nodes.llm.structured import parse_tool_message

    fixture = load(next(p for p in FIXTURES if p.stem == "llama_cpp_python"))
    raw = fixture["recorded_tool_response"]["choices"][0]["message"]

    class T(BaseModel):
        title: str

    assert parse_tool_message(_convert_dict_to_message(raw), T).title == "The Last of the Anciers"
