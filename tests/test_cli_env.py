"""The `billp env` commands: the card as JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from eval.cli import app

runner = CliRunner()


def test_env_info_json_prints_the_card():
    result = runner.invoke(app, ["env", "info", "--dataset", "synthetic", "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["dataset"] == "synthetic"
    assert card["n_test_users"] >= 100
    assert card["policies"]["oracle"]["r_traj"] > card["policies"]["random"]["r_traj"]
    assert card["logged_items"] == "exclude"
    gap = card["planning_gap"]
    assert gap["myopic"]["len"] < gap["oracle"]["len"]
    assert 0 < card["user_model"]["popularity_auc"] < card["user_model"]["auc"]


def test_env_build_summary_shows_the_new_numbers():
    result = runner.invoke(app, ["env", "build", "--dataset", "synthetic"])
    assert result.exit_code == 0, result.output
    for text in ("logged items", "exclude", "popularity (same check)", "Planning gap", "verdict:"):
        assert text in result.stdout


def test_a_bad_logged_items_value_is_one_clear_line():
    result = runner.invoke(app, ["env", "info", "--dataset", "synthetic", "--logged-items", "x"])
    assert result.exit_code == 2
    assert "logged_items must be one of" in result.output and "Traceback" not in result.output


def test_missing_data_is_one_clear_line_and_exit_2(tmp_path):
    result = runner.invoke(app, ["env", "info", "--dataset", "steam", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "BILLP_DATA" in result.output
    assert "Traceback" not in result.output
