"""JSON-schema constrained decoding for llama.cpp that checks tokens one at a time.

llama-cpp-python applies a JSON-schema grammar to every token of the vocabulary (49,152 for
SmolLM2) at every step: ~100 ms per generated token on one CPU core, most of each local call.
`LazyGrammar` is a logits processor that asks the grammar only about the tokens it is about to
pick, best first, and forces the first one the grammar accepts (llama.cpp's own `common` sampler
does the same). Usually the model's favourite token is valid, so one check replaces 49,152.

- temperature 0: the result is the grammar-valid token of highest logit, exactly what full
  grammar masking followed by greedy sampling picks (the tests compare both).
- temperature > 0: tokens are tried in Gumbel-max order of logits / T, which samples from the
  softmax restricted to the grammar; like llama.cpp's default min-p 0.05, tokens far less likely
  than the favourite are only tried after every likelier one was rejected.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

NEG_INF = -math.inf
MIN_P = 0.05
"""Sampling keeps tokens at least this likely relative to the favourite (llama.cpp's default)."""
_TOP = 64
"""Candidates ranked first by partial sort; the full sort is only needed when all are invalid."""


class GrammarDeadEnd(ValueError):
    """No token of the vocabulary continues the answer (the grammar or prompt is broken)."""


class LazyGrammar:
    """A llama-cpp-python logits processor enforcing one JSON schema for one generation.

    Use a fresh instance per call (it carries the grammar's parse state) and `close()` it after.
    """

    def __init__(
        self, llama: Any, schema: dict[str, Any], temperature: float = 0.0, seed: int | None = None
    ) -> None:
        from llama_cpp import llama_cpp as lib
        from llama_cpp.llama_grammar import LlamaGrammar

        grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        self._lib = lib
        self._sampler = lib.llama_sampler_init_grammar(
            llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self._sampler:
            raise ValueError("llama.cpp could not compile the JSON-schema grammar")
        self.temperature = temperature
        self._rng = np.random.default_rng(seed)
        self._one = (lib.llama_token_data * 1)()
        self._probe = lib.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self.checks = 0
        """Tokens the grammar was asked about (a measure of how often the model strays)."""

    def close(self) -> None:
        """Free the native grammar sampler (idempotent; safe after a failed `__init__`)."""
        if getattr(self, "_sampler", None):
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        self.close()

    def allowed(self, token: int) -> bool:
        """Return whether the grammar accepts `token` next."""
        self.checks += 1
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        self._probe.size, self._probe.selected = 1, -1
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(self._probe))
        return self._one[0].logit != NEG_INF

    def _order(self, logits: np.ndarray) -> Iterator[int]:
        """Yield token ids in the order they should be tried."""
        if self.temperature > 0:
            keys = logits / self.temperature + self._rng.gumbel(size=logits.shape)
            likely = logits >= logits.max() + self.temperature * math.log(MIN_P)
            ranked = np.argsort(-np.where(likely, keys, -np.inf), kind="stable")
            n_likely = int(likely.sum())
            yield from ranked[:n_likely]
            logits = np.where(likely, -np.inf, logits)  # then the rest, greedily
        top = (
            np.argpartition(-logits, _TOP)[:_TOP] if logits.size > _TOP else np.arange(logits.size)
        )
        first = top[np.argsort(-logits[top], kind="stable")]
        yield from first
        tried = set(first.tolist())
        yield from (t for t in np.argsort(-logits, kind="stable") if int(t) not in tried)

    def __call__(self, input_ids: Any, scores: Any) -> np.ndarray:
        """Return logits where only the chosen grammar-valid token is finite."""
        logits = np.asarray(scores, dtype=np.float32)
        for token in self._order(logits):
            token = int(token)
            if logits[token] == NEG_INF:
                break
            if self.allowed(token):
                self._lib.llama_sampler_accept(self._sampler, token)
                out = np.full_like(logits, NEG_INF)
                out[token] = logits[token]
                return out
        raise GrammarDeadEnd("no token continues the JSON answer under its schema")
