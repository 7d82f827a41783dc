"""Chat with any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp servers).

Structured output goes through `nodes.llm.modes`: json_schema where the server takes it, else
json_object with the schema, function calling, or plain text, negotiated once per endpoint and
model, and validated with pydantic (`nodes.llm.structured`) whatever the mode: the same JSON the
server sends to langchain's own json_schema method, at about half the client CPU per call
(langchain's parse path costs 12-16 ms a call; concurrency runs out of CPU before it runs out of
server).
"""

from __future__ import annotations

import os
from typing import Any

from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI

from nodes.llm.calls import CALL_SEED, DEFAULT_TIMEOUT_S, ENV_TIMEOUT, LLMError, _env_seconds
from nodes.llm.health import reset_health
from nodes.llm.modes import (
    NegotiatedStructured,
    json_schema_format,
    negotiated,
    pin_mode,
    reset_negotiations,
)

__all__ = [
    "FallbackChatOpenAI",
    "json_schema_format",
    "make_openai",
    "negotiated",
    "pin_mode",
    "reset_endpoints",
]


def reset_endpoints() -> None:
    """Forget negotiated modes and endpoint health: what a fresh process would know (tests)."""
    reset_negotiations()
    reset_health()


class FallbackChatOpenAI(ChatOpenAI):
    """Ask for structured output in the mode the server accepts (`nodes.llm.modes`)."""

    def _get_request_payload(self, input_: Any, *, stop: Any = None, **kwargs: Any) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        seed = CALL_SEED.get()  # this call's derived seed (nodes.draws) wins over the model's
        if seed is not None:
            payload["seed"] = seed
        return payload

    def with_structured_output(
        self, schema: Any = None, *, method: str | None = None, include_raw: bool = False, **kw: Any
    ) -> Runnable:
        """Return structured output in the mode negotiated with this endpoint and model."""
        if method is not None:
            return super().with_structured_output(
                schema, method=method, include_raw=include_raw, **kw
            )
        return NegotiatedStructured(self, schema, include_raw)


def make_openai(model: str, temperature: float, seed: int | None, kwargs: dict) -> ChatOpenAI:
    kwargs = dict(kwargs)
    base_url = (
        kwargs.pop("base_url", None)
        or os.environ.get("OPENAI_BASE_URL")
        or os.environ.get("OPENAI_API_BASE")
    )
    api_key = kwargs.pop("api_key", None) or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if not base_url:
            raise LLMError(f"openai:{model} needs OPENAI_API_KEY (or api_key=...) to be set")
        api_key = "not-needed"  # local OpenAI-compatible servers usually ignore the key
    kwargs.setdefault("timeout", _env_seconds(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))
    return FallbackChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=api_key,
        temperature=temperature,
        seed=seed,
        max_retries=0,  # call_structured owns the retry policy, with backoff and Retry-After
        **kwargs,
    )
