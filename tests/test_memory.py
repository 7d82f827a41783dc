"""VectorMemory correctness, durability and concurrency; the BiLLP stores and their thresholds."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memory.embeddings import HashingEmbeddings
from memory.stores import ActorHint, ActorMemory, CriticHint, CriticMemory, MacroMemory
from memory.vector import (
    ENTRIES_FILE,
    INDEX_FILE,
    MemoryCorruptError,
    ReadOnlyMemoryError,
    VectorMemory,
)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    m = rng.standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _filled(n: int = 300, dim: int = 16, seed: int = 0) -> tuple[VectorMemory, np.ndarray]:
    vecs = _unit(np.random.default_rng(seed), n, dim)
    mem = VectorMemory(dim)
    mem.add([f"k{i}" for i in range(n)], vecs, [{"i": i} for i in range(n)])
    return mem, vecs


# --- VectorMemory -------------------------------------------------------------------------


def test_search_matches_brute_force() -> None:
    mem, vecs = _filled()
    queries = _unit(np.random.default_rng(1), 7, 16)
    scores = queries @ vecs.T
    for q, hits in enumerate(mem.search(queries, 5)):
        best = np.argsort(-scores[q])[:5]
        assert [h.key for h in hits] == [f"k{i}" for i in best]
        assert [h.payload for h in hits] == [{"i": int(i)} for i in best]
        np.testing.assert_allclose([h.score for h in hits], scores[q, best], atol=1e-5)
        for h in hits:
            assert h.sq_l2 == pytest.approx(max(0.0, 2 - 2 * h.score))
    (own,) = mem.search(vecs[42], 1)  # a 1-D query; a stored vector finds itself at distance 0
    assert own[0].key == "k42" and own[0].sq_l2 < 1e-5


def test_search_edges() -> None:
    empty = VectorMemory(4)
    assert empty.search(np.eye(4, dtype=np.float32)[:2], 3) == [[], []]
    mem, _ = _filled(n=3, dim=4)
    assert len(mem.search(np.eye(4, dtype=np.float32)[0], 10)[0]) == 3
    with pytest.raises(ValueError, match="k must be positive"):
        mem.search(np.eye(4, dtype=np.float32)[0], 0)
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        mem.search(np.ones(5, dtype=np.float32), 1)


def test_add_validates_its_input() -> None:
    mem, vecs = _filled(n=3, dim=4)
    with pytest.raises(KeyError, match="already stored"):
        mem.add(["k1"], vecs[:1], [None])
    with pytest.raises(KeyError, match="twice"):
        mem.add(["x", "x"], vecs[:2], [1, 2])
    with pytest.raises(ValueError, match="L2-normalized"):
        mem.add(["y"], 2 * vecs[:1], [None])
    with pytest.raises(ValueError, match="NaN"):
        mem.add(["y"], np.full((1, 4), np.nan, np.float32), [None])
    with pytest.raises(TypeError, match="not plain JSON"):
        mem.add(["y"], vecs[:1], [{"bad": object()}])
    with pytest.raises(TypeError, match="not plain JSON"):
        mem.add(["y"], vecs[:1], [{"v": float("nan")}])
    with pytest.raises(ValueError, match="2 keys, 1 vectors"):
        mem.add(["y", "z"], vecs[:1], [1, 2])
    assert len(mem) == 3  # nothing half-added


def test_upsert_replaces_payload_without_a_duplicate_vector() -> None:
    mem, vecs = _filled(n=10, dim=8)
    mem.upsert("k3", vecs[3], {"new": True})
    assert len(mem) == 10
    assert mem.get("k3") == {"new": True}
    hits = mem.search(vecs[3], 2)[0]
    assert hits[0].key == "k3" and hits[0].payload == {"new": True}
    assert hits[1].key != "k3"
    mem.upsert("fresh", vecs[0], [1, 2])
    assert len(mem) == 11 and mem.get("fresh") == [1, 2] and mem.get("missing") is None


def test_get_returns_a_copy() -> None:
    mem, _ = _filled(n=2, dim=4)
    mem.get("k0")["i"] = 99  # type: ignore[index]
    assert mem.get("k0") == {"i": 0}


def test_save_load_round_trip(tmp_path: Path) -> None:
    mem, vecs = _filled()
    mem.meta = {"kind": "test"}
    mem.upsert("k7", vecs[7], {"text": "déjà vu", "nested": [1, {"a": None}]})
    mem.save(tmp_path / "m")
    back = VectorMemory.load(tmp_path / "m", dim=16)
    assert len(back) == len(mem) and back.keys() == mem.keys() and back.meta == {"kind": "test"}
    assert back.get("k7") == {"text": "déjà vu", "nested": [1, {"a": None}]}
    q = _unit(np.random.default_rng(5), 4, 16)
    assert back.search(q, 3) == mem.search(q, 3)
    back.add(["extra"], q[:1], [0])  # keeps growing after a load
    back.save()
    assert len(VectorMemory.load(tmp_path / "m")) == len(mem) + 1


def test_load_of_a_missing_folder_gives_an_empty_memory(tmp_path: Path) -> None:
    mem = VectorMemory.load(tmp_path / "nothing", dim=8)
    assert len(mem) == 0 and mem.path == tmp_path / "nothing"
    with pytest.raises(ValueError, match="pass dim"):
        VectorMemory.load(tmp_path / "nothing")


def _saved(tmp_path: Path) -> Path:
    mem, _ = _filled(n=50, dim=8)
    return mem.save(tmp_path / "m")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate_index", "does not match the sha256"),
        ("drop_index", "index.faiss is missing"),
        ("drop_entries", "entries.json is missing"),
        ("truncate_entries", "does not parse"),
        ("wrong_count", "disagree"),
        ("other_index", "does not match the sha256"),
    ],
)
def test_damaged_memory_is_refused_with_a_recovery_hint(
    tmp_path: Path, damage: str, message: str
) -> None:
    folder = _saved(tmp_path)
    index, entries = folder / INDEX_FILE, folder / ENTRIES_FILE
    if damage == "truncate_index":
        index.write_bytes(index.read_bytes()[:100])
    elif damage == "drop_index":
        index.unlink()
    elif damage == "drop_entries":
        entries.unlink()
    elif damage == "truncate_entries":
        entries.write_bytes(entries.read_bytes()[:200])
    elif damage == "wrong_count":
        data = json.loads(entries.read_text())
        data["count"] -= 1
        data["keys"].pop()
        data["payloads"].pop()
        entries.write_text(json.dumps(data))
    else:  # a crash between the two renames: new index, old sidecar
        mem, _ = _filled(n=51, dim=8, seed=3)
        mem.save(tmp_path / "other")
        index.write_bytes((tmp_path / "other" / INDEX_FILE).read_bytes())
    with pytest.raises(MemoryCorruptError, match=message) as err:
        VectorMemory.load(folder, dim=8)
    assert str(folder) in str(err.value) and "delete it" in str(err.value)


def test_load_with_another_dim_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dim-8 vectors but dim 16"):
        VectorMemory.load(_saved(tmp_path), dim=16)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    dim, per, workers = 16, 200, 8
    vecs = _unit(np.random.default_rng(7), per * workers, dim)
    mem = VectorMemory(dim, tmp_path / "m")
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for j in range(per):
                i = w * per + j
                if j % 2:
                    mem.add([f"k{i}"], vecs[i], [{"i": i}])
                else:
                    mem.upsert(f"k{i}", vecs[i], {"i": i})
                mem.update("shared", lambda old, w=w: {**(old or {}), str(w): 1}, vecs[0])
                mem.search(vecs[i], 3)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    mem.save()
    back = VectorMemory.load(tmp_path / "m", dim)
    assert len(back) == per * workers + 1
    assert back.get("shared") == {str(w): 1 for w in range(workers)}
    hits = back.search(vecs, 1)
    assert all(h[0].key == f"k{i}" and h[0].payload == {"i": i} for i, h in enumerate(hits))


def test_read_only_refuses_writes_and_snapshot_is_frozen(tmp_path: Path) -> None:
    mem, vecs = _filled(n=5, dim=4)
    mem.save(tmp_path / "m")
    frozen = VectorMemory.load(tmp_path / "m", read_only=True)
    for write in (
        lambda: frozen.add(["new"], vecs[:1], [0]),
        lambda: frozen.upsert("k1", vecs[1], 0),
        lambda: frozen.save(),
    ):
        with pytest.raises(ReadOnlyMemoryError, match="read-only"):
            write()
    assert frozen.get("k1") == {"i": 1} and len(frozen.search(vecs[0], 2)[0]) == 2
    frozen.save(tmp_path / "export")  # exporting a copy elsewhere is allowed
    assert len(VectorMemory.load(tmp_path / "export")) == 5
    snap = mem.snapshot()
    mem.upsert("k0", vecs[0], "changed")
    assert snap.get("k0") == {"i": 0} and snap.read_only
    with pytest.raises(ReadOnlyMemoryError):
        snap.upsert("k0", vecs[0], 1)


# --- stores, with vectors at exactly known distances ----------------------------------------


class _Fixed:
    """Embed each named text as cos(t)*e0 + sin(t)*e_j, so its squared L2 to e0 is chosen."""

    spec = "fixed:8"
    dim = 8

    def __init__(self) -> None:
        self.table: dict[str, np.ndarray] = {}
        self.calls = 0

    def place(self, text: str, sq_l2: float, axis: int = 1) -> None:
        cos = 1 - sq_l2 / 2  # |u - v|^2 = 2 - 2 cos on unit vectors
        v = np.zeros(self.dim, np.float32)
        v[0], v[axis] = cos, math.sqrt(1 - cos * cos)
        self.table[text] = v

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, 8), np.float32)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)


# Squared L2 distance of each test text to "s0", the one stored state.
DISTANCES = {
    "s0": 0.0,
    "near": 0.005,
    "gap_low": 0.02,
    "gap_high": 0.29,
    "band_low": 0.31,
    "band_mid": 0.4,
    "band_high": 0.49,
    "beyond": 0.51,
    "far": 1.5,
}


@pytest.fixture
def fixed() -> _Fixed:
    emb = _Fixed()
    for name, d in DISTANCES.items():
        emb.place(name, d)
    return emb


def test_actor_hint_fires_only_near_or_in_the_band(fixed: _Fixed) -> None:
    actor = ActorMemory(fixed)
    assert actor.hint("s0") is None  # empty memory
    actor.record("s0", "Portal", 1.0)
    for text in ("s0", "near", "band_low", "band_mid", "band_high"):
        hint = actor.hint(text)
        assert isinstance(hint, ActorHint), text
        assert hint.labels == {"Portal": 1} and hint.state == "s0"
        assert hint.sq_l2 == pytest.approx(DISTANCES[text], abs=1e-4)
    for text in ("gap_low", "gap_high", "beyond", "far"):
        assert actor.hint(text) is None, text
    assert ActorMemory(fixed, band=None).hint("band_mid") is None


def test_actor_labels_merge_and_overwrite_without_re_embedding(fixed: _Fixed) -> None:
    actor = ActorMemory(fixed)
    actor.record("s0", "A", 0.0)  # advantage 0 counts as good
    calls = fixed.calls
    actor.record("s0", "B", -0.5)
    actor.record("s0", "A", -2.0)
    assert fixed.calls == calls  # a known state is never embedded again
    assert len(actor) == 1
    assert actor.hint("s0").labels == {"A": -1, "B": -1}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="finite"):
        actor.record("s0", "C", float("nan"))


def test_critic_hint_only_on_a_near_exact_match(fixed: _Fixed) -> None:
    critic = CriticMemory(fixed)
    critic.record("s0", 2.5)
    critic.record("s0", 3.0)
    assert len(critic) == 1
    assert critic.hint("s0") == CriticHint(3.0, pytest.approx(0.0, abs=1e-5))
    value, sq_l2 = critic.hint("near")  # type: ignore[misc]
    assert value == 3.0 and sq_l2 == pytest.approx(0.005, abs=1e-4)
    for text in ("gap_low", "band_mid", "far"):
        assert critic.hint(text) is None, text


def test_macro_returns_top_two_or_all(fixed: _Fixed) -> None:
    macro = MacroMemory(fixed)
    assert macro.retrieve("s0") == []
    macro.add("R far", "far")
    assert macro.retrieve("s0") == ["R far"]
    macro.add("R mid", "band_mid", meta={"user": 7})
    assert macro.retrieve("s0") == ["R mid", "R far"]
    macro.add("R near", "near")
    macro.add("R near", "near")  # the same reflection again is not a duplicate
    assert len(macro) == 3
    assert macro.retrieve("s0") == ["R near", "R mid"]
    assert macro.retrieve("s0", k=5) == ["R near", "R mid", "R far"]


def test_async_variants_agree_with_sync(fixed: _Fixed) -> None:
    async def run() -> tuple:
        macro, actor, critic = MacroMemory(fixed), ActorMemory(fixed), CriticMemory(fixed)
        await asyncio.gather(
            macro.aadd("R1", "near"),
            actor.arecord("s0", "X", 1.0),
            critic.arecord("s0", -1.0),
        )
        return (
            await macro.aretrieve("s0"),
            await actor.ahint("near"),
            await critic.ahint("s0"),
        )

    reflections, actor_hint, critic_hint = asyncio.run(run())
    assert reflections == ["R1"]
    assert actor_hint is not None and actor_hint.labels == {"X": 1}
    assert critic_hint is not None and critic_hint.value == -1.0


def test_stores_persist_and_check_what_opens_them(tmp_path: Path, fixed: _Fixed) -> None:
    actor = ActorMemory(fixed, tmp_path / "actor")
    actor.record("s0", "A", 1.0)
    actor.save()
    again = ActorMemory(fixed, tmp_path / "actor")
    assert len(again) == 1 and again.hint("near").labels == {"A": 1}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="actor memory embedded with 'fixed:8'"):
        CriticMemory(fixed, tmp_path / "actor")
    other = HashingEmbeddings(8)
    with pytest.raises(ValueError, match="use the same embeddings spec"):
        ActorMemory(other, tmp_path / "actor")


def test_read_only_stores_refuse_writes_and_save_nothing(tmp_path: Path, fixed: _Fixed) -> None:
    critic = CriticMemory(fixed, tmp_path / "critic")
    critic.record("s0", 1.0)
    critic.save()
    before = (tmp_path / "critic" / ENTRIES_FILE).read_bytes()
    frozen = CriticMemory(fixed, tmp_path / "critic", read_only=True)
    calls = fixed.calls
    with pytest.raises(ReadOnlyMemoryError, match="frozen evaluation"):
        frozen.record("far", 2.0)
    assert fixed.calls == calls  # refused before any embedding work
    assert frozen.hint("s0") is not None and frozen.read_only
    frozen.save()
    assert (tmp_path / "critic" / ENTRIES_FILE).read_bytes() == before
    macro = MacroMemory(fixed, read_only=True)
    with pytest.raises(ReadOnlyMemoryError):
        macro.add("R", "s0")
    with pytest.raises(ReadOnlyMemoryError):
        ActorMemory(fixed, read_only=True).record("s0", "A", 1.0)


def test_macro_with_hashing_finds_the_most_similar_history(tmp_path: Path) -> None:
    macro = MacroMemory(HashingEmbeddings(), tmp_path / "macro")
    macro.add("Mix puzzles in early.", "Portal; Portal 2; The Talos Principle; Braid")
    macro.add("Avoid long RPGs.", "Skyrim; Fallout 4; The Witcher 3; Dragon Age")
    macro.add("Sports fans leave fast.", "FIFA 23; NBA 2K23; Madden NFL 23")
    macro.save()
    reopened = MacroMemory(HashingEmbeddings(), tmp_path / "macro")
    assert reopened.retrieve("Portal 2; Braid; Fez", k=1) == ["Mix puzzles in early."]


def test_concurrent_actor_records_on_one_state_all_survive() -> None:
    actor = ActorMemory(HashingEmbeddings(32))
    labels = [f"item{i}" for i in range(40)]

    def record(chunk: list[str]) -> None:
        for label in chunk:
            actor.record("the same state", label, 1.0 if label[-1] in "02468" else -1.0)

    threads = [threading.Thread(target=record, args=(labels[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hint = actor.hint("the same state")
    assert len(actor) == 1 and hint is not None
    assert hint.labels == {x: 1 if x[-1] in "02468" else -1 for x in labels}


def test_entries_file_round_trips_any_text_key_and_payload(tmp_path: Path) -> None:
    """Keys and payloads are spliced into the entries file as encoded: quotes, newlines, JSON
    punctuation, non-ASCII and even a lone surrogate must load back exactly."""
    lone = json.loads('"x\\ud83d"')  # valid JSON text, not encodable as UTF-8
    keys = ['say "hi"\n]', '",\n"keys": []', "café ☕", f"broken {lone}", "\u2028 line sep"]
    memory = VectorMemory(4, tmp_path)
    for i, key in enumerate(keys):
        vector = np.zeros((1, 4), dtype=np.float32)
        vector[0, i % 4] = 1.0
        memory.add([key], vector, [{"text": key, "n": i}])
    memory.save()
    back = VectorMemory.load(tmp_path)
    assert back.keys() == keys
    assert [back.get(k) for k in keys] == [{"text": k, "n": i} for i, k in enumerate(keys)]
    VectorMemory(4, tmp_path / "empty").save()
    assert len(VectorMemory.load(tmp_path / "empty")) == 0
