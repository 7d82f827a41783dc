"""Reference-log replay: parsing the reference's run logs, mapping them, and the agreement math.

The metric tests use a six-item world small enough to work every number out by hand: window 2,
item F lies next to item A, and everything else is sqrt(2) apart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from simulator import paths
from simulator.env import UserWorld
from simulator.reference_logs import (
    RefEpisode,
    RefStep,
    TitleIndex,
    UserIndex,
    load_reference_logs,
    map_episodes,
    match_user,
    parse_log_file,
)
from simulator.stats import confusion, pearson, spearman
from simulator.types import DataError, Dataset
from simulator.validate import ReplaySim, positive_users, reference_agreement, validate

H = "The user's viewing history is "
TAIL = ", please recommend item for this user."


def episode_lines(history: list[str], steps: list[tuple], stop: bool = True) -> list[str]:
    """Build traj_by_line: steps are (title, reward) or (asked, executed, reward); the last
    one is the stop step when `stop` (its reward is ignored)."""
    lines = [H + repr(history) + TAIL]
    for t, step in enumerate(steps, start=1):
        asked, executed, reward = step if len(step) == 3 else (step[0], step[0], step[1])
        lines += [f"Thought {t}: the user likes things.", f"Action {t}: recommend[{asked}]"]
        if executed != asked:
            lines.append(
                f"Observation {t}: [{asked}] can not be recommened, instead, recommend[{executed}]"
            )
        if stop and t == len(steps):
            lines.append(f"Observation {t}: Episode finished, User Stop, reward=-1000.000")
        else:
            lines.append(f"Observation {t}: Episode continue, reward={reward}")
    return lines


def write_log(path: Path, episodes: dict[str, tuple[int | str, list[str]]]) -> Path:
    body = {
        k: {"userid": u, "prompt": "", "traj": "", "traj_by_line": lines}
        for k, (u, lines) in episodes.items()
    }
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


# --- parsing ----------------------------------------------------------------------------------


def test_parse_replaced_lines_bracket_titles_and_limit_episodes(tmp_path: Path) -> None:
    history = ["Foo [Bar], Baz", 'It\'s "quoted"', "Plain"]
    stopped = episode_lines(
        history,
        [("Game [Deluxe]", "Other [X], y", 4), ("Plain", 2.5), ("Plain", None)],
    )
    limit = episode_lines(["Plain"], [("A", 5), ("B", 1)], stop=False)
    path = write_log(tmp_path / "amazon_x.json", {"f#1": (12, stopped), "f#2": ("7", limit)})
    first, second = parse_log_file(path)

    assert first.source == "amazon_x.json" and first.key == "f#1" and first.userid == "12"
    assert first.history == tuple(history)
    assert first.steps[0] == RefStep(1, "Game [Deluxe]", "Other [X], y", True, 4.0, False)
    assert first.steps[1] == RefStep(2, "Plain", "Plain", False, 2.5, False)
    assert first.steps[2] == RefStep(3, "Plain", "Plain", False, None, True)
    assert first.ended_by == "stop" and first.length == 2 and first.r_traj == 6.5
    assert second.ended_by == "limit" and second.length == 2 and second.r_traj == 6.0


@pytest.mark.parametrize(
    ("bad", "line", "why"),
    [
        ("Observation 2: Episode keeps going", 6, "unrecognised line"),
        ("Action 3: recommend[Z]", 6, "unexpected 'Action 3'"),
        ("Observation 2: Episode continue, reward=nan", 6, "not a finite number"),
    ],
)
def test_a_malformed_line_names_file_episode_and_line(
    tmp_path: Path, bad: str, line: int, why: str
) -> None:
    lines = episode_lines(["A"], [("A", 5), ("B", None)])
    lines[4:] = ["Action 2: recommend[B]", bad]  # line 6: the second step's outcome
    path = write_log(tmp_path / "steam_bad.json", {"ep-9": (3, lines)})
    with pytest.raises(DataError) as err:
        parse_log_file(path)
    text = str(err.value)
    assert "steam_bad.json" in text and "episode 'ep-9'" in text and f"line {line}" in text
    assert why in text


def test_a_missing_outcome_or_history_is_a_data_error(tmp_path: Path) -> None:
    no_outcome = [H + "['A']", "Action 1: recommend[A]"]
    no_history = ["Action 1: recommend[A]"]
    for key, lines in (("e1", no_outcome), ("e2", no_history)):
        path = write_log(tmp_path / f"amazon_{key}.json", {key: (1, lines)})
        with pytest.raises(DataError, match=rf"amazon_{key}\.json.*episode '{key}'"):
            parse_log_file(path)
    (tmp_path / "amazon_list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object"):
        parse_log_file(tmp_path / "amazon_list.json")


def test_logs_are_picked_by_dataset_prefix_and_file_patterns(tmp_path: Path) -> None:
    lines = episode_lines(["A"], [("A", 5)], stop=False)
    for name in ("amazon_test.json", "amazon_train_1.json", "steam_train_1.json"):
        write_log(tmp_path / name, {name: (1, lines)})
    assert {e.source for e in load_reference_logs(tmp_path, "amazon")} == {
        "amazon_test.json",
        "amazon_train_1.json",
    }
    assert [e.source for e in load_reference_logs(tmp_path, "amazon", ["*train*"])] == [
        "amazon_train_1.json"
    ]
    with pytest.raises(DataError, match=r"no steam_\*\.json log files matching x"):
        load_reference_logs(tmp_path, "steam", ["x"])
    with pytest.raises(DataError, match="folder not found"):
        load_reference_logs(tmp_path / "nope", "steam")


# --- statistics -------------------------------------------------------------------------------


def test_spearman_pearson_and_confusion_known_values() -> None:
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 5, 5, 9]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1])
    for x, y in (([], []), ([1], [2]), ([1, 1, 1], [1, 2, 3]), ([1, 2], [1, 2, 3])):
        assert spearman(x, y) is None and pearson(x, y) is None
    table = confusion([1.4, 4.6, 0.2, 9], [5, 5, 1, 3])
    assert table[0] == [1, 0, 0, 0, 1] and table[4] == [0, 0, 1, 0, 1]  # 0.2 -> 1, 9 -> 5


# --- a hand-made world ------------------------------------------------------------------------

TITLES = ["A", "B", "C", "D", "E", "F"]
LOGGED = {0: [0, 1, 2], 1: [3, 4, 5], 2: [2, 3, 4, 5]}  # users "10", "12", "7"
RATINGS = [[5, 4, 3, 2, 2, 2], [4, 3, 2, 5, 3, 5], [3, 1, 5, 5, 5, 5]]


def tiny_dataset() -> Dataset:
    rows = [(u, i, 1.0, k) for u, items in LOGGED.items() for k, i in enumerate(items)]
    return Dataset(
        name="amazon",
        items=pd.DataFrame({"item": range(6), "title": TITLES, "genres": [[] for _ in TITLES]}),
        interactions=pd.DataFrame(rows, columns=["user", "item", "signal", "order"]),
        users=["10", "12", "7"],
    )


def tiny_vectors() -> np.ndarray:
    vectors = np.eye(6, dtype=np.float32)
    vectors[5] = np.array([1, 0, 0, 0, 0, 0.1]) / math.hypot(1, 0.1)  # F next to A
    return vectors


def tiny_sim() -> ReplaySim:
    vectors = tiny_vectors()
    world = UserWorld(
        ratings=torch.tensor(RATINGS, dtype=torch.float32),
        item_vectors=torch.as_tensor(vectors),
        tau=0.5,
        user_ids=torch.tensor([0, 1, 2]),
        window=2,
    )
    return ReplaySim(
        vectors=vectors,
        tau=0.5,
        window=2,
        max_steps=50,
        world=world,
        popularity=positive_users(tiny_dataset()),
        logged=lambda u: frozenset(LOGGED[u]),
    )


def tiny_episodes(tmp_path: Path) -> list[RefEpisode]:
    e1 = episode_lines(["A", "B", "C"], [("A", 4), ("B", 5), ("C", 3), ("A", 4), ("A", None)])
    e2 = episode_lines(["D", "E", "F"], [("A", 5), ("D", 4), ("F", 3), ("E", 2), ("B", None)])
    e3 = episode_lines(["C", "D", "E", "F"], [("A", 3), ("B", 4), ("C", 5)], stop=False)
    e4 = episode_lines(["A"], [("A", 5), ("F", 5), ("B", None)])  # a Steam-like stranger
    a = write_log(tmp_path / "amazon_a.json", {"e1": (10, e1), "e2": (12, e2), "e3": (7, e3)})
    b = write_log(tmp_path / "amazon_b.json", {"e4": (999, e4)})
    return parse_log_file(a) + parse_log_file(b)


def test_replay_metrics_on_a_hand_made_world(tmp_path: Path) -> None:
    mapped = map_episodes(tiny_episodes(tmp_path), tiny_dataset(), "id")
    assert [m.user.user for m in mapped] == [0, 1, 2, None]
    report = reference_agreement(mapped, tiny_sim(), split=(2, [0, 1]))
    assert report["mapping"]["users"]["reasons"] == {"ok": 3, "id not in dataset": 1}
    u = report["subsets"]["all"]["user_mapped"]
    assert u["episodes"] == 3 and u["users"] == 3 and u["replayed_steps"] == 10
    assert u["logged_share"] == pytest.approx(0.7)  # A,B,C,A,A of "10"; D,F of "12"; none of "7"

    r = u["ratings"]  # both accepted: e1 steps 1-4, e2 steps 1-2, e3 step 1
    assert r["n"] == 7 and r["exact"] == pytest.approx(2 / 7)
    assert r["confusion"][2] == [0, 0, 2, 0, 0]
    assert r["confusion"][3] == [0, 0, 0, 0, 3] and r["confusion"][4] == [0, 0, 0, 2, 0]
    theirs_ranks = [4, 6.5, 1.5, 4, 6.5, 4, 1.5]  # theirs 4,5,3,4,5,4,3 with average ties
    ours_ranks = [6, 3.5, 1.5, 6, 3.5, 6, 1.5]  # ours 5,4,3,5,4,5,3
    assert r["spearman"] == pytest.approx(np.corrcoef(theirs_ranks, ours_ranks)[0, 1])

    q = u["quits"]  # e1: repeat inside the window at 5 (theirs too); e2 similar; e3 low rating
    assert q["reasons"] == {"repeat": 1, "similar": 1, "low_rating": 1}
    assert q["reasons_where_they_continued"] == {"similar": 1, "low_rating": 1}
    assert q["ours"] == 3 and q["share_ours_where_they_continued"] == pytest.approx(2 / 3)
    assert q["theirs"] == 2 and q["theirs_reached"] == 1 and q["theirs_where_we_also_quit"] == 1

    length = u["length"]  # e1 step 4 repeats A outside the window: accepted
    assert length["ours"]["len"] == pytest.approx(7 / 3)
    assert length["ours"]["r_traj"] == pytest.approx(29 / 3)
    assert length["theirs"]["len"] == pytest.approx(11 / 3) and length["theirs"]["r_traj"] == 14
    assert length["ours"]["hist"] == {"1": 1, "2": 1, "4": 1}
    assert length["theirs"]["hist"] == {"3": 1, "4": 2}
    pop = [1, 1, 2, 1, 1, 2, 1]  # distinct positive users of A,B,C,A, A,D, A
    assert u["popularity"]["spearman_ours"] == pytest.approx(spearman([5, 4, 3, 5, 4, 5, 3], pop))

    items = report["subsets"]["all"]["items"]  # e4's user is unknown: it counts here only
    assert items["all"]["episodes"] == 4
    assert items["all"]["continue_steps"] == 9 and items["all"]["similar_on_continue"] == 2 / 9
    assert items["all"]["quit_steps"] == 3 and items["all"]["similar_on_quit"] == 1 / 3
    b = items["per_file"]["amazon_b.json"]
    assert b["similar_on_continue"] == 1.0 and b["similar_on_quit"] == 0.0
    assert b["theirs_len"] == 2 and b["theirs_r_traj"] == 10
    assert items["all"]["repeats"]["in_window_quit"] == 1
    assert items["all"]["repeats"]["out_window_continue"] == 1
    assert items["all"]["repeats"]["in_window_continue"] == 0

    even, odd = report["subsets"]["userid % 2 == 0"], report["subsets"]["userid % 2 == 1"]
    assert even["user_mapped"]["episodes"] == 2 and odd["user_mapped"]["episodes"] == 1
    assert odd["items"]["all"]["episodes"] == 2  # "7" and the stranger "999"
    json.dumps(report)  # JSON-native throughout


def test_unmapped_titles_cut_the_replay_and_wrong_histories_reject_an_id(tmp_path: Path) -> None:
    lines = episode_lines(["A", "B", "C"], [("A", 5), ("Zed", 4), ("B", None)])
    colliding = episode_lines(["D", "E", "F"], [("A", 5), ("B", 4)], stop=False)
    path = write_log(tmp_path / "amazon_c.json", {"k": (10, lines), "c": (10, colliding)})
    cut, wrong = map_episodes(parse_log_file(path), tiny_dataset(), "id")
    assert cut.items == (0,) and cut.cut_at == 2 and cut.unmapped == "Zed"
    assert wrong.user.user is None and wrong.user.reason == "history share below threshold"
    report = reference_agreement([cut, wrong], tiny_sim())
    assert report["mapping"]["episodes_cut"] == 1 and report["mapping"]["unmapped_examples"] == [
        "Zed"
    ]
    u = report["subsets"]["all"]["user_mapped"]
    assert u["episodes"] == 1 and u["cut_before_our_quit"] == 1
    assert u["length"]["theirs"]["len"] == 1  # their Len over the replayed prefix
    assert u["length"]["theirs_full_log"]["len"] == 2


def test_history_matching_needs_a_clear_best_user() -> None:
    ds = tiny_dataset()
    titles, users = TitleIndex(ds), UserIndex.from_dataset(ds)

    def ep(history: list[str]) -> RefEpisode:
        return RefEpisode("steam_x.json", "k", "whoever", tuple(history), (), "limit")

    assert match_user(ep(["A", "B", "C"]), titles, users, "history").user == 0
    # D, E, F: "12" and "7" both hold all three -> no unique best
    assert (
        match_user(ep(["D", "E", "F"]), titles, users, "history").reason == "no unique best match"
    )
    assert match_user(ep(["A", "B"]), titles, users, "history").reason == "too few shown titles map"


class FakeModel:
    """Duck-types what the replay reads from a UserModel: item vectors and a score matrix."""

    def item_vectors(self) -> torch.Tensor:
        return torch.as_tensor(tiny_vectors()) * 3  # distance_vectors normalizes them again

    def score_matrix(self, users: torch.Tensor) -> torch.Tensor:
        return torch.tensor(RATINGS, dtype=torch.float32)[users]


def test_validate_builds_its_world_from_the_bundle(tmp_path: Path) -> None:
    bundle = SimpleNamespace(
        dataset=tiny_dataset(),
        gt_model=FakeModel(),
        gt_calibrator=lambda scores, integer: scores,
        tau=0.5,
        config=SimpleNamespace(window=2, max_steps=50),
        logged=lambda u: frozenset(LOGGED[u]),
    )
    report = validate(bundle, tiny_episodes(tmp_path))  # type: ignore[arg-type]
    assert report["user_match"] == "id" and report["simulator"]["window"] == 2
    u = report["subsets"]["all"]["user_mapped"]
    assert u["ratings"]["n"] == 7 and u["quits"]["ours"] == 3


# --- the command ------------------------------------------------------------------------------


def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    from eval.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["env", "validate", "--reference-logs", str(tmp_path / "x")])
    assert result.exit_code == 2 and "folder not found" in result.output
    assert "Traceback" not in result.output
    args = ["env", "validate", "--reference-logs", str(tmp_path), "--split", "4:9"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--split must be" in result.output


# --- the real logs ----------------------------------------------------------------------------


def real_logs() -> Path:
    root = paths.data_dir()
    if root is None or not (root / "reference_logs").is_dir() or not (root / "amazon").is_dir():
        pytest.skip("real data not found: set BILLP_DATA to the shared data folder")
    return root


@pytest.mark.data
@pytest.mark.slow
def test_real_logs_parse_and_map() -> None:
    from simulator.datasets import load_dataset

    root = real_logs()
    amazon = load_reference_logs(root / "reference_logs", "amazon", ["amazon_test*"])
    steam = load_reference_logs(root / "reference_logs", "steam")
    assert len(amazon) == 93 and len(steam) == 300
    mapped = map_episodes(amazon, load_dataset("amazon", root), "id")
    assert sum(m.user.user is not None for m in mapped) >= 85
    assert all(m.user.share == 1.0 for m in mapped if m.user.user is not None)


@pytest.mark.data
@pytest.mark.slow
def test_real_amazon_replay_end_to_end(tmp_path: Path) -> None:
    from eval.cli import app

    root = real_logs()
    out = tmp_path / "report.json"
    args = ["env", "validate", "--reference-logs", str(root / "reference_logs"), "-d", "amazon"]
    args += ["--files", "amazon_test_even_users.json", "--split", "4:0,2", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    report = json.loads(out.read_text())["reference_agreement"]
    u = report["subsets"]["all"]["user_mapped"]
    assert u["episodes"] >= 85 and u["ratings"]["n"] > 100
    assert set(report["subsets"]) == {"all", "userid % 4 == 0", "userid % 4 == 2"}
