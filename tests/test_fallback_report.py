"""Honest results: fallbacks per node in every table, degraded runs marked, broken endpoints stop.

`billp run` against the fake OpenAI-compatible server: one that answers every request with
unusable JSON (HTTP 200, so the run goes on, every node falling back) must be marked degraded
in results.json, results.md and the terminal, with the reason; one that fails every request the
same way must stop with exit code 2 and one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.cli import app
from eval.fallbacks import DEGRADED_ABOVE, cells, degradation, fallback_summary
from nodes.llm.fake_server import FakeOpenAI

KEY = "sk-report-test-0123456789"
RUN = [
    "run", "--method", "billp", "--llm", "openai:fake-model", "--dataset", "synthetic",
    "--embeddings", "hashing", "--train-users", "1", "--test-users", "2", "--max-steps", "2",
    "--concurrency", "2", "--no-cache",
]  # fmt: skip


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BILLP_LLM_BASE_DELAY", "0")
    monkeypatch.setenv("COLUMNS", "250")
    yield


def record(fallbacks: dict[str, int], asks: dict[str, int], **extra) -> dict:
    usage = {node: {"calls": n, "asks": n} for node, n in asks.items()}
    return {"status": "ok", "fallbacks_by_node": fallbacks, "usage": usage, **extra}


def test_fallback_rate_is_per_llm_call_and_degrades_above_the_threshold() -> None:
    ok = record({"planner": 1, "actor": 0, "critic": 0, "reflector": 0}, {"planner": 5, "actor": 5})
    summary = fallback_summary([ok, ok])
    assert summary["fallbacks"] == {
        "planner": 2,
        "actor": 0,
        "critic": 0,
        "reflector": 0,
        "total": 2,
    }
    assert (summary["llm_asks"], summary["fallback_rate"]) == (20, 0.1)
    assert not degradation([ok])["degraded"]
    bad = record({"planner": 3, "critic": 2}, {"planner": 5, "critic": 5})
    marked = degradation([ok], train=[bad])  # a degraded training phase taints the result too
    assert marked["degraded"] and "training" in marked["degraded_reason"]
    assert (
        "5 of 10 LLM calls" in marked["degraded_reason"]
        and "planner 3" in marked["degraded_reason"]
    )
    assert cells(marked)[1].endswith("(degraded)") and cells(marked)[2] == "1/0/0/0"
    # Records from before `asks` count answered calls; a policy method has no LLM calls at all.
    legacy = {"status": "ok", "fallbacks_by_node": {"actor": 1}, "usage": {"actor": {"calls": 2}}}
    assert fallback_summary([legacy])["fallback_rate"] == 0.5
    assert cells(degradation([{"status": "ok", "fallbacks": 0}])) == ["–", "–", "–"]
    assert DEGRADED_ABOVE == 0.20


def test_all_fallback_run_is_marked_degraded_everywhere(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    with FakeOpenAI(fault_rate=1.0, faults=["bad_json"]) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        result = CliRunner().invoke(app, [*RUN, "--out", str(out)])
    assert result.exit_code == 0, result.output
    billp = json.loads((out / "results.json").read_text())["methods"]["billp"]
    assert billp["degraded"] and billp["fallback_rate"] == 1.0
    counts = billp["fallbacks"]
    assert counts["total"] == billp["llm_asks"] > 0 and counts["planner"] == counts["actor"] > 0
    assert counts["reflector"] == 2  # one per test episode
    md = (out / "results.md").read_text()
    assert "**degraded**: billp: " in md and "100% (degraded)" in md and "fb P/A/C/R" in md
    assert "degraded" in result.output and "100% (degraded)" in result.output
    assert KEY not in md and KEY not in result.output


def test_endpoint_failing_every_request_stops_the_run_with_one_line(tmp_path, monkeypatch) -> None:
    with FakeOpenAI(fault_rate=1.0, faults=["500"]) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        result = CliRunner().invoke(app, [*RUN, "--out", str(tmp_path / "run")])
        requests, url = fake.stats()["requests"], fake.url
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    line = errors[0]
    for part in (url, "model fake-model", "mode json_schema", "HTTP 500", "internal server"):
        assert part in line, part
    assert KEY not in result.output
    assert requests <= 2 + 3  # two episodes in flight, then at most the fail-fast window
