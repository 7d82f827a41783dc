"""Provide a deterministic chat model for tests and demos: a test double, never an LLM result.

`ScriptedChatModel` answers through a responder `(messages, schema) -> dict | str`. The default
responder builds a schema-valid instance from the JSON schema alone; graph code can register a
smarter one under a name (`scripted:NAME`). Fault injection ("malformed", "schema", "error",
"fatal") lets the retry and fallback paths of `nodes.llm.calls` be tested offline. Token counts are
estimated (characters / 4) so usage accounting runs exactly as it does with a real model.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator

from nodes.llm.calls import TransientLLMError
from nodes.llm.schema_values import Simplest, instance
from nodes.llm.structured import json_structured_output

Responder = Callable[[list[BaseMessage], type[BaseModel] | None], dict | str]

FAULTS = ("ok", "malformed", "schema", "error", "fatal")
DEFAULT_TEXT = "scripted answer"
_SIMPLEST = Simplest(DEFAULT_TEXT)

_RESPONDERS: dict[str, Responder] = {}
_RESPONDERS_LOCK = threading.Lock()


class ScriptedTransientError(TransientLLMError):
    """Imitate a rate limit or timeout (fault "error"); the caller should back off and retry."""


class ScriptedFatalError(RuntimeError):
    """Imitate a non-retryable failure (fault "fatal"); it must propagate to the caller."""


def register_scripted_responder(name: str, fn: Responder) -> None:
    """Install `fn` as the responder of spec `scripted:NAME` (replacing any earlier one)."""
    if not name or ":" in name or "?" in name:
        raise ValueError(f"responder name must be non-empty, without ':' or '?', got {name!r}")
    with _RESPONDERS_LOCK:
        _RESPONDERS[name] = fn


def get_scripted_responder(name: str) -> Responder:
    """Return the responder registered under `name`, or raise listing the known names."""
    with _RESPONDERS_LOCK:
        if name not in _RESPONDERS:
            known = ", ".join(sorted(_RESPONDERS)) or "none"
            raise ValueError(
                f"no scripted responder named {name!r} (registered: {known}); "
                "call nodes.llm.scripted.register_scripted_responder first"
            )
        return _RESPONDERS[name]


def example_from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """Build the simplest value a JSON schema accepts (first enum value, smallest number...)."""
    return instance(schema, _SIMPLEST, root)


def default_responder(messages: list[BaseMessage], schema: type[BaseModel] | None) -> dict | str:
    """Answer with the simplest valid instance of `schema`, or a fixed text without one."""
    if schema is None:
        return DEFAULT_TEXT
    return json.loads(_example_json(schema))


@functools.lru_cache(maxsize=256)
def _example_json(schema: type[BaseModel]) -> str:
    """The simplest instance of a schema, as JSON: building the JSON Schema cost ~100 us a call,
    which the overhead benchmark charged to the graph (schemas are few: one per class)."""
    return json.dumps(example_from_schema(schema.model_json_schema()))


def estimate_tokens(text: str) -> int:
    """Estimate tokens as characters / 4 (rounded up), the usual rule of thumb for English."""
    return math.ceil(len(text) / 4)


class ScriptedChatModel(BaseChatModel):
    """Answer deterministically through a responder; optionally inject faults in a fixed cycle."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    responder: Responder | None = None
    """Callable producing the answer; None uses the registered `responder_name`, else default."""
    responder_name: str | None = None
    """Name given to `register_scripted_responder`, looked up at call time."""
    faults: Sequence[str] = ("ok",)
    """Outcome of successive calls, cycled: ok, malformed, schema, error (transient), fatal."""

    _cycle: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _calls: int = PrivateAttr(default=0)

    @field_validator("faults")
    @classmethod
    def _known_faults(cls, faults: Sequence[str]) -> tuple[str, ...]:
        unknown = [f for f in faults if f not in FAULTS]
        if unknown or not faults:
            raise ValueError(f"faults must be a non-empty sequence of {FAULTS}, got {faults!r}")
        return tuple(faults)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Name the double in traces (LangChain's fallback probes attributes it lacks)."""
        name = f"scripted:{self.responder_name or 'default'}"
        params = LangSmithParams(ls_provider="scripted", ls_model_name=name, ls_model_type="chat")
        if stop:
            params["ls_stop"] = stop
        return params

    @property
    def calls(self) -> int:
        """Return how many requests this instance has received (faults included)."""
        return self._calls

    def _next_fault(self) -> str:
        with self._lock:
            if self._cycle is None:
                self._cycle = itertools.cycle(self.faults)
            self._calls += 1
            return next(self._cycle)

    def _answer(self, messages: list[BaseMessage], schema: type[BaseModel] | None) -> str:
        fault = self._next_fault()
        if fault == "error":
            raise ScriptedTransientError("scripted transient failure (fault 'error')")
        if fault == "fatal":
            raise ScriptedFatalError("scripted fatal failure (fault 'fatal')")
        if fault == "malformed":
            return "" if schema is None else "Sure! Here is my answer: {not json"
        if fault == "schema":
            return "" if schema is None else _violating_json(schema)
        responder = self.responder
        if responder is None:
            responder = (
                get_scripted_responder(self.responder_name)
                if self.responder_name
                else default_responder
            )
        answer = responder(messages, schema)
        return answer if isinstance(answer, str) else json.dumps(answer)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        structured_schema: type[BaseModel] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        content = self._answer(messages, structured_schema)
        prompt = sum(estimate_tokens(m.text) for m in messages)
        completion = estimate_tokens(content)
        message = AIMessage(
            content=content,
            usage_metadata={
                "input_tokens": prompt,
                "output_tokens": completion,
                "total_tokens": prompt + completion,
            },
            response_metadata={"model_name": f"scripted:{self.responder_name or 'default'}"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        structured_schema: type[BaseModel] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """Answer inline: without this LangChain runs `_generate` in a worker thread per call."""
        return self._generate(messages, stop, None, structured_schema, **kwargs)

    def with_structured_output(
        self, schema: Any, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable:
        """Return a runnable whose output is a validated `schema` instance, like the local model."""
        return json_structured_output(self.bind(structured_schema=schema), schema, include_raw)


def _violating_json(schema: type[BaseModel]) -> str:
    """Return well-formed JSON that `schema` rejects, to imitate a model ignoring the format."""
    candidate = {name: {"unexpected": [1, 2]} for name in schema.model_fields}
    try:
        schema.model_validate(candidate)
    except ValidationError:
        return json.dumps(candidate)
    return json.dumps(["not", "an", "object"])  # every field accepts objects: break the shape
