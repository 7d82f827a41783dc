"""Chat with any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server).

Structured output asks for `response_format: json_schema` and validates the answer with pydantic
(`nodes.structured`): the same JSON the server sends to langchain's own json_schema method, at
about half the client CPU per call (langchain's parse path costs 12-16 ms a call; concurrency
runs out of CPU before it runs out of server). Servers that refuse json_schema (HTTP 400) get
function calling instead, remembered per base URL.
"""

from __future__ import annotations

import os
from typing import Any

import openai
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from nodes.llms import DEFAULT_TIMEOUT_S, ENV_TIMEOUT, LLMError, _base_url, _env_seconds
from nodes.structured import json_structured_output, require_model


def json_schema_format(schema: type[BaseModel]) -> dict[str, Any]:
    """Return the `response_format` that asks for a `schema` instance (not strict: defaults ok)."""
    spec: dict[str, Any] = {"name": schema.__name__, "schema": schema.model_json_schema()}
    if schema.__doc__:
        spec["description"] = schema.__doc__.strip()[:500]
    return {"type": "json_schema", "json_schema": {**spec, "strict": False}}


# Base URLs that answered 400 to a json_schema response_format; per process, so one probe each.
_NO_JSON_SCHEMA: set[str] = set()


class FallbackChatOpenAI(ChatOpenAI):
    """Use json_schema structured output, switching to function calling where it is refused."""

    def with_structured_output(
        self, schema: Any = None, *, method: str | None = None, include_raw: bool = False, **kw: Any
    ) -> Runnable:
        """Return a runnable that remembers, per base URL, which method the server accepts."""
        if method is not None:
            return super().with_structured_output(
                schema, method=method, include_raw=include_raw, **kw
            )
        # In extra_body, not response_format=: the SDK then sends the schema as it is instead of
        # walking it against its typed params (~6 ms of CPU a call, the largest client cost).
        body = {
            **(self.extra_body or {}),
            "response_format": json_schema_format(require_model(schema)),
        }
        via_schema = json_structured_output(self.bind(extra_body=body), schema, include_raw)
        via_tools = super().with_structured_output(
            schema, method="function_calling", include_raw=include_raw, **kw
        )
        url = _base_url(self)

        def invoke(messages: Any, config: RunnableConfig) -> Any:
            if url not in _NO_JSON_SCHEMA:
                try:
                    return via_schema.invoke(messages, config)
                except openai.BadRequestError:
                    pass  # maybe json_schema is unsupported: fall through and find out
            out = via_tools.invoke(messages, config)
            _NO_JSON_SCHEMA.add(url)
            return out

        async def ainvoke(messages: Any, config: RunnableConfig) -> Any:
            if url not in _NO_JSON_SCHEMA:
                try:
                    return await via_schema.ainvoke(messages, config)
                except openai.BadRequestError:
                    pass
            out = await via_tools.ainvoke(messages, config)
            _NO_JSON_SCHEMA.add(url)
            return out

        return RunnableLambda(invoke, afunc=ainvoke, name="structured_output")


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
