"""Read what a chat request asks for, and build JSON values its schema accepts or rejects.

Used by `fake_openai.FakeOpenAI`: `request_schema` tells the request shape (tools, json_schema,
json_object, text with a schema stated in the prompt) and its JSON Schema; `SchemaInstance`
answers with a valid instance, or serves a schema fault (missing fields, wrong types,
out-of-range values, hallucinated titles).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

HALLUCINATED = "The Chronicles of Nowhere: Imaginary Edition"
TITLE_FIELD = re.compile(r"title|name", re.IGNORECASE)


class SchemaInstance:
    """Build values that a JSON schema accepts (or, on request, values it rejects)."""

    def __init__(self, rng: random.Random, titles: Sequence[str] = ()) -> None:
        self.rng = rng
        self.titles = list(titles)

    def valid(self, schema: dict[str, Any], root: dict[str, Any] | None = None, name: str = ""):
        """Return a random value `schema` accepts; `name` is the property it is for."""
        root = root if root is not None else schema
        schema = self._deref(schema, root)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if options := schema.get(key):
                usable = [o for o in options if self._deref(o, root).get("type") != "null"]
                return self.valid(self.rng.choice(usable or options), root, name)
        if options := schema.get("allOf"):
            return self.valid(options[0], root, name)
        kind = schema_kind(schema)
        if kind == "object":
            props = schema.get("properties", {})
            return {k: self.valid(v, root, k) for k, v in props.items()}
        if kind == "array":
            low = int(schema.get("minItems", 1))
            high = int(schema.get("maxItems", max(low, 3)))
            n = self.rng.randint(low, max(low, high))
            return [self.valid(schema.get("items", {}), root, name) for _ in range(n)]
        if kind in ("integer", "number"):
            return self._number(schema, kind == "integer")
        if kind == "string":
            return self._string(schema, name)
        if kind == "boolean":
            return self.rng.random() < 0.5
        return None

    def _deref(self, schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = root
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def _number(self, schema: dict[str, Any], integer: bool) -> int | float:
        low = schema.get("minimum", schema.get("exclusiveMinimum", -5))
        high = schema.get("maximum", schema.get("exclusiveMaximum", 5))
        if "exclusiveMinimum" in schema:
            low += 1 if integer else 1e-6
        if "exclusiveMaximum" in schema:
            high -= 1 if integer else 1e-6
        if integer:
            return self.rng.randint(int(-(-low // 1)), int(high // 1))
        return round(self.rng.uniform(low, high), 4)

    def _string(self, schema: dict[str, Any], name: str) -> str:
        if self.titles and TITLE_FIELD.search(name):
            text = self.rng.choice(self.titles)
        else:
            text = f"fake answer {self.rng.randrange(10_000)}: try a different genre next"
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        text = text.ljust(low, ".")
        return text[: int(high)] if high is not None else text

    def broken(self, fault: str, schema: dict[str, Any]) -> Any:
        """Return a JSON value that violates `schema` the way `fault` says."""
        root = schema
        value = self.valid(schema)
        props = self._deref(schema, root).get("properties", {})
        if not isinstance(value, dict) or not props:
            return ["not", "an", "object"]
        if fault == "missing":
            required = schema.get("required") or list(props)
            return {k: v for k, v in value.items() if k not in required}
        if fault == "types":
            return {k: _wrong_type(self._deref(props[k], root)) for k in value}
        if fault == "range":
            return {k: _out_of_range(self._deref(props[k], root), v) for k, v in value.items()}
        if fault == "hallucinated":
            return {k: HALLUCINATED if TITLE_FIELD.search(k) else v for k, v in value.items()}
        raise ValueError(f"not a schema fault: {fault!r}")


def schema_kind(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and "properties" in schema:
        return "object"
    return kind


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
    if isinstance(value, str):
        return value + " and so on" * (chars // 10)
    if isinstance(value, dict):
        return {k: pad_strings(v, chars) for k, v in value.items()}
    if isinstance(value, list):
        return [pad_strings(v, chars) for v in value]
    return value
