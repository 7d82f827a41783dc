"""Negotiate structured output with an OpenAI-compatible server, once per (endpoint, model).

Servers differ in what they accept (see the README's server table):

    json_schema  `response_format: {"type": "json_schema", ...}`: OpenAI, vLLM, Ollama >= 0.5,
                 llama.cpp's `llama-server`, LM Studio
    json_object  `{"type": "json_object", "schema": ...}` (the schema enforced by llama.cpp
                 servers, ignored by others) plus the schema stated in the prompt:
                 llama-cpp-python's server, which answers json_schema with HTTP 500
    tools        function calling with `tool_choice` naming the schema's function
    text         the schema stated in the prompt, the first JSON object read from the answer

The first mode is tried first; a request-shape rejection moves on to the next mode at once and
is remembered for the run, so later calls go straight to the mode that works. A rejection is a
request-shape one when the server answers 400/422 or a 5xx and its message names a field this
mode sent (`response_format`, `json_schema`, `json_object`, `tools`, `tool_choice`). A 400/422
that names nothing is ambiguous (the prompt may simply be too long): until some mode has been
answered, the next mode is tried, and the walk moves on only if that one is answered; the same
rejection again means the request is at fault, not its shape, and it is reported as such.
Every mode's answer is validated by the same pydantic schema (`nodes.llm.structured`), with the
caller's corrective retry, so a weaker mode costs retries, never correctness.

The SDK's own `max_retries` is not used: it retries every 5xx, including the 500 with which
llama-cpp-python refuses a response_format, and would hide a dead endpoint behind backoff.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import openai
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel

from nodes.llm.health import endpoint_of, one_line, server_message
from nodes.llm.structured import (
    json_structured_output,
    parse_json_text,
    parse_tool_message,
    require_model,
)

log = logging.getLogger(__name__)

MODES = ("json_schema", "json_object", "tools", "text")
_FIELDS = {
    "json_schema": re.compile(r"response_format|json_schema", re.IGNORECASE),
    "json_object": re.compile(r"response_format|json_object|json_schema", re.IGNORECASE),
    "tools": re.compile(r"\btools?\b|tool_choice|function.?call", re.IGNORECASE),
    "text": None,
}


def json_schema_format(schema: type[BaseModel]) -> dict[str, Any]:
    """Return the `response_format` that asks for a `schema` instance (not strict: defaults ok)."""
    spec: dict[str, Any] = {"name": schema.__name__, "schema": schema.model_json_schema()}
    if schema.__doc__:
        spec["description"] = schema.__doc__.strip()[:500]
    return {"type": "json_schema", "json_schema": {**spec, "strict": False}}


def json_object_format(schema: type[BaseModel]) -> dict[str, Any]:
    """Return `{"type": "json_object", "schema": ...}`: llama.cpp servers turn it into a grammar."""
    return {"type": "json_object", "schema": schema.model_json_schema()}


@dataclass
class Negotiation:
    """The structured-output mode of one (endpoint, model), shared by every call of the run."""

    endpoint: str
    model: str
    index: int = 0
    settled: bool = False
    """True once a request in mode `index` has been answered."""
    refused: dict[str, str] = field(default_factory=dict)
    """The server's message for each mode it refused."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def mode(self) -> str:
        """Return the mode calls start with."""
        return MODES[self.index]

    def refuse(self, index: int, reason: str) -> None:
        """Record that the server refused mode `index`; calls start at the next mode from now."""
        with self.lock:
            self.refused.setdefault(MODES[index], reason)
            moved = self.index <= index < len(MODES) - 1
            if moved:
                self.index = index + 1
        if moved:
            log.warning(
                "%s (model %s) refused structured output as %s (%s); using %s",
                self.endpoint, self.model, MODES[index], reason, MODES[index + 1],
            )  # fmt: skip

    def answered(self, index: int) -> None:
        """Record that mode `index` was answered: it is the run's mode unless a later one is."""
        if self.settled and index <= self.index:
            return
        with self.lock:
            if index >= self.index:
                self.index, self.settled = index, True

    def describe(self) -> dict[str, Any]:
        """Return {mode, settled, refused} for reports and tests."""
        return {"mode": self.mode, "settled": self.settled, "refused": dict(self.refused)}


_NEGOTIATIONS: dict[tuple[str, str], Negotiation] = {}
_LOCK = threading.Lock()


def negotiation(model: Any) -> Negotiation:
    """Return the negotiation of a model's (endpoint, model), started on first use."""
    key = endpoint_of(model) or ("?", "?")
    found = _NEGOTIATIONS.get(key)
    if found is None:
        with _LOCK:
            found = _NEGOTIATIONS.setdefault(key, Negotiation(*key))
    return found


def negotiated() -> dict[str, dict[str, Any]]:
    """Return every endpoint's negotiated mode, keyed `"endpoint model"`."""
    with _LOCK:
        return {f"{e} {m}": n.describe() for (e, m), n in _NEGOTIATIONS.items()}


def pin_mode(model: Any, mode: str) -> None:
    """Start (and settle) a model's endpoint on `mode`, skipping the negotiation."""
    if mode not in MODES:
        raise ValueError(f"structured-output mode must be one of {MODES}, got {mode!r}")
    found = negotiation(model)
    with found.lock:
        found.index, found.settled = MODES.index(mode), True


def reset_negotiations() -> None:
    """Forget every negotiated mode (a fresh process, for tests)."""
    with _LOCK:
        _NEGOTIATIONS.clear()


def _verdict(mode: str, exc: openai.APIStatusError) -> str:
    """Return 'refused' (the shape), 'unclear' (400/422 naming nothing) or 'other'."""
    status = exc.status_code
    if status not in (400, 422) and status < 500:
        return "other"
    fields = _FIELDS[mode]
    if fields is not None and fields.search(server_message(exc)):
        return "refused"
    return "unclear" if status in (400, 422) else "other"


def _same(a: BaseException, b: BaseException) -> bool:
    return getattr(a, "status_code", None) == getattr(b, "status_code", None) and server_message(
        a
    ) == server_message(b)


class _Walk:
    """One call's way through the modes, starting at the negotiated one."""

    def __init__(self, found: Negotiation, model: Any) -> None:
        self.found, self.model = found, model
        self.index = found.index
        self.probe: openai.APIStatusError | None = None

    def failed(self, exc: Exception) -> None:
        """Move to the next mode, or raise (the probe's error if the next mode repeated it)."""
        exc.billp_mode = MODES[self.index]  # type: ignore[attr-defined]  # for fail-fast lines
        if not isinstance(exc, openai.APIStatusError):
            raise exc
        if self.probe is not None and _same(exc, self.probe):
            raise self.probe
        last = self.index == len(MODES) - 1
        verdict = _verdict(MODES[self.index], exc)
        if verdict == "refused" and not last:
            self.found.refuse(self.index, one_line(server_message(exc), self.model, 160))
            self.index = max(self.index + 1, self.found.index)
            return
        if verdict == "unclear" and not last and not self.found.settled:
            self.probe = self.probe or exc
            self.index += 1
            return
        raise exc

    def answered(self) -> None:
        self.found.answered(self.index)


class NegotiatedStructured(Runnable):
    """Structured output through the negotiated mode (include_raw-style dicts, like langchain)."""

    name = "negotiated_structured_output"

    def __init__(self, model: Any, schema: Any, include_raw: bool) -> None:
        self.model, self.schema = model, require_model(schema)
        self.found = negotiation(model)
        extra = dict(getattr(model, "extra_body", None) or {})
        # In extra_body, not response_format=: the SDK then sends the schema as it is instead of
        # walking it against its typed params (~6 ms of CPU a call).
        via_schema = model.bind(
            extra_body={**extra, "response_format": json_schema_format(self.schema)}
        )
        via_object = model.bind(
            extra_body={**extra, "response_format": json_object_format(self.schema)}
        )
        via_tools = model.bind_tools([self.schema], tool_choice=self.schema.__name__)
        self.runners = [
            json_structured_output(via_schema, self.schema, include_raw),
            json_structured_output(via_object, self.schema, include_raw, parse_json_text, True),
            json_structured_output(via_tools, self.schema, include_raw, parse_tool_message),
            json_structured_output(model, self.schema, include_raw, parse_json_text, True),
        ]

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Answer in the negotiated mode, moving on when the server refuses a mode."""
        walk = _Walk(self.found, self.model)
        while True:
            try:
                out = self.runners[walk.index].invoke(input, config, **kwargs)
            except Exception as exc:
                walk.failed(exc)
                continue
            walk.answered()
            return out

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Do what `invoke` does without leaving the event loop."""
        walk = _Walk(self.found, self.model)
        while True:
            try:
                out = await self.runners[walk.index].ainvoke(input, config, **kwargs)
            except Exception as exc:
                walk.failed(exc)
                continue
            walk.answered()
            return out
