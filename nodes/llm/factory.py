"""Build chat models from a spec string, once per process per spec and settings.

Specs: `local[:PATH.gguf]` (embedded llama.cpp model), `openai:MODEL` (any OpenAI-compatible
endpoint) and `scripted[:NAME][?faults=...]` (a deterministic test double, never reported as an
LLM result). `forget_models` is what a fresh process would know: no clients, no negotiated
structured-output modes, no endpoint health.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from langchain_core.language_models import BaseChatModel

from nodes.llm.calls import ENV_TIMEOUT

_SPEC_FORMS = (
    "'local', 'local:/path/model.gguf', 'openai:MODEL', 'scripted', 'scripted:NAME', "
    "'scripted[:NAME]?faults=malformed,schema,...'"
)
_CACHE: dict[tuple, BaseChatModel] = {}
_CACHE_LOCK = threading.Lock()


def make_chat_model(
    spec: str, *, temperature: float = 0.5, seed: int | None = None, **kwargs: Any
) -> BaseChatModel:
    """Return the chat model named by `spec`, built once per process per spec and settings.

    `kwargs` go to the backend: for `openai:` e.g. `base_url`, `api_key`, `timeout`, `max_tokens`
    (explicit values win over OPENAI_BASE_URL / OPENAI_API_KEY); for `local` e.g. `n_ctx`,
    `max_tokens`; for `scripted` the `ScriptedChatModel` fields. A scripted spec may name its
    fault cycle (`scripted?faults=malformed,schema`), so a `Context` alone sets it up.
    """
    base, _, query = spec.strip().partition("?")
    kind, _, arg = base.partition(":")
    if kind not in {"local", "openai", "scripted"} or (kind == "openai" and not arg):
        raise ValueError(f"unknown LLM spec {spec!r}; valid forms: {_SPEC_FORMS}")
    if query:
        name, _, faults = query.partition("=")
        if kind != "scripted" or name != "faults" or "faults" in kwargs:
            raise ValueError(f"unknown LLM spec {spec!r}; valid forms: {_SPEC_FORMS}")
        kwargs = {**kwargs, "faults": tuple(f for f in faults.split(",") if f)}
    key = (
        spec.strip(),
        float(temperature),
        seed,
        tuple(sorted((k, repr(v)) for k, v in kwargs.items())),
        _environment_key(kind),
    )
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _build(kind, arg, temperature, seed, kwargs)
        return _CACHE[key]


def forget_models() -> None:
    """Forget built clients, negotiated output modes and endpoint health (a fresh process)."""
    from nodes.llm.health import reset_health
    from nodes.llm.modes import reset_negotiations

    with _CACHE_LOCK:
        _CACHE.clear()
    reset_negotiations()
    reset_health()


def _environment_key(kind: str) -> tuple[str, ...]:
    """Return what the environment contributes to a client, so changing it builds a new one.

    The key is hashed: a cache key must never hold the API key itself.
    """
    if kind != "openai":
        return ()
    names = ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY", ENV_TIMEOUT)
    raw = "\0".join(os.environ.get(n, "") for n in names)
    return (hashlib.sha256(raw.encode()).hexdigest(),)


def _build(
    kind: str, arg: str, temperature: float, seed: int | None, kwargs: dict
) -> BaseChatModel:
    if kind == "scripted":
        from nodes.llm.scripted import ScriptedChatModel, get_scripted_responder

        if arg:
            get_scripted_responder(arg)  # fail now, not on the first call, if NAME is unknown
        return ScriptedChatModel(responder_name=arg or None, **kwargs)
    if kind == "local":
        from nodes.llm.local import LocalChatModel, find_local_model

        path = find_local_model(arg or None)
        return LocalChatModel(model_path=str(path), temperature=temperature, seed=seed, **kwargs)
    from nodes.llm.openai_chat import make_openai

    return make_openai(arg, temperature, seed, kwargs)
