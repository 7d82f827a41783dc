"""Derive every random draw of a run from (run seed, user, step, role), never from a process RNG.

An episode's exploration genres, Reflexion's sampled reflections and each LLM call's sampling
seed then depend only on who is playing which step, not on how many episodes run at once, in
what order they finish, or on which machine (a Ray worker) an episode runs. Hashing the four
parts (blake2b) keeps neighbouring users' streams unrelated.
"""

from __future__ import annotations

import hashlib

import numpy as np

SEED_BITS = 31  # fits every backend's seed field (llama.cpp takes uint32, OpenAI an int)


def draw_seed(seed: int, user: int, step: int, role: str) -> int:
    """Return a non-negative 31-bit seed for one draw of `role` at `step` of `user`'s episode."""
    text = f"{int(seed)}/{int(user)}/{int(step)}/{role}".encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << SEED_BITS) - 1)


def rng(seed: int, user: int, step: int, role: str) -> np.random.Generator:
    """Return a generator for one draw (see `draw_seed`)."""
    return np.random.default_rng(draw_seed(seed, user, step, role))
