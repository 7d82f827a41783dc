"""Validate JSON answers against pydantic schemas: the structured output of every backend.

The local model, the OpenAI-compatible backend and the scripted double all bind a JSON answer
format to the model and validate here, so a bad answer fails the same way everywhere. Servers
that cannot constrain decoding (tools, plain text; see `nodes.llm.modes`) get the schema in
the prompt and their answer read leniently: the first JSON object in it, code fences or prose
around it ignored; then the very same validation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)


def require_model(schema: Any) -> type[BaseModel]:
    """Return `schema` if it is a pydantic model class; raise TypeError otherwise."""
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise TypeError(f"structured output needs a pydantic model class, got {schema!r}")
    return schema


def parse_json_message(message: BaseMessage, schema: type[T]) -> T:
    """Validate a message whose content should be a `schema` JSON object.

    Raises OutputParserException (never a bare ValueError) so callers can tell a bad answer
    from a broken program.
    """
    text = message.text.strip()
    try:
        return schema.model_validate_json(text)
    except ValidationError as exc:
        if message.response_metadata.get("finish_reason") == "length":
            raise OutputParserException(
                f"{schema.__name__} answer cut off at the token limit; raise max_tokens or "
                "bound the schema's strings (max_length) and lists",
                llm_output=text,
            ) from exc
        summary = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise OutputParserException(
            f"{schema.__name__} invalid: {summary}", llm_output=text
        ) from exc


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_json(text: str) -> Any:
    """Return the first JSON object in `text` (inside a code fence, or among prose).

    Hand-written on purpose: langchain's `parse_json_markdown` closes an unclosed object, which
    would accept an answer cut off at the token limit as if it were complete.
    """
    decoder = json.JSONDecoder()
    for block in [*_FENCE.findall(text), text]:
        for start in (m.start() for m in re.finditer(r"\{", block)):
            try:
                return decoder.raw_decode(block, start)[0]
            except json.JSONDecodeError:
                continue
    raise ValueError("the answer holds no JSON object")


def parse_json_text(message: BaseMessage, schema: type[T]) -> T:
    """Validate a message that should hold a `schema` JSON object somewhere in its text."""
    try:
        return parse_json_message(message, schema)
    except OutputParserException as strict:
        try:
            value = extract_json(message.text)
        except ValueError:
            raise strict from None
        try:
            return schema.model_validate(value)
        except ValidationError:
            raise strict from None


def parse_tool_message(message: BaseMessage, schema: type[T]) -> T:
    """Validate the arguments of the message's first tool call (else JSON in its text).

    Servers that ignore `tool_choice` (Ollama) may answer in text: read that the same way.
    """
    calls = getattr(message, "tool_calls", None) or []
    if calls:
        try:
            return schema.model_validate(calls[0].get("args") or {})
        except ValidationError as exc:
            summary = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise OutputParserException(f"{schema.__name__} invalid: {summary}") from exc
    if getattr(message, "invalid_tool_calls", None):
        raise OutputParserException(f"{schema.__name__} tool call arguments are not JSON")
    return parse_json_text(message, schema)


def schema_instruction(schema: type[BaseModel]) -> str:
    """Return the sentence that states a schema in a prompt (for servers that cannot bind it)."""
    spec = json.dumps(schema.model_json_schema(), separators=(",", ":"), ensure_ascii=False)
    return f"Answer with one JSON object, and nothing else, valid against this JSON Schema: {spec}"


def with_schema_prompt(messages: list[BaseMessage], schema: type[BaseModel]) -> list[BaseMessage]:
    """Return `messages` with the schema stated at the end of the (first) system message."""
    note = schema_instruction(schema)
    if messages and isinstance(messages[0], SystemMessage):
        return [SystemMessage(f"{messages[0].text}\n\n{note}"), *messages[1:]]
    return [SystemMessage(note), *messages]


class _JsonStructured(Runnable):
    """Call a bound model and validate its answer, with no callback run of its own."""

    name = "json_structured_output"

    def __init__(
        self,
        bound_model: Runnable,
        schema: type[BaseModel],
        include_raw: bool,
        parse: Callable[[BaseMessage, Any], Any] = parse_json_message,
        schema_in_prompt: bool = False,
    ) -> None:
        self.bound_model, self.schema, self.include_raw = bound_model, schema, include_raw
        self.parse, self.schema_in_prompt = parse, schema_in_prompt
        # A binding that only adds call arguments is called as model.ainvoke(input, **kwargs):
        # the same call, without merging an empty config into every request's (~20 us a call).
        plain = isinstance(bound_model, RunnableBinding) and not bound_model.config
        plain = plain and not bound_model.config_factories
        self._model, self._kwargs = (
            (bound_model.bound, dict(bound_model.kwargs)) if plain else (bound_model, {})
        )

    def _prompt(self, input: Any) -> Any:
        if self.schema_in_prompt and isinstance(input, list):
            return with_schema_prompt(input, self.schema)
        return input

    def _finish(self, message: BaseMessage) -> Any:
        if not self.include_raw:
            return self.parse(message, self.schema)
        try:
            parsed = self.parse(message, self.schema)
        except Exception as exc:  # what `with_fallbacks` caught, reported the same way
            return {"raw": message, "parsed": None, "parsing_error": exc}
        return {"raw": message, "parsed": parsed, "parsing_error": None}

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Return the validated answer (or the include_raw dict)."""
        return self._finish(self.bound_model.invoke(self._prompt(input), config, **kwargs))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Return the validated answer without leaving the event loop."""
        call = {**self._kwargs, **kwargs}
        message = await self._model.ainvoke(self._prompt(input), config, **call)
        return self._finish(message)


def json_structured_output(
    bound_model: Runnable,
    schema: Any,
    include_raw: bool,
    parse: Callable[[BaseMessage, Any], Any] = parse_json_message,
    schema_in_prompt: bool = False,
) -> Runnable:
    """Attach validation to a model bound to JSON-mode generation (shared with the scripted double).

    `parse` reads the answer (strict JSON content by default; `parse_json_text`,
    `parse_tool_message` for servers that cannot constrain decoding); `schema_in_prompt` states
    the JSON Schema in the system message, for servers that do not enforce it.

    With `include_raw` the result is langchain's `{"raw", "parsed", "parsing_error"}`, so token
    usage can be read from the raw message even when the answer does not validate.

    One runnable with a native async body, not a map/assign/fallbacks chain: each sync link of
    such a chain runs in a worker thread under `ainvoke` (about 9 ms a call on a busy machine),
    and each link opens a callback run.
    """
    return _JsonStructured(bound_model, require_model(schema), include_raw, parse, schema_in_prompt)
