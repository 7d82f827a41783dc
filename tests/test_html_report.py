"""The HTML run report: self-contained, complete, and working in a real browser.

The browser tests drive Debian's headless Chromium (installed by `make install`) through
Playwright with `executable_path`, so nothing is downloaded; they open the report of a small
scripted run from disk, check the DOM, and save a screenshot beside the run (report.png).
"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from eval.cli import app
from eval.html_data import learning_curves, pack, trajectories, unpack
from eval.html_memory import memory_panels
from eval.html_report import REPORT_HTML, write_html
from eval.log import EpisodeLog
from eval.protocol import CONFIG_FILE, RunConfig
from memory.vector import VectorMemory
from nodes.resources import clear_cache

METHODS = ["random", "react", "reflexion", "billp"]
SMALL = [
    "--methods", ",".join(METHODS), "--dataset", "synthetic", "--llm", "scripted",
    "--embeddings", "hashing", "--train-users", "4", "--test-users", "3", "--max-steps", "5",
]  # fmt: skip


class Loads(HTMLParser):
    """Collect every URL the page would load: src/href of any tag but <a>, and CSS url()."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster") and tag != "a":
                self.urls.append(value or "")


SHOWN = "document.querySelector('#traj-table').dataset.user"  # the user the browser shows


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    clear_cache()
    return result


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html") / "run"
    result = invoke("compare", *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def _record(method, seed, phase, user, index, r_traj, **extra):
    steps = [{"step": 1, "item": 7, "title": "Seven", "rating": 4.0, "reward": r_traj}]
    return {
        "method": method, "seed": seed, "phase": phase, "user": user, "index": index,
        "status": "ok", "r_traj": r_traj, "len": 1, "steps": steps, **extra,
    }  # fmt: skip


def test_blocks_round_trip_and_group_every_method_of_a_user():
    records = [
        _record("billp", 0, "train", 5, 0, 1.0),
        _record("billp", 0, "test", 9, 1, 2.0),
        _record("random", 0, "test", 9, 1, 3.0),
        _record("billp", 0, "test", 4, 0, 4.0),
        _record("billp", 1, "test", 4, 0, 5.0),
    ]
    records[1]["steps"][0].update(candidates=[7, 99], hint_check={"7": True})
    index, blocks = trajectories(records, ["billp", "random"])
    assert list(index["phases"]) == ["test", "train"]  # test first: the page opens on it
    assert [row[0] for row in index["phases"]["test"]["0"]] == [4, 9]  # the run's user order
    _, block, scores = index["phases"]["test"]["0"][1]
    assert scores == {"billp": 2.0, "random": 3.0}
    group = unpack(blocks[block])["test/0/9"]
    assert set(group) == {"billp", "random"}
    assert group["random"]["steps"][0]["title"] == "Seven"
    # Candidates are named by any title the run recorded for them.
    assert group["billp"]["steps"][0]["candidates"] == ["Seven", "item 99"]
    assert group["billp"]["steps"][0]["hint_check"] == {"Seven": True}
    assert unpack(pack({"x": float("nan")})) == {"x": None}


def test_learning_curves_average_batches_over_seeds_and_fall_back_to_results():
    records = [
        _record("billp", 0, "train", 1, 0, 2.0, batch=0),
        _record("billp", 0, "train", 2, 1, 4.0, batch=0),
        _record("billp", 0, "train", 3, 2, 6.0, batch=1),
        _record("billp", 1, "train", 1, 0, 4.0, batch=0),
        _record("billp", 1, "train", 2, 1, 8.0, batch=1),
        _record("billp", 0, "test", 5, 0, 9.0),
    ]
    results = {
        "methods": {
            "billp": {"r_traj": {"mean": 9.0}},
            "reflexion": {"r_traj": {"mean": 1.0}, "learning": {"train_curve": [1.5, 2.5]}},
            "random": {"r_traj": {"mean": 0.5}},
        }
    }
    curves = learning_curves(records, results, train_batch=2)
    assert curves["billp"]["curve"] == [3.5, 7.0]  # seed 0: 3, 6; seed 1: 4, 8
    assert curves["billp"]["test"] == 9.0
    assert curves["reflexion"]["curve"] == [1.5, 2.5]
    assert "random" not in curves


def _save_memory(folder: Path, keys: list[str], payloads: list) -> None:
    memory = VectorMemory(4, meta={"kind": folder.name, "embeddings": "hashing"})
    vectors = np.eye(4, dtype="float32")[: len(keys)]
    memory.add(keys, vectors, payloads)
    memory.save(folder)


def test_memory_panels_count_uses_and_skip_unreadable_sidecars(tmp_path):
    memory = tmp_path / "billp" / "seed-0" / "memory"
    _save_memory(memory / "actor", ["state a", "state b"], [{"7": 1}, {"8": -1, "7": 1}])
    _save_memory(memory / "critic", ["state a", "state b"], [{"value": 2.0}, {"value": 2.0}])
    _save_memory(memory / "macro", ["r1"], [{"reflection": "vary genres", "context": "h"}])
    broken = tmp_path / "reflexion" / "seed-0" / "memory" / "macro"
    broken.mkdir(parents=True)
    (broken / "entries.json").write_bytes(b"\x80\x04\x95 not json, maybe a pickle")
    hinted = {"step": 1, "item": 7, "title": "Seven", "actor_hint": {"8": -1, "7": 1}}
    steps = [hinted, {**hinted, "critic_hint": 2.0}, {"step": 3, "item": 8, "title": "Eight"}]
    records = [{"method": "billp", "seed": 0, "phase": "test", "user": 1, "steps": steps}]
    panels = memory_panels(tmp_path, ["reflexion", "billp"], [0], records)
    assert [p["method"] for p in panels] == ["billp"]  # the unreadable sidecar is skipped
    panel = panels[0]
    assert panel["n_actor"] == 2 and panel["actor"][0]["state"] == "state b"
    assert panel["actor"][0]["uses"] == 2
    assert panel["actor"][0]["labels"] == [["Seven", 1], ["Eight", -1]]
    # Two critic entries hold 2.0: the hint is counted apart, never guessed.
    assert panel["critic_unattributed"] == 1 and all(r["uses"] == 0 for r in panel["critic"])
    assert panel["reflections"] == [{"reflection": "vary genres", "context": "h"}]


def test_results_table_shows_audit_columns_when_present_and_dashes_otherwise(tmp_path):
    config = RunConfig(methods=["billp", "random"], llm="scripted", embeddings="hashing")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    stat = {"mean": 5.0, "ci95": 1.25}
    learning = {
        "actor_hint_rate": 0.25, "critic_hint_rate": 0.125, "reflections_per_episode": 2.0,
        "hint_precision": {"plus": 0.8, "minus": 0.4, "n_plus": 5, "n_minus": 3},
        "differs_from": {"reflexion": 0.5},
    }  # fmt: skip
    results = {
        "config": config.to_dict(),
        "backend": "`scripted`: a **test double**",
        "methods": {
            "billp": {
                "kind": "llm", "r_traj": stat, "len": stat, "r_each": stat,
                "fallback_rate": 0.1, "fallbacks": {"actor": 3, "critic": 0, "total": 3},
                "degraded": True, "degraded_reason": "actor fell back on 10% of steps",
                "learning": learning,
            },
            "random": {"kind": "floor", "r_traj": {"mean": 1.0, "ci95": None}},
        },
    }  # fmt: skip
    text = write_html(tmp_path, results).read_text()
    billp = re.search(r'<tr data-method="billp">(.*?)</tr>', text).group(1)
    expected = ("5.00 ± 1.25", "10%", "actor 3", "25%", "12%", "+ 0.80 (n=5)", "− 0.40 (n=3)",
                "reflexion 50%", 'title="actor fell back on 10% of steps"')  # fmt: skip
    for cell in expected:
        assert cell in billp, cell
    assert "critic 0" not in billp and "total" not in billp  # only the nodes that fell back
    random_row = re.search(r'<tr data-method="random">(.*?)</tr>', text).group(1)
    assert "1.00" in random_row and random_row.count("<td>–</td>") >= 8
    assert "<b>test double</b>" in text


def test_report_command_writes_a_self_contained_page(small_run):
    (small_run / REPORT_HTML).unlink()
    result = invoke("report", "--run", str(small_run))
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    page = (small_run / REPORT_HTML).read_text()
    loads = Loads()
    loads.feed(page)
    css_urls = [u.strip("'\" ") for u in re.findall(r"url\(([^)]*)\)", page)]
    for url in loads.urls + css_urls:  # '#id': a reference inside the page's own SVG
        assert url.startswith(("data:", "#")), url
    assert sum(u.startswith("data:image/png;base64,") for u in loads.urls) == 3  # the plots
    assert "@import" not in page
    assert re.search(r'<table class="results" id="results-table">', page)
    assert "<svg" in page  # the learning curve
    # Per-step detail is stored compressed: a plan's text is not in the page as written.
    billp = next(r for r in EpisodeLog(small_run).records() if r["method"] == "billp")
    assert billp["steps"][0]["thought"] not in page


def _chromium():
    if shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists():
        pytest.skip("/usr/bin/chromium is missing: `make install` installs it (as root)")
    pytest.importorskip("playwright", reason="playwright is a dev dependency: make install")
    from bench.html_report import chromium

    return chromium


def test_page_opens_on_the_first_test_user_and_switches_users_in_chromium(small_run):
    chromium = _chromium()
    page_path = write_html(small_run)
    tests = [r for r in EpisodeLog(small_run).records() if r["phase"] == "test"]
    users = [r["user"] for r in sorted(tests, key=lambda r: r["index"]) if r["method"] == "billp"]
    by_method = {(r["method"], r["user"]): r for r in tests if r["seed"] == 0}
    with chromium((1600, 1000)) as page:
        errors: list[str] = []
        requests: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", lambda req: requests.append(req.url))
        page.goto(page_path.resolve().as_uri())
        page.wait_for_function("document.documentElement.dataset.ready", timeout=30_000)
        assert page.evaluate("document.documentElement.dataset.ready") == "1", errors
        assert page.locator("#results-table tbody tr").count() == len(METHODS)
        table = page.locator("#traj-table")
        assert table.get_attribute("data-user") == str(users[0])
        shown = page.locator("#traj-table thead th[data-method]").evaluate_all(
            "els => els.map(e => e.dataset.method)"
        )
        assert shown[: len(METHODS)] == METHODS and "oracle" in shown
        depth = max(len(by_method[(m, users[0])]["steps"]) for m in shown)
        assert page.locator("#traj-table tbody tr").count() >= depth
        first_plan = by_method[("billp", users[0])]["steps"][0]["thought"]
        assert first_plan in table.inner_text()

        page.select_option("#sel-user", index=2)
        page.wait_for_function(
            f"document.querySelector('#traj-table').dataset.user == '{users[2]}'"
        )
        billp = by_method[("billp", users[2])]
        header = page.locator('#traj-table thead th[data-method="billp"]').inner_text()
        assert f"R_traj {billp['r_traj']:.1f}" in header
        assert billp["steps"][-1]["title"] in page.locator("#traj-table").inner_text()
        assert "reflections shown" in header  # billp read reflections written in training

        page.select_option("#sel-memory", "billp/seed-0")
        assert page.locator('.mem-panel[data-key="billp/seed-0"]').is_visible()
        assert not page.locator('.mem-panel[data-key="reflexion/seed-0"]').is_visible()
        page.select_option("#sel-user", index=0)
        page.wait_for_function(
            f"document.querySelector('#traj-table').dataset.user == '{users[0]}'"
        )
        page.screenshot(path=str(small_run / "report.png"), full_page=True)
    assert errors == []
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
    assert (small_run / "report.png").read_bytes().startswith(b"\x89PNG")
