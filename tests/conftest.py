"""Shared test setup: an isolated artifact cache, fresh per-process objects for every test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before any project import: every artifact a test builds goes to a throwaway cache, unless the
# caller points BILLP_TEST_CACHE at a persistent one (handy when iterating locally).
os.environ["BILLP_CACHE"] = os.environ.get("BILLP_TEST_CACHE") or tempfile.mkdtemp(
    prefix="billp-test-cache-"
)
os.environ.setdefault("LANGGRAPH_CLI_NO_ANALYTICS", "1")
os.environ.setdefault("LANGSMITH_TRACING", "false")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run torch single-threaded: on a shared 2-core box, tiny ops wait on busy OpenMP threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_resources():
    """Start and end every test with no cached resources, as a new process would.

    Environments, memories, chat models (with the scripted double's fault cycle), answer
    caches, negotiated output modes and endpoint health are cached per process
    (`nodes.resources.clear_cache` forgets them all); no test may leak one into the next.
    """
    from nodes.resources import clear_cache

    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="session")
def cache_root() -> Path:
    """Return the session's artifact cache."""
    return Path(os.environ["BILLP_CACHE"])


def _embedded_model(module: str) -> Path:
    """Return the embedded GGUF file once `module` is installed and the probe passed.

    Nothing native is loaded here (find_spec only): the probe loads llama.cpp in a child, so a
    build that crashes on this CPU fails the local-model tests with its one line instead of
    killing the test process. Missing pieces skip, unless BILLP_REQUIRE_LOCAL=1 (`make test`,
    which installs them) turns them into failures: there, a skipped local test hides a broken
    install.
    """
    import importlib.util

    from nodes.llm.local import find_local_model
    from nodes.llm.probe import LocalModelCrashError, ensure_local_model_works

    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    found = bool(spec) and (
        not rest or any((f / Path(*rest.split("."))).with_suffix(".py").is_file() for f in folders)
    )
    try:
        if not found:
            raise ImportError(f"{module} is not installed")
        path = find_local_model()
    except (ImportError, FileNotFoundError) as err:
        if os.environ.get("BILLP_REQUIRE_LOCAL") == "1":
            pytest.fail(f"the embedded model is required here (BILLP_REQUIRE_LOCAL=1): {err}")
        pytest.skip(f"the embedded model is not installed: {err} (`make install` installs it)")
    try:
        ensure_local_model_works(path)
    except LocalModelCrashError as err:
        pytest.fail(str(err), pytrace=False)
    return path


@pytest.fixture(scope="session")
def local_model_path() -> Path:
    """The embedded model's GGUF file, probed (see `_embedded_model`)."""
    return _embedded_model("llama_cpp")


@pytest.fixture(scope="session")
def local_server_model() -> Path:
    """The embedded model, with llama-cpp-python's [server] extra importable."""
    return _embedded_model("llama_cpp.server.app")
