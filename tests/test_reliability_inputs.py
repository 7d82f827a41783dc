"""Malformed datasets: one clear error naming file, row and field; exit code 2 from the CLI.

Each case is a small `--dataset csv` pair (interactions + items) with one defect. The loader is
checked through `build_env`, the function every command calls; the CLI is checked for the
one-line, exit-2, no-traceback contract.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.cli import app
from simulator.build import EnvConfig, build_env
from simulator.datasets import load_dataset
from simulator.types import DataError

N_ITEMS, N_USERS, PER_USER = 20, 6, 6


def items_csv(n: int = N_ITEMS) -> str:
    rows = ["item,title,genres"] + [f"i{i},Game number {i},Action|Puzzle" for i in range(n)]
    return "\n".join(rows) + "\n"


def interactions_csv() -> str:
    rows = ["user,item,rating,timestamp"]
    for u in range(N_USERS):
        rows += [f"u{u},i{(3 * u + k) % N_ITEMS},4,{100 * u + k}" for k in range(PER_USER)]
    return "\n".join(rows) + "\n"


def unknown_ids(text: str) -> str:
    """Point every interaction at an item id the items file does not have."""
    header, *rows = text.splitlines()
    return "\n".join([header, *(r.replace(",i", ",x") for r in rows)]) + "\n"


def non_utf8(text: str, line: int, new: str) -> bytes:
    """Replace line `line` with `new`, encoded so a Latin-1 byte (0xE9) stays invalid UTF-8."""
    return replace_line(text, line, new).encode("utf-8", errors="surrogateescape")


def replace_line(text: str, line: int, new: str) -> str:
    """Replace file line `line` (1 = header) of `text`."""
    lines = text.splitlines()
    lines[line - 1] = new
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    """One defect: how to damage (interactions, items), and what the error must name."""

    damage: Callable[[str, str], tuple[str | bytes, str | bytes]]
    file: str  # "interactions" or "items"
    row: int | None
    field: str | None
    says: str


CASES = {
    "missing column (items)": Case(
        lambda i, t: (i, t.replace("item,title,genres", "item,name,genres")),
        "items", None, "title", "missing column",
    ),
    "missing column (interactions)": Case(
        lambda i, t: (i.replace("user,item,", "user,product,"), t),
        "interactions", None, "item", "missing column",
    ),
    "wrong type (rating)": Case(
        lambda i, t: (replace_line(i, 5, "u0,i4,five,4"), t),
        "interactions", 5, "rating", "expected a number",
    ),
    "wrong type (timestamp)": Case(
        lambda i, t: (replace_line(i, 4, "u0,i3,4,yesterday"), t),
        "interactions", 4, "timestamp", "expected a number",
    ),
    "broken genre list": Case(
        lambda i, t: (i, replace_line(t, 3, "i1,Game number 1,\"['Action', 'Indie'\"")),
        "items", 3, "genres", "genre list",
    ),
    "empty file (items)": Case(lambda i, t: (i, ""), "items", None, None, "empty"),
    "empty file (interactions)": Case(lambda i, t: ("", t), "interactions", None, None, "empty"),
    "header only (interactions)": Case(
        lambda i, t: ("user,item,rating,timestamp\n", t), "interactions", None, None, "no users"
    ),
    "unknown item ids": Case(
        lambda i, t: (unknown_ids(i), t), "interactions", None, None, "no users"
    ),
    "duplicate item ids": Case(
        lambda i, t: (i, replace_line(t, 4, "i0,Another game,Action")),
        "items", 4, "item", "appears twice",
    ),
    "empty title": Case(
        lambda i, t: (i, replace_line(t, 6, "i4, ,Action")), "items", 6, "title", "empty title"
    ),
    "empty user id": Case(
        lambda i, t: (replace_line(i, 3, ",i1,4,1"), t), "interactions", 3, "user", "empty user"
    ),
    "non-UTF-8 bytes (items)": Case(
        lambda i, t: (i, non_utf8(t, 5, "i3,Caf\udce9 game,Action")),
        "items", 5, None, "not valid UTF-8",
    ),
    "non-UTF-8 bytes (interactions)": Case(
        lambda i, t: (i.encode() + b"u9,i1,\xff\xfe,7\n", t),
        "interactions", N_USERS * PER_USER + 2, None, "not valid UTF-8",
    ),
    "unterminated quote": Case(
        lambda i, t: (i, t + 'i99,"A title that never ends,Action\n'),
        "items", None, None, "not a readable CSV",
    ),
}  # fmt: skip


def write_case(tmp_path: Path, case: Case) -> dict[str, Path]:
    inter, items = case.damage(interactions_csv(), items_csv())
    paths = {"interactions": tmp_path / "interactions.csv", "items": tmp_path / "items.csv"}
    for key, data in (("interactions", inter), ("items", items)):
        raw = data.encode("utf-8") if isinstance(data, str) else data
        paths[key].write_bytes(raw)
    return paths


def expect_named(text: str, case: Case, paths: dict[str, Path]) -> None:
    assert "\n" not in text.strip(), f"not one line: {text!r}"
    assert str(paths[case.file]) in text
    assert case.says in text
    if case.row is not None:
        assert f"row {case.row}" in text
    if case.field is not None:
        assert f"field {case.field!r}" in text


def test_the_valid_pair_loads(tmp_path):
    paths = write_case(tmp_path, Case(lambda i, t: (i, t), "items", None, None, ""))
    dataset = load_dataset("csv", **{k: str(v) for k, v in paths.items()})
    assert (dataset.n_users, dataset.n_items) == (N_USERS, N_ITEMS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_dataset_is_one_line_naming_file_row_field(tmp_path, name):
    case = CASES[name]
    paths = write_case(tmp_path, case)
    config = EnvConfig(dataset="csv", dataset_options={k: str(v) for k, v in paths.items()})
    with pytest.raises(DataError) as err:
        build_env(config, cache=tmp_path / "cache")
    expect_named(str(err.value), case, paths)


def test_some_unknown_item_ids_are_dropped_and_counted(tmp_path):
    paths = write_case(tmp_path, Case(lambda i, t: (i, t), "items", None, None, ""))
    paths["interactions"].write_text(
        interactions_csv() + "u0,nope,5,999\nu1,missing,4,999\n", encoding="utf-8"
    )
    dataset = load_dataset("csv", **{k: str(v) for k, v in paths.items()})
    assert dataset.stats["unknown_items"] == 2 and dataset.n_items == N_ITEMS


def test_duplicate_interactions_are_dropped_and_counted(tmp_path):
    paths = write_case(tmp_path, Case(lambda i, t: (i, t), "items", None, None, ""))
    paths["interactions"].write_text(interactions_csv() + "u0,i0,4,999\n", encoding="utf-8")
    dataset = load_dataset("csv", **{k: str(v) for k, v in paths.items()})
    assert dataset.stats["duplicates"] == 1


def test_huge_title_is_refused_naming_row_and_field(tmp_path):
    huge = "Epic " + "very " * 200_000 + "long title"
    case = Case(
        lambda i, t: (i, replace_line(t, 7, f"i5,{huge},Action")), "items", 7, "title", "title"
    )
    paths = write_case(tmp_path, case)
    with pytest.raises(DataError) as err:
        load_dataset("csv", **{k: str(v) for k, v in paths.items()})
    expect_named(str(err.value), case, paths)
    assert len(str(err.value)) < 500


# ---------------------------------------------------------------- the command line

runner = CliRunner()


def cli_takes_csv_paths() -> bool:
    from eval.cli_env import env_info

    params = inspect.signature(env_info).parameters
    return {"interactions", "items"} <= set(params)


def test_csv_without_paths_is_one_clear_error_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("BILLP_CACHE", str(tmp_path))
    result = runner.invoke(app, ["env", "info", "--dataset", "csv"])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and "interactions=" in result.output
    assert "Traceback" not in result.output


def test_cli_error_stays_on_one_line_in_a_narrow_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("BILLP_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "60")
    result = runner.invoke(app, ["env", "info", "--dataset", "csv"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


@pytest.mark.skipif(
    not cli_takes_csv_paths(),
    reason="`billp env info` has no --interactions/--items options, so a csv dataset cannot be "
    "named from the command line",
)
@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_reports_malformed_dataset_in_one_line(tmp_path, monkeypatch, name):
    case = CASES[name]
    paths = write_case(tmp_path, case)
    monkeypatch.setenv("BILLP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "10000")
    args = ["env", "info", "--dataset", "csv"]
    args += ["--interactions", str(paths["interactions"]), "--items", str(paths["items"])]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.startswith("error:")
    expect_named(result.output, case, paths)
