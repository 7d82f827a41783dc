"""Secrets and exposure: the API key never lands in state, checkpoints, memories or logs.

Also: test servers and the documented `langgraph dev` command listen on 127.0.0.1 only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

import nodes.llm.calls as llms
from graph import Context, build_graph
from nodes.llm.factory import make_chat_model
from nodes.llm.fake_server import FakeOpenAI
from nodes.prompts import Plan
from nodes.resources import get_resources
from nodes.views import messages

ROOT = Path(__file__).resolve().parent.parent
SECRET = f"sk-test-SECRET-{secrets.token_hex(12)}"
CLIENT_TIMEOUT_S = 60.0
"""Far above any answer's latency on a loaded machine: no answer is ever taken for a stall."""
HANG_S = 3600.0
"""How long a `timeout` fault stalls: past every client timeout and the whole test session."""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """A fake endpoint that accepts only SECRET, with faults so error paths run too.

    Faults the client sees at once, under a timeout no answer comes near: the same requests and
    faults however loaded the machine. Stalls get their own test, with a server that never answers.
    """
    from nodes.llm.fake_server import FAULTS

    faults = [f for f in FAULTS if f != "timeout"]
    with FakeOpenAI(
        fault_rate=0.3, faults=faults, seed=5, api_key=SECRET, timeout_sleep=HANG_S
    ) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        monkeypatch.setenv("BILLP_LLM_BASE_DELAY", "0.01")
        monkeypatch.setenv("BILLP_LLM_TIMEOUT", str(CLIENT_TIMEOUT_S))
        yield server


def context(tmp_path: Path) -> Context:
    return Context(
        dataset="synthetic",
        llm="openai:fake-model",
        embeddings="hashing",
        memory_dir=str(tmp_path / "mem"),
        max_steps=4,
    )


def assert_no_secret(where: str, data: Any) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    assert SECRET not in text, f"the API key leaked into {where}"
    assert SECRET.encode().hex() not in text, f"the API key leaked (hex) into {where}"


async def test_key_never_stored_in_state_checkpoints_memories_or_logs(tmp_path, fake, caplog):
    caplog.set_level(logging.DEBUG)  # openai and httpx log requests at DEBUG
    ctx = context(tmp_path)
    db = tmp_path / "checkpoints.sqlite"
    async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:  # our nodes are async
        graph = build_graph(checkpointer=saver)
        config = {"configurable": {"thread_id": "secret-test"}}
        result = await graph.ainvoke({"user_id": 1}, config=config, context=ctx)
        blobs = [
            saver.serde.dumps_typed(c.checkpoint)[1] + json.dumps(c.metadata, default=str).encode()
            async for c in saver.alist(config)
        ]
        history = [repr(s.values) async for s in graph.aget_state_history(config)]
    assert result["done"] and fake.stats()["faults"] > 0
    # The key was really used: the server saw it on every request.
    assert fake.stats()["rejected"] == 0 and fake.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert_no_secret("the final state", json.dumps(result, default=str))
    assert_no_secret("the step records", json.dumps(result["steps"]))
    assert_no_secret("checkpoint blobs", b"".join(blobs))
    assert_no_secret("the state history", "".join(history))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert_no_secret(str(path), path.read_bytes())
    assert_no_secret("captured logs", caplog.text)
    assert_no_secret("the serialized context", json.dumps(dataclasses.asdict(ctx)))
    model = get_resources(ctx).llm
    assert_no_secret("the model's repr", repr(model) + str(model))


def test_in_memory_checkpoints_hold_no_key(tmp_path, fake):
    saver = InMemorySaver()
    graph = build_graph(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}}
    graph.invoke({"user_id": 2}, config=config, context=context(tmp_path))
    assert saver.storage and saver.blobs
    assert_no_secret("in-memory checkpoints", repr(saver.storage) + repr(saver.blobs))
    assert_no_secret("in-memory writes", repr(saver.writes))


def test_timed_out_requests_leave_no_key_in_errors_or_logs(fake, monkeypatch, caplog):
    """The timeout path reports and logs no key either.

    The server never answers (every request stalls for an hour), so each attempt times out
    whatever the machine's load: two attempts, then a fallback.
    """
    caplog.set_level(logging.DEBUG)  # openai and httpx log requests and retries at DEBUG
    fake.fault_rate, fake.faults = 1.0, ("timeout",)
    monkeypatch.setenv("BILLP_LLM_TIMEOUT", "0.2")
    model = make_chat_model("openai:fake-model")
    result = llms.call_structured_sync(model, messages("s", "u"), Plan, transient_retries=1)
    assert (result.ok, result.attempts) == (False, 2) and "Timeout" in result.error
    assert_no_secret("the timeout error", result.error)
    assert_no_secret("captured logs", caplog.text)
    assert_no_secret("the model's repr", repr(model) + str(model))


def test_rejected_key_error_names_the_endpoint_not_the_key(tmp_path, fake, monkeypatch):
    wrong = f"sk-test-WRONG-{secrets.token_hex(12)}"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    model = make_chat_model("openai:fake-model")
    with pytest.raises(llms.LLMError) as err:
        llms.call_structured_sync(model, messages("s", "u"), Plan)
    text = str(err.value)
    assert fake.url in text and "OPENAI_API_KEY" in text
    assert wrong not in text and SECRET not in text


def test_servers_bind_loopback_only():
    with FakeOpenAI() as server:
        assert server._httpd is not None and server._httpd.server_address[0] == "127.0.0.1"
    from langgraph_cli.cli import dev

    host = next(p for p in dev.params if p.name == "host")
    assert host.default == "127.0.0.1"
    documented = [
        line
        for name in ("README.md", "Makefile")
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines()
        if re.search(r"langgraph\s+dev\b", line) and "`langgraph dev`" not in line
    ]
    assert documented, "README or Makefile should show how to start `langgraph dev`"
    for line in documented:
        hosts = re.findall(r"--host[ =](\S+)", line)
        assert all(h in {"127.0.0.1", "localhost"} for h in hosts), line
