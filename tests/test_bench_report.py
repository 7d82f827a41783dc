"""BENCHMARKS.md is generated from results.json: targets are judged from the numbers, not text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run as bench_run
from bench.report import render

SIZES = ("1000", "10000", "100000", "1000000")


def results(**over) -> dict:
    base = {
        "graph_overhead_ms_per_step": 1.5,
        "graph_overhead_above_floor_ms": 0.9,
        "env_batched_steps_per_s": 250_000,
        "env_steps_per_s": 9_000,
        "memory_search_p50_ms": dict(zip(SIZES, (0.1, 0.5, 0.8, 5.0), strict=True)),
        "memory_search_p99_ms": dict(zip(SIZES, (0.2, 1.0, 2.0, 9.0), strict=True)),
        "concurrency_speedup": {"1": 1.0, "4": 3.9, "16": 14.0, "64": 40.0},
        "prompt_tokens_ratio_vs_reference": 0.4,
        "local_seconds_per_call": 3.0,
        "peak_rss_mb_100_users": 1500.0,
        "quality": {
            "steam": {
                "itemcf": {"len": 30.0, "r_each": 4.5, "r_traj": 135.0, "ci95": 4.0,
                           "pct_oracle": 54.0, "llm_calls_per_episode": 0.0,
                           "seconds_per_episode": 0.01, "grounding_replacement_rate": None,
                           "backend": "no LLM", "budget": {"test_users": 100, "seeds": [0, 1, 2],
                                                          "max_steps": 50, "train_users": 0}},
            }
        },
        "machine": {"cores": 2, "cpu_model": "test cpu"},
        "date": "2026-01-01",
    }  # fmt: skip
    base.update(over)
    return base


def targets_table(markdown: str) -> dict[str, str]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and ". " in line[:6]]
    return {row.split("|")[1].strip(): row.split("|")[4].strip() for row in rows}


def write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return render(path, tmp_path / "BENCHMARKS.md").read_text()


def test_targets_met_and_missed_follow_the_numbers(tmp_path: Path) -> None:
    table = targets_table(write(tmp_path, results()))
    assert table["1. graph overhead / step"] == "**met**"
    assert table["4. concurrency speedup @ 16"] == "**met**"
    missed = results(graph_overhead_above_floor_ms=2.05, concurrency_speedup={"16": 11.9})
    table = targets_table(write(tmp_path, missed))
    assert table["1. graph overhead / step"] == "**not met**"
    assert table["4. concurrency speedup @ 16"] == "**not met**"
    assert table["3. memory search p50 @ 100k"] == "**met**"


def test_missing_numbers_say_not_measured(tmp_path: Path) -> None:
    data = results()
    del data["peak_rss_mb_100_users"], data["memory_search_p50_ms"]
    table = targets_table(write(tmp_path, data))
    assert table["6b. peak RSS, 100-user run"] == "not measured"
    assert table["3. memory search p50 @ 100k"] == "not measured"


def test_quality_rows_and_plots_are_rendered(tmp_path: Path) -> None:
    markdown = write(tmp_path, results())
    assert "| itemcf | 100u×3s, ≤50 |" in markdown
    assert "135.00 ± 4.00" in markdown
    for plot in ("quality.png", "memory_search.png", "concurrency.png"):
        assert (tmp_path / "plots" / plot).is_file()
        assert f"(plots/{plot})" in markdown


def test_failed_part_is_reported_and_exit_status_nonzero(tmp_path, monkeypatch) -> None:
    def fake_part(name: str, quick: bool, out: Path):
        if name == "concurrency":
            return {}, 1.0, "exit 1: boom"
        return {"graph_overhead_ms_per_step": 1.0} if name == "graph_overhead" else {}, 1.0, None

    paths = {"results": tmp_path / "r.json", "markdown": tmp_path / "B.md"}
    monkeypatch.setattr(bench_run, "QUICK", paths)
    monkeypatch.setattr(bench_run, "run_part", fake_part)
    assert bench_run.main(["--quick"]) == 1
    saved = json.loads(paths["results"].read_text())
    assert saved["bench_runs"]["concurrency"]["error"] == "exit 1: boom"
    assert saved["graph_overhead_ms_per_step"] == 1.0
    assert "`concurrency` (exit 1: boom)" in paths["markdown"].read_text()


def test_a_partial_rerun_keeps_the_whole_runs_date_and_names_its_parts() -> None:
    first = bench_run._date("2026-11-27", "2026-11-30", ["quality"])
    assert first == "2026-11-27; re-measured 2026-11-30: quality"
    same_day = bench_run._date(first, "2026-11-30", ["graph_overhead", "quality"])
    assert same_day == "2026-11-27; re-measured 2026-11-30: quality, graph_overhead"
    later = bench_run._date(same_day, "2026-12-02", ["rss"])
    assert later == f"{same_day}; re-measured 2026-12-02: rss"
    assert bench_run._date(later, "2026-12-03", []) == "2026-12-03"  # a whole run


def test_unknown_part_is_refused() -> None:
    with pytest.raises(SystemExit):
        bench_run.main(["--only", "nonsense"])
