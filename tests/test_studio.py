"""The graphs served by `langgraph dev` (LangGraph Studio's backend), driven with the SDK.

One real `langgraph dev` server per module, offline: no analytics, no tracing, no version check,
no browser, bound to 127.0.0.1, no file watching. It reads the repo's `langgraph.json` (paths
made absolute) with its `env` replaced by the test's variables, so a developer's `.env` can never
point the test at another cache, and runs in a temporary folder, where the in-memory server
writes its `.langgraph_api/` snapshots (langgraph-cli 0.4 drops `disable_persistence`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from graph import Context

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240.0  # importing torch + langchain + faiss on a busy 2-core machine
RUN_TIMEOUT_S = 120.0
CONTEXT = {"dataset": "synthetic", "llm": "scripted", "embeddings": "hashing"}
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",  # read by the CLI process itself, never from .env
    "LANGGRAPH_NO_VERSION_CHECK": "true",  # the server would ask PyPI for newer versions
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
}

pytestmark = pytest.mark.slow  # a real `langgraph dev` server: minutes to start on 2 busy cores

pytest.importorskip("langgraph_sdk", reason="needs the dev extra (langgraph-sdk)")
pytest.importorskip("langgraph_api", reason="needs the dev extra (langgraph-cli[inmem])")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _langgraph_cli() -> str:
    found = shutil.which("langgraph", path=str(Path(sys.executable).parent)) or shutil.which(
        "langgraph"
    )
    if found is None:
        pytest.skip("the `langgraph` CLI is not installed (pip install 'langgraph-cli[inmem]')")
    return found


def _test_config(tmp: Path, env: dict[str, str]) -> Path:
    """Write the repo's langgraph.json with absolute graph paths and the test's environment."""
    config = json.loads((ROOT / "langgraph.json").read_text())
    graphs = {}
    for name, spec in config["graphs"].items():
        path, _, attr = spec.rpartition(":")
        graphs[name] = f"{(ROOT / path).resolve()}:{attr}"
    config.update(dependencies=[str(ROOT)], graphs=graphs, env=env)
    out = tmp / "langgraph.json"
    out.write_text(json.dumps(config, indent=2))
    return out


@dataclasses.dataclass
class Server:
    """A running `langgraph dev` process and where its log goes."""

    url: str
    process: subprocess.Popen
    log: Path
    memory_dir: Path

    def log_tail(self, chars: int = 12_000) -> str:
        """Return the end of the server's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Print the server log when the block fails (pytest shows it with the failure)."""
        try:
            yield
        except BaseException:
            print(f"--- langgraph dev log ({self.log}) ---\n{self.log_tail()}")
            raise

    def stop(self) -> None:
        """Terminate the server's whole process group (it forks workers)."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"langgraph dev exited with {server.process.returncode} before serving:\n"
                f"{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/ok", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    server.stop()
    pytest.fail(f"langgraph dev did not serve within {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Start `langgraph dev` on a free local port; always terminate it afterwards."""
    tmp = tmp_path_factory.mktemp("studio")
    env_vars = {**OFFLINE_ENV, "BILLP_CACHE": os.environ["BILLP_CACHE"]}
    config = _test_config(tmp, env_vars)
    port = _free_port()
    log = tmp / "langgraph-dev.log"
    command = [
        _langgraph_cli(),
        "dev",
        "--no-browser",
        "--no-reload",  # other edits in the tree must not restart the server mid-test
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--config",
        str(config),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=tmp,
            env={**os.environ, **env_vars},
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so teardown reaches the workers
        )
    srv = Server(f"http://127.0.0.1:{port}", process, log, tmp / "memory")
    try:
        _wait_until_serving(srv)
        yield srv
    finally:
        srv.stop()


def _context(server: Server) -> dict:
    return {**CONTEXT, "memory_dir": str(server.memory_dir)}


async def test_server_lists_every_graph_and_the_context_schema(server):
    from langgraph_sdk import get_client

    client = get_client(url=server.url)
    with server.explained():
        graphs = json.loads((ROOT / "langgraph.json").read_text())["graphs"]
        assistants = await client.assistants.search(limit=50)
        assert {a["graph_id"] for a in assistants} >= set(graphs)
        billp = next(a for a in assistants if a["graph_id"] == "billp")
        schemas = await client.assistants.get_schemas(billp["assistant_id"])
        fields = {f.name for f in dataclasses.fields(Context)}
        assert set(schemas["context_schema"]["properties"]) == fields
        # Studio renders these; a schema pydantic cannot build comes back as null
        assert set(schemas["input_schema"]["properties"]) == {"user_id"}
        assert {"steps", "done", "usage"} <= set(schemas["state_schema"]["properties"])
        assert {"steps", "done", "usage"} <= set(schemas["output_schema"]["properties"])


async def test_wait_returns_the_final_state(server):
    from langgraph_sdk import get_client

    client = get_client(url=server.url)
    with server.explained():
        thread = await client.threads.create()
        result = await client.runs.wait(
            thread["thread_id"],
            "billp",
            input={"user_id": 3},
            context=_context(server),
            raise_error=True,
        )
        assert result["done"] is True
        assert result["quit_reason"] in {"low_rating", "similar", "repeat", "max_steps"}
        assert len(result["steps"]) == len(result["recommended"]) >= 1
        assert result["reflection"]
        state = await client.threads.get_state(thread["thread_id"])
        assert state["values"]["recommended"] == result["recommended"]
        assert state["next"] == []


async def test_stream_yields_one_update_per_node(server):
    from langgraph_sdk import get_client

    client = get_client(url=server.url)
    with server.explained():
        thread = await client.threads.create()
        nodes: list[str] = []
        stream = client.runs.stream(
            thread["thread_id"],
            "billp",
            input={"user_id": 5},
            context=_context(server),
            stream_mode="updates",
        )
        async for part in stream:
            assert part.event != "error", part.data
            if part.event == "updates":
                assert len(part.data) == 1, part.data  # nodes run one at a time
                nodes.extend(part.data)
        state = (await client.threads.get_state(thread["thread_id"]))["values"]
        n = len(state["steps"])
        assert state["done"] is True and n >= 1
        assert nodes == ["start", *["planner", "actor", "user", "critic"] * n, "reflector"]
