"""Build JSON values that a JSON Schema accepts: the one schema walk every test double shares.

The scripted model (`scripted.example_from_schema`) answers with the simplest valid instance of a
schema; the fake OpenAI-compatible server (`fake_faults.SchemaInstance`) answers with a random
one, and breaks it for schema faults. Both walk the schema here — local `$ref`, `const`, `enum`,
`anyOf` / `oneOf` / `allOf`, objects, arrays, numeric bounds, string lengths — and differ only in
the chooser that picks among what the schema allows (`Simplest`, or a subclass of it).

Hand-written, not hypothesis-jsonschema: the doubles need one deterministic simplest instance
and seeded per-request draws of the small schemas pydantic emits, not a property-testing engine.
"""

from __future__ import annotations

import math
from typing import Any


def resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow local `$ref`s (`#/$defs/Name`) from `schema` to the schema they name in `root`."""
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref are supported, got {ref!r}")
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def schema_kind(schema: dict[str, Any]) -> str | None:
    """Return the schema's non-null type (`object` when it only lists properties), or None."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and "properties" in schema:
        return "object"
    return kind


def number_bounds(schema: dict[str, Any], integer: bool) -> tuple[Any, Any]:
    """Return the (lowest, highest) number `schema` accepts, None where unbounded.

    Exclusive bounds become inclusive ones a step inside (1 for integers, 1e-6 otherwise);
    integer bounds are rounded inwards.
    """
    step = 1 if integer else 1e-6
    low, high = schema.get("minimum"), schema.get("maximum")
    if "exclusiveMinimum" in schema:
        bound = schema["exclusiveMinimum"] + step
        low = bound if low is None else max(low, bound)
    if "exclusiveMaximum" in schema:
        bound = schema["exclusiveMaximum"] - step
        high = bound if high is None else min(high, bound)
    if integer:
        low = None if low is None else math.ceil(low)
        high = None if high is None else math.floor(high)
    return low, high


class Simplest:
    """Choose the simplest value a schema allows; subclasses choose otherwise (`instance`).

    The first option (enum member, anyOf branch), the required properties only, one array item
    (or the fewest allowed), 0 or the bound nearest to it, a fixed text, False.
    """

    def __init__(self, text: str = "answer") -> None:
        self.default_text = text

    def option(self, options: list[Any]) -> Any:
        return options[0]

    def keys(self, schema: dict[str, Any]) -> list[str]:
        props = schema.get("properties", {})
        return [k for k in schema.get("required", []) if k in props]

    def count(self, schema: dict[str, Any]) -> int:
        count = max(int(schema.get("minItems", 0)), 1)
        return min(count, int(schema.get("maxItems", count)))

    def number(self, low: Any, high: Any, integer: bool) -> int | float:
        value: float = 0
        if low is not None and value < low:
            value = low
        elif high is not None and value > high:
            value = high
        return int(value) if integer else float(value)

    def text(self, name: str) -> str:
        """Return a string for the property `name` (before `minLength` / `maxLength` apply)."""
        return self.default_text

    def boolean(self) -> bool:
        return False


def instance(
    schema: dict[str, Any],
    chooser: Simplest,
    root: dict[str, Any] | None = None,
    name: str = "",
) -> Any:
    """Return a value `schema` accepts, `chooser` picking among the allowed ones.

    `root` holds the `$defs` that `$ref`s point into (default: `schema` itself); `name` is the
    property the value is for (a chooser may fill title fields differently).
    """
    root = schema if root is None else root
    schema = resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return chooser.option(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if options := schema.get(key):
            usable = [o for o in options if resolve(o, root).get("type") != "null"]
            return instance(chooser.option(usable or options), chooser, root, name)
    if options := schema.get("allOf"):
        return instance(options[0], chooser, root, name)
    kind = schema_kind(schema)
    if kind == "object":
        props = schema.get("properties", {})
        return {k: instance(props[k], chooser, root, k) for k in chooser.keys(schema)}
    if kind == "array":
        count = chooser.count(schema)
        return [instance(schema.get("items", {}), chooser, root, name) for _ in range(count)]
    if kind in ("integer", "number"):
        integer = kind == "integer"
        return chooser.number(*number_bounds(schema, integer), integer)
    if kind == "string":
        text = chooser.text(name).ljust(int(schema.get("minLength", 0)), ".")
        high = schema.get("maxLength")
        return text if high is None else text[: int(high)]
    if kind == "boolean":
        return chooser.boolean()
    return None
