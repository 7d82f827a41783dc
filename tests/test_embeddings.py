"""Embeddings: hashing determinism, MiniLM fidelity and integrity, the embedding cache."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memory.embeddings import (
    MINILM_SHA256,
    EmbeddingModelError,
    Embeddings,
    HashingEmbeddings,
    MiniLMEmbeddings,
    OpenAIEmbeddings,
    cached_embed,
    make_embeddings,
    minilm_model_dir,
    normalize_spec,
)

REPO = Path(__file__).resolve().parents[1]

# First 5 dims from sentence-transformers 6.2.0 (SentenceTransformer on the same local folder);
# our embeddings matched it with cosine > 0.99999 and max abs error 2e-7.
MINILM_REFERENCE = {
    "A cozy farming simulator with crafting and friendship": [
        -0.04447,
        0.05287,
        -0.00007,
        0.00711,
        -0.02374,
    ],
    "Half-Life 2": [-0.08693, 0.03610, 0.05098, -0.00184, 0.02970],
}


def _hash_in_subprocess(texts: list[str], seed: str) -> np.ndarray:
    code = (
        "import json, sys; from memory.embeddings import HashingEmbeddings;"
        "v = HashingEmbeddings(64).embed(json.loads(sys.argv[1]));"
        "print(json.dumps(v.tolist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(texts)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return np.asarray(json.loads(out.stdout), dtype=np.float32)


def test_hashing_is_identical_across_processes_with_different_hash_seeds() -> None:
    texts = ["Portal 2", "Stardew Valley", "The Hobbit"]
    a = _hash_in_subprocess(texts, "1")
    b = _hash_in_subprocess(texts, "2")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(HashingEmbeddings(64).embed(texts), a, atol=1e-7)


def test_hashing_rows_are_unit_and_similar_texts_are_nearer() -> None:
    emb = HashingEmbeddings()
    v = emb.embed(["Portal", "Portal 2", "Stardew Valley farming", "", "Portal 2"])
    assert v.shape == (5, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[1], v[4])
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]
    assert emb.embed([]).shape == (0, 384)


def test_embed_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="wrap it in a list"):
        HashingEmbeddings().embed("Portal")


def test_make_embeddings_caches_per_spec_and_names_valid_forms() -> None:
    assert make_embeddings("hashing") is make_embeddings("hashing:384")
    assert make_embeddings("hashing:16").dim == 16
    assert normalize_spec(" hashing ") == "hashing:384"
    assert isinstance(make_embeddings("hashing:16"), Embeddings)
    for bad in ("bert", "hashing:0", "hashing:x", "openai:"):
        with pytest.raises(ValueError, match="valid forms: 'minilm'"):
            make_embeddings(bad)


def test_openai_spec_builds_its_client_lazily_without_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    emb = make_embeddings("openai:text-embedding-3-small")
    assert isinstance(emb, OpenAIEmbeddings)
    assert emb._client is None  # configuring the spec contacted nothing
    assert emb.dim == 1536 and emb.spec == "openai:text-embedding-3-small"
    client = emb.client()
    assert client.model == "text-embedding-3-small"
    assert client.openai_api_base == "http://127.0.0.1:9/v1"
    assert emb.client() is client


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbeddings:
    return make_embeddings("minilm")  # type: ignore[return-value]


def test_minilm_matches_pinned_sentence_transformers_values(minilm: MiniLMEmbeddings) -> None:
    texts = list(MINILM_REFERENCE)
    v = minilm.embed(texts)
    assert v.shape == (2, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    for row, text in zip(v, texts, strict=True):
        np.testing.assert_allclose(row[:5], MINILM_REFERENCE[text], atol=2e-5)
    # Batching pads to the longest text; padding must not change any embedding.
    alone = minilm.embed([texts[1]])[0]
    np.testing.assert_allclose(alone, v[1], atol=1e-5)
    assert float(asyncio.run(minilm.aembed(texts))[0] @ v[0]) > 0.99999


def test_minilm_ranks_by_meaning(minilm: MiniLMEmbeddings) -> None:
    v = minilm.embed(["a space shooter game", "sci-fi shooting in outer space", "a cookbook"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_minilm_truncates_long_texts(minilm: MiniLMEmbeddings) -> None:
    long = "strategy " * 600  # far past 256 tokens
    v = minilm.embed([long, long + "tail words never seen"])
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)


def test_minilm_refuses_a_model_file_with_the_wrong_hash(tmp_path: Path) -> None:
    shutil.copy(minilm_model_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "model.safetensors").write_bytes(b"not the pinned weights")
    with pytest.raises(EmbeddingModelError, match=MINILM_SHA256) as err:
        MiniLMEmbeddings(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(err.value)
    assert "reinstall" in str(err.value)


def test_minilm_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match=r"model\.safetensors is missing"):
        MiniLMEmbeddings(tmp_path)


class _Counting:
    """Wrap an Embeddings and count embed calls, to tell cache hits from misses."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner, self.spec, self.dim, self.calls = inner, inner.spec, inner.dim, 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return self.inner.embed(texts)

    async def aembed(self, texts: list[str]) -> np.ndarray:
        return self.embed(texts)


def test_cache_hits_then_rebuilds_on_new_texts(tmp_path: Path) -> None:
    emb = _Counting(HashingEmbeddings(32))
    path = tmp_path / "titles.npy"
    first = cached_embed(emb, ["a", "b"], path)
    again = cached_embed(emb, ["a", "b"], path)
    assert emb.calls == 1
    np.testing.assert_array_equal(first, again)
    meta = json.loads((tmp_path / "titles.npy.json").read_text())
    assert meta["spec"] == "hashing:32" and meta["dim"] == 32 and meta["count"] == 2
    other = cached_embed(emb, ["a", "c"], path)
    assert emb.calls == 2
    np.testing.assert_array_equal(other, HashingEmbeddings(32).embed(["a", "c"]))


@pytest.mark.parametrize("damage", ["truncate_npy", "flip_npy", "garble_json"])
def test_cache_detects_corruption_and_rebuilds_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    emb = _Counting(HashingEmbeddings(32))
    path = tmp_path / "titles.npy"
    good = cached_embed(emb, ["x", "y", "z"], path)
    data = path.read_bytes()
    if damage == "truncate_npy":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_npy":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        (tmp_path / "titles.npy.json").write_text('{"spec": "hash')
    with caplog.at_level(logging.WARNING, logger="memory.embeddings"):
        rebuilt = cached_embed(emb, ["x", "y", "z"], path)
    assert emb.calls == 2
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(rebuilt, good)
    cached_embed(emb, ["x", "y", "z"], path)
    assert emb.calls == 2  # the rebuilt cache is whole again
