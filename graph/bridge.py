"""Drive an async iterator from sync code, also under a running event loop (a notebook).

Hand-written: asyncio offers no sync driver for an async iterator that works under a running
loop. One private loop in a daemon thread serves every call, kept for the whole process, since
LLM clients cache connections bound to the loop that opened them (httpx): a loop per call breaks
them on the next call. The iterator runs as one task, so its context variables behave as in
`async for`; items are handed over one at a time, so the sync side stays lazy like `stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_ITEM, _DONE, _ERROR = "item", "done", "error"


def bridge_loop() -> asyncio.AbstractEventLoop:
    """Return the private loop, started in its daemon thread on first use."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="billp-bridge", daemon=True)
            thread.start()
            _loop = loop
        return _loop


def _forget_loop() -> None:
    """In a forked child the loop's thread does not exist: start a new one when needed."""
    global _loop, _lock
    _loop, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_loop)


async def _produce(source: AsyncIterator[T], asks: asyncio.Queue, out: queue.SimpleQueue) -> None:
    """Advance `source` once per ask (True); stop on False; always close it."""
    try:
        while await asks.get():
            try:
                item = await anext(source)
            except StopAsyncIteration:
                out.put((_DONE, None))
                return
            out.put((_ITEM, item))
    except BaseException as exc:  # handed to the sync side, which raises it
        out.put((_ERROR, exc))
        if not isinstance(exc, Exception):
            raise
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def drive(source: AsyncIterator[T]) -> Iterator[T]:
    """Yield the items of `source`, produced on the private loop whatever loop the caller runs.

    Calling it from a coroutine running on the private loop itself would wait on the loop it
    blocks; that raises instead (`await` the async entry point there).
    """
    loop = bridge_loop()
    try:
        running: Any = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError(
            "a sync graph call (invoke/stream) from an async node would block its own event "
            "loop; use `await graph.ainvoke(...)` / `graph.astream(...)` there"
        )
    asks: asyncio.Queue[bool] = asyncio.Queue()
    out: queue.SimpleQueue = queue.SimpleQueue()
    # The caller's context variables (tracing, a parent run's config) follow the iterator.
    task = contextvars.copy_context().run(
        asyncio.run_coroutine_threadsafe, _produce(aiter(source), asks, out), loop
    )
    finished = False
    try:
        while True:
            loop.call_soon_threadsafe(asks.put_nowait, True)
            kind, value = out.get()
            if kind == _ITEM:
                yield value
                continue
            finished = True
            if kind == _ERROR:
                raise value
            return
    except GeneratorExit:  # the consumer stopped early: the producer closes the source
        loop.call_soon_threadsafe(asks.put_nowait, False)
        raise
    except BaseException:
        if not finished:  # interrupted while waiting (Ctrl-C): cancel the producer
            task.cancel()
        raise
    finally:
        with contextlib.suppress(BaseException):  # raised above already, or cancelled
            task.result()


def run(awaitable: Awaitable[T]) -> T:
    """Return the result of `awaitable`, awaited on the private loop (one hand-over in all)."""

    async def once() -> AsyncIterator[T]:
        yield await awaitable

    (result,) = drive(once())
    return result
