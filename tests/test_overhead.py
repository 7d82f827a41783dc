"""The per-step machinery stays inline and cheap without changing any result.

Covers what bench/graph_overhead.py measures: no worker-thread hops for the scripted model,
structured output, hashing embeddings or the step router; saves skip unchanged memories; the
faster hashing embedder gives the very same vectors.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from langchain_core.exceptions import OutputParserException
from pydantic import BaseModel

from memory.embeddings import HashingEmbeddings
from memory.stores import ActorMemory, CriticMemory, MacroMemory
from memory.vector import ENTRIES_FILE
from nodes.llm.calls import call_structured, structured_runnable
from nodes.llm.scripted import ScriptedChatModel


class Pick(BaseModel):
    value: int


def _reference_hashing(texts: list[str], dim: int) -> np.ndarray:
    """The original feature-by-feature hashing embedder, kept to pin the vectors."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        words = re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())
        feats = [(f"w:{w}", 1.0) for w in words]
        for w in words:
            padded = f"<{w}>"
            feats += [(f"c:{padded[i : i + 3]}", 0.5) for i in range(len(padded) - 2)]
        for feature, weight in feats or [("empty:", 1.0)]:
            digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
            h = int.from_bytes(digest, "little")
            out[row, h % dim] += (1.0 if (h >> 63) & 1 else -1.0) * weight
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).astype(np.float32)


def test_hashing_embeddings_match_the_feature_by_feature_reference() -> None:
    texts = ["", "  ", "?!", "Portal 2", "history: A | B\nepisode: A", "ÉÉ ﬁx 中文 x" * 20]
    for dim in (384, 7, 1):
        got = HashingEmbeddings(dim).embed(texts)
        np.testing.assert_array_equal(got, _reference_hashing(texts, dim))


def _no_worker_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every executor hop of the running loop."""
    hops: list[str] = []
    original = asyncio.BaseEventLoop.run_in_executor

    def spy(self, executor, func, *args):  # type: ignore[no-untyped-def]
        hops.append(repr(func)[:120])
        return original(self, executor, func, *args)

    monkeypatch.setattr(asyncio.BaseEventLoop, "run_in_executor", spy)
    return hops


def test_scripted_structured_calls_and_hashing_stay_on_the_loop(monkeypatch) -> None:
    hops = _no_worker_threads(monkeypatch)
    threads: set[int] = set()

    def responder(messages, schema):  # type: ignore[no-untyped-def]
        threads.add(threading.get_ident())
        return {"value": 3}

    model = ScriptedChatModel(responder=responder)

    async def main() -> tuple[int, int]:
        result = await call_structured(model, [], Pick)
        await HashingEmbeddings(16).aembed(["a text"])
        return result.value.value, threading.get_ident()  # type: ignore[union-attr]

    value, loop_thread = asyncio.run(main())
    assert value == 3 and threads == {loop_thread} and hops == []


def test_structured_runnable_is_built_once_and_keeps_langchains_contract() -> None:
    model = ScriptedChatModel(faults=["ok", "malformed"])
    runnable = structured_runnable(model, Pick)
    assert structured_runnable(model, Pick) is runnable
    assert structured_runnable(ScriptedChatModel(), Pick) is not runnable
    ok = runnable.invoke("hi")
    assert ok["parsed"] == Pick(value=0) and ok["parsing_error"] is None and ok["raw"].content
    bad = asyncio.run(runnable.ainvoke("hi"))
    assert bad["parsed"] is None and isinstance(bad["parsing_error"], OutputParserException)
    plain = ScriptedChatModel(faults=["malformed"]).with_structured_output(Pick)
    with pytest.raises(OutputParserException):
        plain.invoke("hi")


def test_graph_step_router_runs_inline(monkeypatch, tmp_path: Path) -> None:
    from graph import Context, build_graph

    hops = _no_worker_threads(monkeypatch)
    ctx = Context(
        dataset="synthetic",
        llm="scripted",
        embeddings="hashing",
        memory_dir=str(tmp_path / "mem"),
        learn=False,  # no end-of-episode save, which rightly runs in a thread
        max_steps=3,
    )
    build_graph("billp").invoke({"user_id": 0}, context=ctx)  # builds resources
    hops.clear()
    state = asyncio.run(build_graph("billp").ainvoke({"user_id": 1}, context=ctx))
    assert state["done"] and hops == []


def _stamp(folder: Path) -> tuple[int, int]:
    st = (folder / ENTRIES_FILE).stat()
    return st.st_ino, st.st_mtime_ns


def test_saves_skip_unchanged_stores_and_rewrite_missing_files(tmp_path: Path) -> None:
    emb = HashingEmbeddings(16)
    actor, critic = ActorMemory(emb, tmp_path / "actor"), CriticMemory(emb, tmp_path / "critic")
    macro = MacroMemory(emb, tmp_path / "macro")
    for store in (actor, critic, macro):
        store.save()  # a new store writes its (empty) files once
    assert all((tmp_path / n / ENTRIES_FILE).is_file() for n in ("actor", "critic", "macro"))
    before = {n: _stamp(tmp_path / n) for n in ("actor", "critic", "macro")}
    actor.record("s0", "7", 1.0)
    for store in (actor, critic, macro):
        store.save()
    assert _stamp(tmp_path / "actor") != before["actor"]
    assert _stamp(tmp_path / "critic") == before["critic"]  # unchanged: not rewritten
    reopened = ActorMemory(emb, tmp_path / "actor")
    assert len(reopened) == 1
    stamp = _stamp(tmp_path / "actor")
    reopened.save()  # just read, unchanged: nothing to write
    assert _stamp(tmp_path / "actor") == stamp
    (tmp_path / "critic" / ENTRIES_FILE).unlink()  # e.g. a snapshot restore replaced the folder
    critic.save()
    assert (tmp_path / "critic" / ENTRIES_FILE).is_file()
    assert len(CriticMemory(emb, tmp_path / "critic")) == 0
