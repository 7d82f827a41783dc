"""Call chat models so that model output never crashes a run (models come from `factory`).

Error policy of `call_structured` / `call_text`:
- malformed output or a schema violation -> retried `retries` times, each retry telling the
  model what was wrong, then `ok=False` (the caller applies its fallback and counts it);
- transient failures (429 honouring Retry-After, 408/409/5xx, timeouts, scripted "error") ->
  exponential backoff with jitter up to `transient_retries` times, then `ok=False`;
- a request the endpoint rejects as posed (400/413/422, e.g. context too long) -> `ok=False`;
- configuration problems -> `LLMError`: 401/403/404 at once, an endpoint still refusing
  connections after every retry, and an endpoint whose first requests all fail the same way
  (`nodes.llm.health`), because every later call would fail the same way and falling back on
  every step would yield a meaningless experiment;
- a server that refuses the structured-output request shape is not retried: the next mode is
  asked instead (`nodes.llm.modes`);
- anything else (a bug, or the scripted "fatal" fault) propagates unchanged.

Retries are ours, not the OpenAI SDK's `max_retries` (set to 0): the SDK retries every 5xx alike,
while a format rejection must move to the next structured-output mode and an endpoint failing
uniformly must stop a run within seconds, not after minutes of backoff.

Defaults an environment may set (explicit arguments win): BILLP_LLM_BASE_DELAY, the first backoff
in seconds (0.5), and BILLP_LLM_TIMEOUT, the `openai:` request timeout in seconds (60).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import openai
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import Runnable
from pydantic import BaseModel, ValidationError

from nodes.llm import health as llm_health
from nodes.llm.usage import StructuredResult, TextResult, Usage

T = TypeVar("T", bound=BaseModel)

MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0
DEFAULT_BASE_DELAY_S = 0.5
DEFAULT_TIMEOUT_S = 60.0
ENV_BASE_DELAY = "BILLP_LLM_BASE_DELAY"
ENV_TIMEOUT = "BILLP_LLM_TIMEOUT"
RETRY_FEEDBACK = (
    "Your previous answer could not be used ({error}). "
    "Answer again, following the required format exactly."
)


def _env_seconds(name: str, default: float) -> float:
    """Return $name as seconds >= 0, or `default` when unset (a default, never an override)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"${name} must be a number of seconds >= 0, got {raw!r}")
    return value


class LLMError(RuntimeError):
    """A configuration problem the user must fix (bad key, unknown model, unreachable endpoint)."""


class TransientLLMError(RuntimeError):
    """A failure that may pass if the same request is repeated later."""


class RejectedRequestError(RuntimeError):
    """A request the model cannot serve as posed (e.g. the prompt exceeds the context window)."""


# --- error classification ----------------------------------------------------------------------

_MALFORMED = (
    OutputParserException,
    ValidationError,
    json.JSONDecodeError,
    openai.LengthFinishReasonError,
    openai.ContentFilterFinishReasonError,
)


def _classify(exc: BaseException) -> str:
    """Return 'malformed', 'rejected', 'transient', 'unreachable', 'config' or 'bug'."""
    if isinstance(exc, _MALFORMED):
        return "malformed"
    if isinstance(exc, RejectedRequestError):
        return "rejected"
    if isinstance(exc, (openai.APITimeoutError, TimeoutError, TransientLLMError)):
        return "transient"
    if isinstance(exc, (openai.APIConnectionError, ConnectionError)):
        return "unreachable"  # retried like a transient failure, but fatal once retries run out
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in {408, 409, 429} or exc.status_code >= 500:
            return "transient"
        return "rejected" if exc.status_code in {400, 413, 422} else "config"
    return "bug"


def _short(exc: BaseException | str, limit: int = 300) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    for link in (" For troubleshooting, visit:", " For further information visit"):
        text = text.split(link)[0]  # library boilerplate, not the reason
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _base_url(model: BaseChatModel) -> str:
    model = llm_health.unwrap(model)  # the answer cache wraps the client
    return str(getattr(model, "openai_api_base", None) or "https://api.openai.com/v1")


def _retry_after(exc: BaseException) -> float | None:
    """Return the server's requested wait in seconds (Retry-After / retry-after-ms), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return min(float(ms) / 1000.0, MAX_RETRY_AFTER_S)
        if (seconds := headers.get("retry-after")) is not None:
            return min(float(seconds), MAX_RETRY_AFTER_S)
    except ValueError:
        return None  # an HTTP-date form: fall back to our own backoff
    return None


def _config_error(model: BaseChatModel, exc: BaseException) -> LLMError:
    name = getattr(model, "model_name", None) or type(model).__name__
    if isinstance(exc, openai.APIConnectionError):
        hint = "is the server running and OPENAI_BASE_URL right?"
        return LLMError(f"cannot reach {_base_url(model)} (model {name}): {_short(exc)}; {hint}")
    hint = "check OPENAI_API_KEY, OPENAI_BASE_URL and the model name in the spec"
    return LLMError(f"{_base_url(model)} refused model {name}: {_short(exc)}; {hint}")


class _Attempts:
    """Decide, attempt by attempt, whether to return, retry after a delay, or raise."""

    def __init__(
        self, model: BaseChatModel, retries: int, transient_retries: int, delay: float | None
    ):
        if delay is None:  # the callers' default: $BILLP_LLM_BASE_DELAY, else 0.5 s
            delay = _env_seconds(ENV_BASE_DELAY, DEFAULT_BASE_DELAY_S)
        if retries < 0 or transient_retries < 0 or delay < 0:
            raise ValueError("retries, transient_retries and base_delay must be >= 0")
        self.model, self.retries, self.transient_retries = model, retries, transient_retries
        self.base_delay = delay
        self.attempts = self.bad_outputs = self.transient = 0
        self.error: str | None = None
        self.feedback: str | None = None
        self.usage = Usage(asks=1)
        self.started = 0.0

    def begin(self) -> None:
        self.attempts += 1
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def failed(self, exc: Exception) -> float | None:
        """Return the delay before the next try, None to give up, or raise LLMError."""
        self.usage.seconds += self.elapsed()
        self.error = _short(exc)
        kind = _classify(exc)
        if kind == "malformed":
            self.usage.calls += 1  # answered, though its token counts went down with the response
            llm_health.note_answer(self.model)
            return self.bad_output(self.error)
        if (stop := llm_health.note_failure(self.model, exc)) is not None:
            raise LLMError(stop) from exc  # a broken endpoint: fail fast (nodes.llm.health)
        if kind == "rejected":
            return None
        if kind == "config":
            raise _config_error(self.model, exc) from exc
        if kind == "bug":
            raise exc
        self.transient += 1
        if self.transient > self.transient_retries:
            if kind == "unreachable":
                raise _config_error(self.model, exc) from exc
            return None
        asked = _retry_after(exc)
        if asked is not None:
            return asked
        # Jitter spreads the retries of concurrent episodes that failed together.
        backoff = self.base_delay * 2 ** (self.transient - 1) * (1.0 + random.random())
        return min(backoff, MAX_BACKOFF_S)

    def bad_output(self, error: str) -> float | None:
        """Count an unusable answer; return 0.0 to retry at once, or None when out of retries."""
        self.error = error
        self.bad_outputs += 1
        self.feedback = RETRY_FEEDBACK.format(error=error)
        return 0.0 if self.bad_outputs <= self.retries else None

    def prompt(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        """Return the messages for this try, telling the model why its last answer failed.

        Changing the prompt matters: with a fixed seed an identical request would repeat the
        same bad answer.
        """
        return [*messages, HumanMessage(self.feedback)] if self.feedback else messages

    def received(self, raw: BaseMessage | None) -> None:
        llm_health.note_answer(self.model)
        self.usage.add(Usage.from_message(raw, self.elapsed()))

    def error_if(self, value: Any) -> str | None:
        return None if value is not None else self.error


def _check_structured(run: _Attempts, out: dict[str, Any]) -> tuple[Any, float | None]:
    """Return (value, None) on success, else (None, delay-or-None) after counting the failure."""
    run.received(out.get("raw"))
    if out.get("parsing_error") is not None or out.get("parsed") is None:
        why = out.get("parsing_error") or "the answer held no structured output"
        return None, run.bad_output(_short(why))
    return out["parsed"], None


def _check_text(run: _Attempts, message: BaseMessage) -> tuple[str | None, float | None]:
    run.received(message)
    text = message.text.strip() if isinstance(message, BaseMessage) else str(message).strip()
    if not text:
        return None, run.bad_output("the model returned an empty answer")
    return text, None


async def _run_async(
    run: _Attempts, messages: list[BaseMessage], call: Callable, check: Callable
) -> Any:
    while True:
        run.begin()
        try:
            out = await call(run.prompt(messages))
        except Exception as exc:
            delay = run.failed(exc)
        else:
            value, delay = check(run, out)
            if delay is None and value is not None:
                return value
        if delay is None:
            return None
        await asyncio.sleep(delay)


def _run_sync(run: _Attempts, messages: list[BaseMessage], call: Callable, check: Callable) -> Any:
    while True:
        run.begin()
        try:
            out = call(run.prompt(messages))
        except Exception as exc:
            delay = run.failed(exc)
        else:
            value, delay = check(run, out)
            if delay is None and value is not None:
                return value
        if delay is None:
            return None
        time.sleep(delay)


_STRUCTURED: OrderedDict[tuple[int, Any], tuple[BaseChatModel, Runnable]] = OrderedDict()
_STRUCTURED_LOCK = threading.Lock()
_STRUCTURED_SIZE = 256


def structured_runnable(model: BaseChatModel, schema: type[T]) -> Runnable:
    """Return `model.with_structured_output(schema, include_raw=True)`, built once per pair.

    Building it binds the model and wraps a parser: a few hundred microseconds that every step
    paid three times. The entry holds the model, so its id cannot be reused while cached.
    """
    key = (id(model), schema)
    with _STRUCTURED_LOCK:
        found = _STRUCTURED.get(key)
        if found is not None and found[0] is model:
            _STRUCTURED.move_to_end(key)
            return found[1]
    runnable = model.with_structured_output(schema, include_raw=True)
    with _STRUCTURED_LOCK:
        _STRUCTURED[key] = (model, runnable)
        while len(_STRUCTURED) > _STRUCTURED_SIZE:
            _STRUCTURED.popitem(last=False)
    return runnable


CALL_SEED: contextvars.ContextVar[int | None] = contextvars.ContextVar("CALL_SEED", default=None)
"""The sampling seed of the call in progress (set by `call_structured(seed=...)`).

A context variable, not an argument threaded through LangChain's runnables (which drop unknown
keyword arguments): backends read it when they build the request (`LocalChatModel`, the OpenAI
client) and the LLM cache keys on it. Each asyncio task has its own value, so concurrent
episodes never see each other's seeds.
"""


async def call_structured(
    model: BaseChatModel,
    messages: list[BaseMessage],
    schema: type[T],
    *,
    retries: int = 1,
    transient_retries: int = 4,
    base_delay: float | None = None,
    seed: int | None = None,
) -> StructuredResult[T]:
    """Ask for a `schema` instance; never raise on model output (see the module's error policy).

    `seed` is this call's sampling seed (`nodes.draws.draw_seed`); None keeps the model's own.
    """
    token = CALL_SEED.set(seed)
    try:
        run = _Attempts(model, retries, transient_retries, base_delay)
        runnable = structured_runnable(model, schema)
        value = await _run_async(run, messages, runnable.ainvoke, _check_structured)
    finally:
        CALL_SEED.reset(token)
    return StructuredResult(value, value is not None, run.attempts, run.error_if(value), run.usage)


def call_structured_sync(
    model: BaseChatModel,
    messages: list[BaseMessage],
    schema: type[T],
    *,
    retries: int = 1,
    transient_retries: int = 4,
    base_delay: float | None = None,
) -> StructuredResult[T]:
    """Do what `call_structured` does, blocking, for code with no event loop."""
    run = _Attempts(model, retries, transient_retries, base_delay)
    runnable = structured_runnable(model, schema)
    value = _run_sync(run, messages, runnable.invoke, _check_structured)
    return StructuredResult(value, value is not None, run.attempts, run.error_if(value), run.usage)


async def call_text(
    model: BaseChatModel,
    messages: list[BaseMessage],
    *,
    retries: int = 1,
    transient_retries: int = 4,
    base_delay: float | None = None,
) -> TextResult:
    """Ask for free text with the same policy; an empty answer counts as malformed."""
    run = _Attempts(model, retries, transient_retries, base_delay)
    text = await _run_async(run, messages, model.ainvoke, _check_text)
    return TextResult(text, text is not None, run.attempts, run.error_if(text), run.usage)


# --- the factory ---------------------------------------------------------------------------------
