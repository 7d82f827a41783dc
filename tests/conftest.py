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
