"""The results table in a terminal: every number whole, as many columns as fit.

Why not let rich squeeze the table: at 80 columns (a log file, CI, a small terminal) it cut
every cell to an ellipsis (`R_e…`, `25.…`), so the first numbers a user saw were unreadable.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from eval.cli_env import out as stdout

TABLE_ALWAYS = ["method", "Len", "R_traj", "% oracle"]
"""Columns the terminal table always shows; the rest come while they fit (all: results.md)."""
TABLE_OPTIONAL = ["fallback %", "R_each", "LLM calls/ep", "s/ep", "fb P/A/C/R", "fallbacks"]


def fit_columns(rows: list[list[str]], keep: list[str], optional: list[str], width: int) -> list:
    """Return `keep` plus the `optional` columns, in order, that fit `width` terminal columns.

    Every cell is shown in full (a table squeezed by rich cuts `25.31` to `25.…`): a column that
    does not fit is left out, and the caller says where the whole table is.
    """

    def size(col: str) -> int:
        k = rows[0].index(col)
        return max(len(r[k]) for r in rows) + 3  # padding and the separator

    chosen, used = list(keep), sum(size(c) for c in keep) + 1
    for col in optional:
        if col in rows[0] and col not in chosen and used + size(col) <= width:
            chosen.append(col)
            used += size(col)
    return chosen


def print_results(results: dict[str, Any], console: Console | None = None) -> None:
    """Print the results table, as many columns as the terminal fits (80 in a log file)."""
    out = console or stdout
    from rich import box
    from rich.markup import escape

    from eval.fallbacks import degraded_lines
    from eval.report import table_rows

    rows = table_rows(results)
    for row in rows[1:]:
        if results["methods"][row[0]]["kind"] == "ceiling":
            row[0] += " (ceiling)"
    llm = any(m["kind"] == "llm" for m in results["methods"].values())
    failed = rows[0].index("failed")
    keep = TABLE_ALWAYS + (["failed"] if any(r[failed] != "0" for r in rows[1:]) else [])
    optional = [c for c in TABLE_OPTIONAL if llm or c not in ("fallback %", "fb P/A/C/R")]
    optional = [c for c in optional if llm or c not in ("fallbacks", "LLM calls/ep")]
    columns = fit_columns(rows, keep, optional, out.width)
    index = [rows[0].index(k) for k in columns]
    c = results["config"]
    title = (
        f"{c['dataset']}: {c['test_users']} test users x {len(c['seeds'])} seed(s), "
        f"test memories {c['learning']}"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows[1:]:
        table.add_row(*(escape(row[k]) for k in index))
    out.print(table)
    shown = set(columns)
    if any(col not in shown for col in rows[0] if col != "kind"):
        out.print("More columns (tokens, hints, replacements): results.md, report.html.",
                  highlight=False)  # fmt: skip
    backend = results["backend"].replace("**", "").replace("`", "")
    out.print(f"LLM backend: {backend}", highlight=False)
    for line in degraded_lines(results):
        out.print(f"[bold red]degraded[/]: {escape(line)}", highlight=False, soft_wrap=True)
