"""The experiment commands: compare writes every output, a re-run resumes, report redraws,
export round-trips, and bad input is one line with exit code 2."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.cli import app
from eval.export import read_export
from eval.log import EpisodeLog
from eval.report import PLOTS
from nodes.resources import clear_cache

runner = CliRunner()
SMALL = [
    "--dataset", "synthetic", "--llm", "scripted", "--embeddings", "hashing",
    "--train-users", "2", "--test-users", "2", "--seeds", "0,1", "--max-steps", "4",
    "--train-batch", "2", "--concurrency", "2",
]  # fmt: skip
METHOD_KEYS = {
    "len", "r_each", "r_traj", "pct_oracle", "episodes", "llm_calls_per_episode",
    "prompt_tokens_per_episode", "completion_tokens_per_episode", "seconds_per_episode",
    "quit_reasons",
}  # fmt: skip


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    clear_cache()
    return result


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "cmp"
    result = invoke("compare", "--methods", "random,oracle,react,billp", *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_compare_writes_every_output(compared):
    for name in ("config.json", "episodes.jsonl", "results.json", "results.csv", "results.md"):
        assert (compared / name).is_file(), name
    for plot in PLOTS:
        assert (compared / plot).read_bytes().startswith(b"\x89PNG")
    results = json.loads((compared / "results.json").read_text())
    assert set(results) >= {"config", "methods"}
    assert list(results["methods"]) == ["random", "oracle", "react", "billp"]
    for entry in results["methods"].values():
        assert set(entry) >= METHOD_KEYS
        assert set(entry["r_traj"]) == {"mean", "ci95"}
    md = (compared / "results.md").read_text()
    first_row = next(
        line for line in md.splitlines() if line.startswith("| ") and "method" not in line
    )
    assert first_row.startswith("| oracle")
    assert "test double" in md and "2 test users per seed" in md
    rows = (compared / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + len(EpisodeLog(compared))


def test_rerunning_the_command_resumes_without_new_episodes(compared):
    before = (compared / "episodes.jsonl").read_bytes()
    result = invoke(
        "compare", "--methods", "random,oracle,react,billp", *SMALL, "--out", str(compared)
    )
    assert result.exit_code == 0, result.output
    assert (compared / "episodes.jsonl").read_bytes() == before


def test_report_redraws_from_saved_results(compared):
    (compared / "results.md").unlink()
    (compared / PLOTS[0]).unlink()
    result = invoke("report", "--run", str(compared))
    assert result.exit_code == 0, result.output
    assert (compared / "results.md").is_file() and (compared / PLOTS[0]).is_file()


def test_export_round_trips_the_steps(compared, tmp_path):
    target = tmp_path / "steps.jsonl"
    result = invoke("export", "--run", str(compared), "--format", "jsonl", "--output", str(target))
    assert result.exit_code == 0, result.output
    lines = read_export(target)
    by_episode = defaultdict(list)
    for line in lines:
        by_episode[(line["method"], line["seed"], line["phase"], line["user"])].append(line)
    records = [r for r in EpisodeLog(compared).records() if r["status"] == "ok"]
    assert len(by_episode) == len(records)
    for record in records:
        steps = by_episode[(record["method"], record["seed"], record["phase"], record["user"])]
        assert [s["item"] for s in steps] == [s["item"] for s in record["steps"]]
        assert [s["reward"] for s in steps] == [s["reward"] for s in record["steps"]]
        for n, step in enumerate(steps):
            assert len(step["context"]["episode"]) == n
        if record["method"] == "billp":
            assert all(s["thought"] and s["advantage"] is not None for s in steps)
            assert steps[0]["context"]["history"] == record["history_titles"]
    assert json.loads(target.read_text().splitlines()[0]) == lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--method", "nope", *SMALL], "unknown method"),
        (["run", "--method", "react", *SMALL, "--llm", "bogus"], "unknown LLM spec"),
        (["run", "--method", "react", *SMALL, "--seeds", "a,b"], "--seeds"),
        (["export", "--run", ".", "--format", "csv"], "unknown export format"),
        (["report", "--run", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    result = invoke(*args, *(["--out", str(tmp_path / "x")] if args[0] == "run" else []))
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and needle in result.output
    assert "Traceback" not in result.output


def test_demo_shows_billp_beside_reflexion_on_the_same_users(tmp_path):
    out = tmp_path / "demo"
    result = invoke(
        "demo", "--dataset", "synthetic", "--llm", "scripted", "--embeddings", "hashing",
        "--train-users", "2", "--train-batch", "1", "--test-users", "2", "--max-steps", "3",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert {"billp", "reflexion", "itemcf", "oracle"} <= set(results["methods"])
    assert results["config"]["grounding"] == "shortlist"  # what a 135M model can do
    assert "billp" in results["methods"] and results["methods"]["billp"]["learning"]
    users = defaultdict(set)
    for record in EpisodeLog(out).records():
        if record["phase"] == "test":
            users[record["method"]].add(record["user"])
    assert users["billp"] == users["reflexion"] == users["random"]
    assert (out / "report.html").is_file() and "report.html" in result.output


def test_error_lines_keep_text_in_brackets(capsys) -> None:
    """A message naming CPU flags or a list must not lose them to rich markup."""
    import typer

    from eval.cli_env import fail

    with pytest.raises(typer.Exit):
        fail("crashed on this CPU: EPYC [avx2 amx_int8]; see [README]")
    assert "EPYC [avx2 amx_int8]; see [README]" in capsys.readouterr().err


@pytest.mark.parametrize("width", [80, 200])
def test_results_table_is_whole_at_80_columns(compared, width) -> None:
    """Every method's R_traj (with its CI) and % oracle print in full, never as `25.…`."""
    from rich.console import Console

    from eval.cli_table import print_results
    from eval.report import table_rows

    results = json.loads((compared / "results.json").read_text())
    console = Console(width=width, record=True, file=io.StringIO())
    print_results(results, console)
    text = console.export_text()
    assert all(len(line) <= width for line in text.splitlines()), text
    rows = table_rows(results)
    r_traj, pct = rows[0].index("R_traj"), rows[0].index("% oracle")
    for row in rows[1:]:
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(row[0]))
        assert row[r_traj] in line and row[pct] in line, (row[0], line)
    assert "…" not in text
    assert ("fallback %" in text) and (width > 80 or "results.md" in text)
