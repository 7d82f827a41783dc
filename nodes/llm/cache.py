"""Cache LLM answers on disk, so a re-run or a resumed run never pays for the same call twice.

`Context.llm_cache` names the SQLite file; `nodes.resources` then builds the run's model as a
`CachedChatModel` around the backend (`cached_model`), so nodes do not know it is there and no
shared object is ever swapped. A key is the sha256 of the model's identity (spec, weights file,
temperature, and the sampling seed when temperature > 0), the messages (type and content), the
requested output schema and any call arguments. Values are JSON in one SQLite table (no pickle):
the raw AI message as LangChain serializes it, and for structured calls the parsed object and any
parsing error, so a cached answer is replayed exactly as the first one was received, token
counts included: results do not depend on whether a call was cached, only the wall time does.

Kept instead of LangChain's `BaseCache`/`SQLiteCache`: those key on the model's serialized
parameters and the prompt, not on the per-call sampling seed (a context variable, `CALL_SEED`),
and cannot count hits per episode, which every results table reports.

The cache is on by default in experiments. At temperature > 0 an answer is a function of the
prompt and the sampling seed, and every call's seed is derived from (run seed, user, step, role)
(`nodes.draws`), so the key includes that per-call seed: a repeat of the same call replays its
answer, while another user's or step's call draws its own.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from pydantic import BaseModel, ConfigDict

from nodes.llm.calls import CALL_SEED

CACHE_FILE = "llm_cache.sqlite"


@dataclass
class HitCounter:
    """Count the cached answers served to one episode (set per asyncio task)."""

    hits: int = 0
    misses: int = 0


_COUNTER: contextvars.ContextVar[HitCounter | None] = contextvars.ContextVar(
    "billp_cache_counter", default=None
)


@contextmanager
def count_hits() -> Iterator[HitCounter]:
    """Count hits and misses of the calls made inside this block (and tasks it starts)."""
    counter = HitCounter()
    token = _COUNTER.set(counter)
    try:
        yield counter
    finally:
        _COUNTER.reset(token)


def _note(hit: bool) -> None:
    counter = _COUNTER.get()
    if counter is not None:
        if hit:
            counter.hits += 1
        else:
            counter.misses += 1


class LLMCache:
    """A key -> JSON store in one SQLite file, safe across threads and processes (WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses "
                "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
            )
            self._db.commit()

    def get(self, key: str) -> Any | None:
        """Return the stored value of `key`, or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        """Store `value` (JSON) under `key`, committed at once so a crash keeps it."""
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                (key, text, time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def model_identity(spec: str, model: BaseChatModel, temperature: float, seed: int | None) -> str:
    """Return what, besides the prompt, determines a model's answer."""
    parts = {
        "spec": spec,
        "weights": str(getattr(model, "model_path", "") or ""),
        "model": str(getattr(model, "model_name", "") or ""),
        "temperature": float(temperature),
        # At temperature 0 the seed changes nothing, so seeds share their cached answers.
        "seed": seed if temperature > 0 else None,
    }
    return json.dumps(parts, sort_keys=True)


def _schema_id(schema: Any) -> Any:
    if schema is None:
        return None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return {"name": schema.__name__, "schema": schema.model_json_schema()}
    return schema if isinstance(schema, dict) else repr(schema)


def _restore_message(data: dict[str, Any]) -> BaseMessage:
    message = messages_from_dict([data])[0]
    message.response_metadata = {**(message.response_metadata or {}), "cache_hit": True}
    return message


class CachedChatModel(BaseChatModel):
    """Answer from the cache when it can, else ask `inner` and remember its answer."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseChatModel
    store: LLMCache
    """Named `store`: BaseChatModel's own `cache` field means LangChain's global cache."""
    identity: str

    @property
    def _llm_type(self) -> str:
        return f"cached-{self.inner._llm_type}"

    def key(self, messages: Sequence[BaseMessage], schema: Any = None, **kwargs: Any) -> str:
        """Return the cache key of a call."""
        payload = {
            "model": self.identity,
            "call_seed": CALL_SEED.get(),  # the derived per-call seed: a different draw
            "messages": [[m.type, m.content] for m in messages],
            "schema": _schema_id(schema),
            "kwargs": {k: repr(v) for k, v in sorted(kwargs.items())},
        }
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=repr)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _lookup_text(self, key: str) -> ChatResult | None:
        hit = self.store.get(key)
        _note(hit is not None)
        if hit is None:
            return None
        return ChatResult(generations=[ChatGeneration(message=_restore_message(hit))])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        key = self.key(messages, None, stop=stop, **kwargs)
        if (cached := self._lookup_text(key)) is not None:
            return cached
        message = self.inner.invoke(messages, stop=stop, **kwargs)
        self.store.put(key, message_to_dict(message))
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        key = self.key(messages, None, stop=stop, **kwargs)
        if (cached := self._lookup_text(key)) is not None:
            return cached
        message = await self.inner.ainvoke(messages, stop=stop, **kwargs)
        self.store.put(key, message_to_dict(message))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def with_structured_output(
        self, schema: Any = None, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable:
        """Return the inner model's structured runnable behind the cache."""
        inner = self.inner.with_structured_output(schema, include_raw=True, **kwargs)

        def as_messages(value: Any) -> list[BaseMessage]:
            if isinstance(value, list) and all(isinstance(m, BaseMessage) for m in value):
                return value
            return self._convert_input(value).to_messages()

        def restore(hit: dict[str, Any]) -> dict[str, Any]:
            parsed = hit["parsed"]
            if parsed is not None and isinstance(schema, type) and issubclass(schema, BaseModel):
                parsed = schema.model_validate(parsed)
            error = hit["parsing_error"]
            return {
                "raw": _restore_message(hit["raw"]) if hit["raw"] else None,
                "parsed": parsed,
                "parsing_error": OutputParserException(error) if error else None,
            }

        def store(key: str, out: dict[str, Any]) -> None:
            parsed = out.get("parsed")
            raw, error = out.get("raw"), out.get("parsing_error")
            self.store.put(
                key,
                {
                    "raw": message_to_dict(raw) if isinstance(raw, BaseMessage) else None,
                    "parsed": parsed.model_dump(mode="json")
                    if isinstance(parsed, BaseModel)
                    else parsed,
                    "parsing_error": str(error) if error is not None else None,
                },
            )

        def finish(out: dict[str, Any]) -> Any:
            if include_raw:
                return out
            if out.get("parsing_error") is not None:
                raise out["parsing_error"]
            return out.get("parsed")

        def lookup(value: Any) -> tuple[list[BaseMessage], str, dict | None]:
            messages = as_messages(value)
            key = self.key(messages, schema, **kwargs)
            hit = self.store.get(key)
            _note(hit is not None)
            return messages, key, None if hit is None else restore(hit)

        def invoke(value: Any, config: RunnableConfig) -> Any:
            messages, key, out = lookup(value)
            if out is None:
                out = inner.invoke(messages, config)
                store(key, out)
            return finish(out)

        async def ainvoke(value: Any, config: RunnableConfig) -> Any:
            messages, key, out = lookup(value)
            if out is None:
                out = await inner.ainvoke(messages, config)
                store(key, out)
            return finish(out)

        return RunnableLambda(invoke, afunc=ainvoke, name="cached_structured_output")


_STORES: dict[str, LLMCache] = {}
_STORES_LOCK = threading.Lock()


def open_store(path: str | Path) -> LLMCache:
    """Return the process's one open cache of a file (episodes of a run share it)."""
    key = str(Path(path).resolve())
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = LLMCache(key)
        return _STORES[key]


def close_stores() -> None:
    """Close every open cache file (a fresh process in tests; the end of a run)."""
    with _STORES_LOCK:
        stores = list(_STORES.values())
        _STORES.clear()
    for store in stores:
        store.close()


def cached_model(
    model: BaseChatModel, spec: str, path: str | Path, temperature: float, seed: int | None
) -> CachedChatModel:
    """Return `model` behind the answer cache in file `path` (how `nodes.resources` builds it)."""
    identity = model_identity(spec, model, temperature, seed)
    return CachedChatModel(inner=model, store=open_store(path), identity=identity)
