"""A BiLLP episode through a real OpenAI-compatible server: llama-cpp-python's own, not a mock.

The server (`python -m llama_cpp.server`, installed by `make install` with the `[server]` extra)
runs the embedded SmolLM2 weights on 127.0.0.1. It answers a json_schema response_format with
HTTP 500 ("response_format.type: Input should be 'text' or 'json_object'"), which is exactly what
made every call of a real run fall back before modes were negotiated. Here the client must
switch to json_object once and then have every request answered: no fallback may come from the
request format. Fallbacks from the model's own answers (a 135M model) are allowed and counted.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

START_LIMIT_S = 180
ACCESS = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" (\d{3})')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(
    tmp_path_factory: pytest.TempPathFactory, local_server_model
) -> Iterator[dict[str, Any]]:
    """Start llama-cpp-python's server on a free port; yield its URL and log file."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(local_server_model),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
    ]  # fmt: skip
    with log.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not up in {START_LIMIT_S} s: {log.read_text()}")
            time.sleep(0.5)
        yield {"url": url, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def statuses(log: Path) -> list[int]:
    return [int(s) for s in ACCESS.findall(log.read_text(errors="replace"))]


async def test_billp_episode_through_llama_cpp_python_server(
    llama_server: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graph import Context, build_graph
    from nodes.llm.openai_chat import negotiated

    monkeypatch.setenv("OPENAI_BASE_URL", llama_server["url"])
    monkeypatch.setenv("OPENAI_API_KEY", "not-needed")
    monkeypatch.delenv("BILLP_LLM_TIMEOUT", raising=False)
    ctx = Context(
        dataset="synthetic",
        llm="openai:smollm2",
        embeddings="hashing",
        memory_dir=str(tmp_path / "mem"),
        max_steps=2,
        temperature=0.0,
    )
    started = time.perf_counter()
    result = await build_graph().ainvoke({"user_id": 1}, context=ctx)
    seconds = time.perf_counter() - started

    assert result["done"] and result["steps"]
    state = negotiated()[f"{llama_server['url']} smollm2"]
    assert state["mode"] == "json_object" and state["settled"]
    assert "response_format" in state["refused"]["json_schema"]
    codes = statuses(llama_server["log"])
    # One refused json_schema probe (HTTP 500), then every request answered: no fallback of
    # this episode can come from the request format.
    assert Counter(codes) == Counter({500: 1, 200: len(codes) - 1}), codes
    usage = result["usage"]
    asks = sum(int(u.get("asks", 0)) for u in usage.values())
    calls = sum(int(u.get("calls", 0)) for u in usage.values())
    fallbacks = sum(result["fallbacks"].values())
    assert asks >= 2 * len(result["steps"]) and calls == len(codes) - 1
    assert fallbacks < asks  # the model's answers were used, not only the nodes' defaults
    print(
        f"\nllama-cpp-python server, SmolLM2-135M, mode {state['mode']}: {len(codes)} requests "
        f"({calls} answered) in {seconds:.1f} s = {calls / seconds:.2f} calls/s; "
        f"fallbacks {dict(result['fallbacks'])} of {asks} asks"
    )
