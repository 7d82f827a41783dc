"""Stop a run at once when an endpoint fails every request the same way before it ever answered.

Retries with backoff suit scattered faults. A server that cannot serve at all (the model failed
to load, a wrong port, a proxy answering 502) fails every request the same way: each call would
sleep through its retries, then fall back, and the run would end "ok" with the fallbacks'
numbers. So, per (endpoint, model): while no request has been answered yet, the last
`FAIL_FAST_AFTER` failures being the same (HTTP status and server message, digits ignored; or
the same connection error) is a configuration problem, reported in one line that names the
endpoint, the model, the structured-output mode tried and the server's message (never the key).
Once any request has been answered, the endpoint is known to work and the ordinary retry policy
applies to whatever goes wrong later. Timeouts are not counted: a slow server is not a broken one.

Only OpenAI-compatible endpoints are watched; the embedded model and the scripted double raise
their own errors.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import openai

FAIL_FAST_AFTER = 3
MESSAGE_CHARS = 240


@dataclass
class _Health:
    answered: bool = False
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=FAIL_FAST_AFTER))


_HEALTH: dict[tuple[str, str], _Health] = {}
_LOCK = threading.Lock()


def unwrap(model: Any) -> Any:
    """Return the backend model under wrappers that keep it as `.inner` (the answer cache)."""
    seen = 0
    while getattr(model, "inner", None) is not None and seen < 8:
        model, seen = model.inner, seen + 1
    return model


def endpoint_of(model: Any) -> tuple[str, str] | None:
    """Return (base URL, model name) of an OpenAI-compatible client, or None for other models.

    Remembered per model object: every call asks, and a missing attribute of a pydantic model
    costs an exception each time.
    """
    found = _ENDPOINTS.get(id(model))
    if found is not None and found[0] is model:
        return found[1]
    inner = unwrap(model)
    endpoint = None
    if hasattr(inner, "openai_api_base"):
        base = str(getattr(inner, "openai_api_base", None) or "https://api.openai.com/v1")
        endpoint = base, str(getattr(inner, "model_name", "") or "?")
    if len(_ENDPOINTS) >= 256:
        _ENDPOINTS.clear()
    _ENDPOINTS[id(model)] = (model, endpoint)  # holds the model: its id is not reused meanwhile
    return endpoint


_ENDPOINTS: dict[int, tuple[Any, tuple[str, str] | None]] = {}


def server_message(exc: BaseException) -> str:
    """Return what the server said (the error body's message), else the exception's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        text = inner.get("message") or inner.get("detail") or body
    else:
        text = body or getattr(exc, "message", None) or str(exc)
    return " ".join(str(text).split())


def one_line(text: str, model: Any = None, limit: int = MESSAGE_CHARS) -> str:
    """Return `text` on one line, shortened, with the model's API key (if any) masked."""
    text = " ".join(str(text).split())
    key = getattr(unwrap(model), "openai_api_key", None)
    secret = key.get_secret_value() if hasattr(key, "get_secret_value") else key
    if secret and len(str(secret)) >= 4:
        text = text.replace(str(secret), "***")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _signature(exc: BaseException) -> str | None:
    if isinstance(exc, openai.APITimeoutError):
        return None
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: " + re.sub(r"\d+", "#", server_message(exc))
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return f"connection: {type(cause).__name__}"
    return None


def _reason(exc: BaseException, model: Any) -> str:
    if isinstance(exc, openai.APIStatusError):
        said = one_line(server_message(exc), model)
        return f"HTTP {exc.status_code}: {said}; is the model loaded and its name right?"
    cause = exc.__cause__ or exc
    said = one_line(f"{type(cause).__name__}: {cause}", model)
    return f"cannot connect ({said}); is the server running and OPENAI_BASE_URL right?"


def note_answer(model: Any) -> None:
    """Record that the endpoint answered a request (even with unusable content)."""
    key = endpoint_of(model)
    if key is None:
        return
    health = _HEALTH.get(key)
    if health is None or not health.answered:
        with _LOCK:
            _HEALTH.setdefault(key, _Health()).answered = True


def note_failure(model: Any, exc: BaseException) -> str | None:
    """Record a failed request; return the one-line reason to stop the run, or None to go on."""
    key = endpoint_of(model)
    signature = _signature(exc)
    if key is None or signature is None:
        return None
    with _LOCK:
        health = _HEALTH.setdefault(key, _Health())
        if health.answered:
            return None
        health.recent.append(signature)
        uniform = len(health.recent) == FAIL_FAST_AFTER and len(set(health.recent)) == 1
    if not uniform:
        return None
    mode = getattr(exc, "billp_mode", "text")
    return (
        f"{key[0]} (model {key[1]}, structured-output mode {mode}) failed its first "
        f"{FAIL_FAST_AFTER} requests the same way: {_reason(exc, model)}"
    )


def reset_health() -> None:
    """Forget every endpoint (a new run in the same process, and tests)."""
    with _LOCK:
        _HEALTH.clear()
        _ENDPOINTS.clear()
