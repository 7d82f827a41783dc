"""One BiLLP episode on the real embedded model (SmolLM2-135M via llama.cpp), fully offline.

Slow on purpose: every step makes three real model calls on the CPU (about 20 s a step on a busy
2-core machine). Hashing embeddings keep everything else fast. Nothing may reach the network.
"""

from __future__ import annotations

import socket

import pytest

from graph import Context, build_graph
from nodes.resources import get_resources

pytestmark = pytest.mark.slow

MAX_STEPS = 3
MATCHES = {"exact", "normalized", "fuzzy", "embedding", "fallback"}


@pytest.fixture
def local_model(local_model_path):
    """The embedded GGUF file, probed (conftest: fails under `make test` when missing)."""
    return local_model_path


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open an internet socket (local event-loop sockets stay allowed)."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address!r}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_episode_on_the_local_model_completes_offline(tmp_path, local_model, no_network):
    ctx = Context(
        dataset="synthetic",
        llm="local",
        embeddings="hashing",
        memory_dir=str(tmp_path / "mem"),
        max_steps=MAX_STEPS,
    )
    result = build_graph().invoke({"user_id": 3}, context=ctx)

    assert result["done"] is True
    steps = result["steps"]
    assert 1 <= len(steps) <= MAX_STEPS
    assert result["reflection"]

    # Usage is recorded per role and per step, with real token counts from llama.cpp.
    usage = result["usage"]
    for role in ("planner", "actor", "reflector"):
        assert usage[role]["calls"] >= 1, role
        assert usage[role]["prompt_tokens"] > 0 and usage[role]["completion_tokens"] > 0, role
        assert usage[role]["seconds"] > 0, role
    assert usage["planner"]["calls"] >= len(steps)  # retries add calls, never remove them
    for step in steps:
        assert step["usage"]["actor"]["prompt_tokens"] > 0

    # Every step is a real catalogue item, not yet recommended in this episode.
    titles = get_resources(ctx).catalogue.titles
    assert len(set(result["recommended"])) == len(result["recommended"])
    for step in steps:
        assert 0 <= step["item"] < len(titles)
        assert step["title"] == titles[step["item"]]
        assert step["match"] in MATCHES

    # Fallbacks are counted, never more than once per role call.
    for role, count in result["fallbacks"].items():
        assert 0 <= count <= usage[role]["calls"], role
    calls = sum(u["calls"] for u in usage.values())
    tokens = sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage.values())
    print(
        f"local episode: {len(steps)} steps ({result['quit_reason']}), {calls} calls, "
        f"{tokens} tokens, {sum(u['seconds'] for u in usage.values()):.1f} s in the model, "
        f"fallbacks {result['fallbacks']}, matches {[s['match'] for s in steps]}"
    )
