"""Read what a chat request asks for, and build the answers and faults the fake server serves.

Part of `fake_server.FakeOpenAI`, the fault-injecting OpenAI-compatible server that reliability
tests and benchmarks run against (real servers' request shapes are checked elsewhere, from
recorded fixtures). `request_schema` tells the request shape (tools, json_schema, json_object,
text with a schema stated in the prompt) and its JSON Schema; `SchemaInstance` answers with a
random valid instance (the schema walk of `schema_values`, shared with the scripted model), or
breaks it for a schema fault (missing fields, wrong types, out-of-range values, hallucinated
titles).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

from nodes.llm.schema_values import Simplest, instance, resolve, schema_kind

HTTP_FAULTS = ("429", "429_bare", "500", "timeout", "bad_body")
CONTENT_FAULTS = ("bad_json", "empty", "long")
SCHEMA_FAULTS = ("missing", "types", "range", "hallucinated")
FAULTS = HTTP_FAULTS + CONTENT_FAULTS + SCHEMA_FAULTS

HALLUCINATED = "The Chronicles of Nowhere: Imaginary Edition"
TITLE_FIELD = re.compile(r"title|name", re.IGNORECASE)
NOT_JSON = 'Sure! Here is what I would recommend: {"title": Portal 2 -- hope that helps'
LONG_CHARS = 200_000


class SchemaInstance(Simplest):
    """Build random values that a JSON schema accepts (or, on request, values it rejects).

    Every property is filled, enum members and anyOf branches are drawn, arrays hold 1-3 items
    (within minItems / maxItems), numbers lie within their bounds (-5..5 where unbounded), and
    title fields take catalogue titles when `titles` are given.
    """

    def __init__(self, rng: random.Random, titles: Sequence[str] = ()) -> None:
        super().__init__()
        self.rng = rng
        self.titles = list(titles)

    def valid(self, schema: dict[str, Any], root: dict[str, Any] | None = None, name: str = ""):
        """Return a random value `schema` accepts; `name` is the property it is for."""
        return instance(schema, self, root, name)

    def broken(self, fault: str, schema: dict[str, Any]) -> Any:
        """Return a JSON value that violates `schema` the way `fault` says."""
        root = schema
        value = self.valid(schema)
        top = resolve(schema, root)
        props = top.get("properties", {})
        if not isinstance(value, dict) or not props:
            return ["not", "an", "object"]
        if fault == "missing":
            required = top.get("required") or list(props)
            return {k: v for k, v in value.items() if k not in required}
        if fault == "types":
            return {k: _wrong_type(resolve(props[k], root)) for k in value}
        if fault == "range":
            return {k: _out_of_range(resolve(props[k], root), v) for k, v in value.items()}
        if fault == "hallucinated":
            return {k: HALLUCINATED if TITLE_FIELD.search(k) else v for k, v in value.items()}
        raise ValueError(f"not a schema fault: {fault!r}")

    # ---- the choices (`schema_values.Simplest` picks the simplest value instead)

    def option(self, options: list[Any]) -> Any:
        return self.rng.choice(options)

    def keys(self, schema: dict[str, Any]) -> list[str]:
        return list(schema.get("properties", {}))

    def count(self, schema: dict[str, Any]) -> int:
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        return self.rng.randint(low, max(low, high))

    def number(self, low: Any, high: Any, integer: bool) -> int | float:
        low = -5 if low is None else low
        high = 5 if high is None else high
        if integer:
            return self.rng.randint(low, high)
        return round(self.rng.uniform(low, high), 4)

    def text(self, name: str) -> str:
        if self.titles and TITLE_FIELD.search(name):
            return self.rng.choice(self.titles)
        return f"fake answer {self.rng.randrange(10_000)}: try a different genre next"

    def boolean(self) -> bool:
        return self.rng.random() < 0.5


def applicable(faults: Sequence[str], schema: dict[str, Any] | None) -> list[str]:
    """Return the faults among `faults` that a request with this schema (or none) can get."""
    usable = [f for f in faults if f in HTTP_FAULTS or f in CONTENT_FAULTS]
    if schema is not None and schema_kind(schema) == "object":
        usable += [f for f in faults if f in SCHEMA_FAULTS and f != "hallucinated"]
        if "hallucinated" in faults and any(
            TITLE_FIELD.search(k) for k in schema.get("properties", {})
        ):
            usable.append("hallucinated")
    return usable


def _wrong_type(schema: dict[str, Any]) -> Any:
    kind = schema_kind(schema)
    if kind == "string":
        return {"unexpected": [1, 2]}
    if kind in ("integer", "number") or schema.get("enum"):
        return "five"
    return 12345


def _out_of_range(schema: dict[str, Any], value: Any) -> Any:
    if schema.get("enum"):
        sample = schema["enum"][0]
        return 10**9 if isinstance(sample, int | float) else "not-a-member"
    kind = schema_kind(schema)
    if kind in ("integer", "number"):
        return 10**9
    if kind == "string":
        return "x" * (int(schema.get("maxLength", 10_000)) + 1)
    return value


def request_schema(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None, str | None]:
    """Return (shape, JSON schema or None, tool name or None) of a chat-completion request.

    Shapes: `tools` (function calling), `json_schema`, `json_object` and `text`.
    """
    if body.get("tools"):
        tools = [t["function"] for t in body["tools"] if t.get("type") == "function"]
        chosen = body.get("tool_choice")
        if isinstance(chosen, dict) and chosen.get("function"):
            tools = [t for t in tools if t["name"] == chosen["function"]["name"]] or tools
        return "tools", tools[0].get("parameters") or {"type": "object"}, tools[0]["name"]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return "json_schema", fmt["json_schema"].get("schema") or {"type": "object"}, None
    if fmt.get("type") == "json_object":
        return "json_object", fmt.get("schema"), None  # llama.cpp servers accept a schema here
    return "text", _prompt_schema(body), None


_PROMPT_SCHEMA = re.compile(r"JSON Schema:\s*(\{)")


def _prompt_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """Return a JSON Schema stated in a system message (`structured.schema_instruction`)."""
    for message in body.get("messages", []):
        found = _PROMPT_SCHEMA.search(str(message.get("content") or ""))
        if message.get("role") == "system" and found:
            text = str(message["content"])
            return json.JSONDecoder().raw_decode(text, found.start(1))[0]
    return None


def pad_strings(value: Any, chars: int) -> Any:
    """Return `value` with every string in it lengthened by about `chars` characters."""
    if isinstance(value, str):
        return value + " and so on" * (chars // 10)
    if isinstance(value, dict):
        return {k: pad_strings(v, chars) for k, v in value.items()}
    if isinstance(value, list):
        return [pad_strings(v, chars) for v in value]
    return value
