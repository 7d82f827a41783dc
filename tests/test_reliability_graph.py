"""Whole BiLLP episodes against a misbehaving OpenAI-compatible server (nodes/llm/fake_server.py).

The graph runs with `llm="openai:MODEL"`, reading OPENAI_BASE_URL / OPENAI_API_KEY like a real
deployment; BILLP_LLM_BASE_DELAY keeps backoff short.

No outcome here depends on the clock, so a loaded machine cannot change one: fault schedules
use only faults the client sees at once, under a client timeout no answer comes near; the one
test of timeouts talks to a server that never answers, so every attempt times out, however slow
the machine.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nodes.llm.calls as llms
import nodes.llm.openai_chat as openai_llm
from graph import Context, build_graph
from nodes.llm.factory import make_chat_model
from nodes.llm.fake_server import FAULTS, FakeOpenAI
from nodes.resources import clear_cache
from simulator.build import EnvConfig, build_env

QUIT_REASONS = {"low_rating", "similar", "repeat", "max_steps"}
TRANSIENT = ("429", "429_bare", "500")
"""Transient faults the client sees at once (a `timeout` fault is tested on its own)."""
PROMPT_FAULTS = tuple(f for f in FAULTS if f != "timeout")
"""Every fault but the stall: what the fault schedules below draw from."""
CLIENT_TIMEOUT_S = 60.0
"""Far above any answer's latency on a loaded machine: no answer is ever taken for a stall."""
STALL_TIMEOUT_S = 0.2
"""The client timeout in the test of stalls, whose server never answers."""
HANG_S = 3600.0
"""How long a `timeout` fault stalls: past every client timeout and the whole test session."""


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return build_env(EnvConfig(dataset="synthetic")).dataset.titles()


@pytest.fixture
def fake_llm(
    monkeypatch: pytest.MonkeyPatch, titles: list[str]
) -> Iterator[Callable[..., FakeOpenAI]]:
    """Start fake servers and point the `openai:` backend at the latest one."""
    servers: list[FakeOpenAI] = []

    def start(client_timeout: float = CLIENT_TIMEOUT_S, **options: Any) -> FakeOpenAI:
        options = {"titles": titles, "faults": PROMPT_FAULTS, "timeout_sleep": HANG_S, **options}
        fake = FakeOpenAI(**options).start()
        servers.append(fake)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("OPENAI_API_KEY", "dummy-key")
        monkeypatch.setenv("BILLP_LLM_BASE_DELAY", "0.01")
        monkeypatch.setenv("BILLP_LLM_TIMEOUT", str(client_timeout))
        clear_cache()  # clients of the previous server, its negotiated modes and health
        return fake

    yield start
    for fake in servers:
        fake.stop()


def context(tmp_path: Path, **kw: Any) -> Context:
    base = dict(
        dataset="synthetic",
        llm="openai:fake-model",
        embeddings="hashing",
        memory_dir=str(tmp_path / "mem"),
        max_steps=5,
    )
    return Context(**{**base, **kw})


def assert_grounded(result: dict[str, Any], titles: list[str]) -> None:
    """Every action is a real catalogue item, recorded with its own title, never repeated."""
    assert result["done"] is True and result["quit_reason"] in QUIT_REASONS
    items = [s["item"] for s in result["steps"]]
    assert items == result["recommended"] and len(set(items)) == len(items)
    for step in result["steps"]:
        assert 0 <= step["item"] < len(titles) and step["title"] == titles[step["item"]]


def calls(results: list[dict[str, Any]]) -> int:
    return sum(int(u["calls"]) for r in results for u in r["usage"].values())


def total_fallbacks(results: list[dict[str, Any]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in results:
        out.update(r["fallbacks"])
        per_step = Counter(role for s in r["steps"] for role in s["fallbacks"])
        assert per_step == Counter({k: v for k, v in r["fallbacks"].items() if k != "reflector"})
    return out


async def test_episodes_complete_at_30_percent_faults(tmp_path, fake_llm, titles):
    fake = fake_llm(fault_rate=0.3, seed=1)
    graph, ctx = build_graph(), context(tmp_path)
    # One episode after another: the server draws faults in arrival order, so concurrent
    # episodes would get a schedule that varies with thread timing (tests/test_reliability_run
    # covers concurrent episodes under faults, with numbers large enough not to care).
    results = [await graph.ainvoke({"user_id": u}, context=ctx) for u in range(8)]
    for result in results:
        assert_grounded(result, titles)
        assert result["reflection"]
    stats = fake.stats()
    fallbacks = total_fallbacks(results)
    # Every request is either an answer the client counted as a call, or a transient failure:
    # exactly, since no answer can outlast the client's timeout.
    transient = sum(stats["by_fault"].get(f, 0) for f in TRANSIENT)
    assert stats["requests"] == calls(results) + transient
    assert stats["faults"] >= 0.2 * stats["requests"]
    assert len(stats["by_fault"]) >= 8  # most kinds of fault were served
    # Retries absorb most faults: only a fraction of them reach a node's fallback.
    assert 0 < sum(fallbacks.values()) < stats["faults"] / 2
    print(
        f"\n30% faults, 8 episodes: {stats['requests']} requests, {stats['faults']} faults "
        f"{stats['by_fault']}, fallbacks {dict(fallbacks)}, "
        f"recovered {1 - sum(fallbacks.values()) / stats['faults']:.0%}"
    )


async def test_transient_faults_are_retried_until_answered(tmp_path, fake_llm, titles):
    fake = fake_llm(fault_rate=0.3, faults=TRANSIENT, seed=2)
    result = await build_graph().ainvoke({"user_id": 3}, context=context(tmp_path))
    assert_grounded(result, titles)
    stats = fake.stats()
    assert stats["faults"] > 0 and set(stats["by_fault"]) <= set(TRANSIENT)
    assert sum(result["fallbacks"].values()) == 0  # four retries with backoff sufficed
    assert stats["ok"] == calls([result])


async def test_out_of_range_critic_value_is_rejected_and_falls_back(tmp_path, fake_llm, titles):
    fake = fake_llm(force={"value": 10**9})
    result = await build_graph().ainvoke({"user_id": 4}, context=context(tmp_path, max_steps=4))
    assert_grounded(result, titles)
    valued = result["steps"][:-1]  # no critic call once the user has left (V = 0)
    assert result["fallbacks"]["critic"] == len(valued)
    assert all(s["value"] == 0.0 and s["fallbacks"] == ["critic"] for s in valued)
    assert sum(v for k, v in result["fallbacks"].items() if k != "critic") == 0
    critic_requests = [
        r for r in fake.requests if "value" in str(r.get("response_format", {}).get("json_schema"))
    ]
    assert len(critic_requests) == 2 * len(valued)  # one retry, told what was wrong
    assert "could not be used" in critic_requests[1]["messages"][-1]["content"]
    assert result["usage"]["critic"]["calls"] == 2 * len(valued)


@pytest.mark.parametrize("fault", ["bad_json", "types", "bad_body"])
async def test_unusable_answers_fall_back_in_every_node(tmp_path, fake_llm, titles, fault):
    fake = fake_llm(fault_rate=1.0, faults=[fault])
    result = await build_graph().ainvoke({"user_id": 5}, context=context(tmp_path, max_steps=3))
    assert_grounded(result, titles)
    n = len(result["steps"])
    fb = result["fallbacks"]
    assert (fb["planner"], fb["actor"], fb["critic"], fb["reflector"]) == (n, n, n - 1, 1)
    assert all(s["match"] == "fallback" for s in result["steps"])
    assert fake.stats()["by_fault"] == {fault: fake.stats()["requests"]}


async def test_hallucinated_titles_are_grounded_to_real_items(tmp_path, fake_llm, titles):
    fake_llm(fault_rate=1.0, faults=["hallucinated"])
    result = await build_graph().ainvoke({"user_id": 6}, context=context(tmp_path))
    assert_grounded(result, titles)
    assert sum(result["fallbacks"].values()) == 0
    assert all(s["match"] == "embedding" and s["replaced"] for s in result["steps"])
    assert all(s["action"] != s["title"] for s in result["steps"])


def test_fake_server_speaks_every_shape_and_counts_faults(fake_llm):
    fake = fake_llm(fault_rate=0.5, seed=3)
    from nodes.prompts import TitleChoice, Value
    from nodes.views import messages

    model = make_chat_model("openai:fake-model")
    msgs = messages("system", "user")
    plain = asyncio.run(llms.call_text(model, msgs, transient_retries=6))
    via_schema = llms.call_structured_sync(model, msgs, Value, retries=6, transient_retries=6)
    openai_llm.pin_mode(model, "tools")
    via_tools = llms.call_structured_sync(model, msgs, TitleChoice, retries=6, transient_retries=6)
    assert plain.ok and via_schema.ok and via_tools.ok
    assert "tools" in fake.requests[-1] and "response_format" not in fake.requests[-1]
    stats = fake.stats()
    assert stats["requests"] == stats["ok"] + stats["faults"] and stats["faults"] > 0
    assert set(stats["by_fault"]) <= set(PROMPT_FAULTS)
    assert fake.url.startswith("http://127.0.0.1:")


def test_stalled_requests_time_out_and_are_retried_then_fall_back(fake_llm):
    """A server that never answers costs one client timeout per attempt, never a hung call.

    Every request stalls (the server holds it for an hour), so every attempt times out whatever
    the machine's load: the attempts are exactly 1 + transient_retries, then a fallback.
    """
    fake = fake_llm(fault_rate=1.0, faults=["timeout"], client_timeout=STALL_TIMEOUT_S)
    from nodes.prompts import Value
    from nodes.views import messages

    model = make_chat_model("openai:fake-model")
    result = llms.call_structured_sync(
        model, messages("system", "user"), Value, transient_retries=2
    )
    assert (result.ok, result.attempts) == (False, 3)
    assert "Timeout" in result.error and result.usage.calls == 0
    # Each attempt reached the server and stalled there; a starved server thread may read the
    # last one only after the client gave up on it, so wait for it rather than for a clock.
    deadline = time.monotonic() + 60
    while fake.stats()["requests"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = fake.stats()
    assert (stats["requests"], stats["ok"], stats["by_fault"]) == (3, 0, {"timeout": 3})
