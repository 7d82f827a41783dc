"""Validate JSON answers against pydantic schemas: the structured output of every backend.

The local model, the OpenAI-compatible backend and the scripted double all bind a JSON answer
format to the model and validate here, so a bad answer fails the same way everywhere.
"""

from __future__ import annotations

from typing import Any, TypeVar

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
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


class _JsonStructured(Runnable):
    """Call a bound model and validate its answer, with no callback run of its own."""

    name = "json_structured_output"

    def __init__(self, bound_model: Runnable, schema: type[BaseModel], include_raw: bool) -> None:
        self.bound_model, self.schema, self.include_raw = bound_model, schema, include_raw

    def _finish(self, message: BaseMessage) -> Any:
        if not self.include_raw:
            return parse_json_message(message, self.schema)
        try:
            parsed = parse_json_message(message, self.schema)
        except Exception as exc:  # what `with_fallbacks` caught, reported the same way
            return {"raw": message, "parsed": None, "parsing_error": exc}
        return {"raw": message, "parsed": parsed, "parsing_error": None}

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Return the validated answer (or the include_raw dict)."""
        return self._finish(self.bound_model.invoke(input, config, **kwargs))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Return the validated answer without leaving the event loop."""
        return self._finish(await self.bound_model.ainvoke(input, config, **kwargs))


def json_structured_output(bound_model: Runnable, schema: Any, include_raw: bool) -> Runnable:
    """Attach validation to a model bound to JSON-mode generation (shared with the scripted double).

    With `include_raw` the result is langchain's `{"raw", "parsed", "parsing_error"}`, so token
    usage can be read from the raw message even when the answer does not validate.

    One runnable with a native async body, not a map/assign/fallbacks chain: each sync link of
    such a chain runs in a worker thread under `ainvoke` (about 9 ms a call on a busy machine),
    and each link opens a callback run.
    """
    return _JsonStructured(bound_model, require_model(schema), include_raw)
