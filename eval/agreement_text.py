"""Render a `simulator.validate` agreement report as plain lines that fit 80 columns.

Why plain text and not a rich table: the report is read in terminals and pasted into issues and
BENCHMARKS notes, where a box-drawn table of long log-file names wraps into noise.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

WIDTH = 80


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _wrap(text: str, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ")


def _hist(hist: Mapping[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in hist.items())


def short_name(name: str) -> str:
    """Return a log file's name without the model tag every reference log carries."""
    return name.removesuffix(".json").replace("_gpt-3.5-turbo-16k_0.5", "")


def _mapping_lines(report: Mapping[str, Any]) -> list[str]:
    m, users = report["mapping"], report["mapping"]["users"]
    examples = ", ".join(repr(t) for t in m["unmapped_examples"][:4])
    lines = _wrap(
        f"titles: {m['steps_mapped']}/{m['steps']} executed steps map; "
        f"{m['unmapped_titles']} titles do not (e.g. {examples or 'none'}); "
        f"{m['episodes_cut']} episodes replayed only up to their first unmapped title "
        f"({m['episodes_cut_at_step_1']} at step 1); {m['loose_title_steps']} steps mapped by "
        f"the loose title key; {m['replaced_steps']} steps were replaced by their grounding; "
        f"{m['ended_by_limit']} episodes ended by the step limit.",
        "",
    )
    lines += _wrap(
        f"users ({report['user_match']}): {users['episodes_mapped']}/{m['episodes']} episodes "
        f"map, {users['distinct']} users; unmapped: "
        f"{_counts({k: v for k, v in users['reasons'].items() if k != 'ok'})}; best history "
        f"share mean {_num(users['history_share_best_mean'])} (threshold {users['threshold']}).",
        "",
    )
    return lines


def _user_lines(u: Mapping[str, Any]) -> list[str]:
    r, q, p, length = u["ratings"], u["quits"], u["popularity"], u["length"]
    ours, theirs, full = length["ours"], length["theirs"], length["theirs_full_log"]
    lines = [
        f"  {u['episodes']} replayed episodes, {u['users']} users, {u['replayed_steps']} steps; "
        f"{_pct(u['logged_share'])} of items were the user's own",
        f"  ratings on {r['n']} steps both accepted: Spearman {_num(r['spearman'], '+.2f')}, "
        f"Pearson {_num(r['pearson'], '+.2f')}, exact {_pct(r['exact'])}",
        f"    mean rating ours {_num(r['ours_mean'])}, theirs {_num(r['theirs_mean'])}",
        "    confusion (rows: their rating 1-5, columns: ours 1-5):",
    ]
    lines += [
        f"      {k}: " + " ".join(f"{c:4d}" for c in row) for k, row in enumerate(r["confusion"], 1)
    ]
    lines += _wrap(
        f"Len ours {_num(ours['len'])} vs theirs {_num(theirs['len'])}; R_traj ours "
        f"{_num(ours['r_traj'])} vs theirs {_num(theirs['r_traj'])} (their whole log: Len "
        f"{_num(full['len'])}, R_traj {_num(full['r_traj'])})"
    )
    lines += _wrap(f"Len histogram ours:   {_hist(ours['hist'])}", "    ")
    lines += _wrap(f"Len histogram theirs: {_hist(theirs['hist'])}", "    ")
    lines += _wrap(
        f"quits: {q['ours_where_they_continued']}/{q['ours']} of ours where theirs continued "
        f"({_pct(q['share_ours_where_they_continued'])}); {q['theirs_where_we_also_quit']}/"
        f"{q['theirs_reached']} of their quits we reached where we also quit "
        f"({_pct(q['share_theirs_where_we_also_quit'])}; {q['theirs']} in all)",
    )
    lines += _wrap(
        f"our quit reasons: {_counts(q['reasons'])}; where theirs continued: "
        f"{_counts(q['reasons_where_they_continued'])}",
        "    ",
    )
    lines += _wrap(
        f"rating~popularity Spearman, both accepted: ours {_num(p['spearman_ours'], '+.2f')}, "
        f"theirs {_num(p['spearman_theirs'], '+.2f')}; every mapped step: ours "
        f"{_num(p['spearman_ours_all_steps'], '+.2f')}, theirs "
        f"{_num(p['spearman_theirs_all_continues'], '+.2f')}",
    )
    return lines


def _item_lines(items: Mapping[str, Any]) -> list[str]:
    lines = [
        "  item-only (our similarity rule on their executed sequence, t >= 2):",
        f"    {'log file':<38} {'eps':>4} {'Len':>5} {'R_traj':>6} {'sim@cont':>8} {'sim@quit':>8}",
    ]
    rows = [*items["per_file"].items()]
    if len(rows) > 1:
        rows.append(("all files", items["all"]))
    for name, m in rows:
        lines.append(
            f"    {short_name(name)[:38]:<38} {m['episodes']:>4} {_num(m['theirs_len']):>5} "
            f"{_num(m['theirs_r_traj'], '.1f'):>6} {_pct(m['similar_on_continue']):>8} "
            f"{_pct(m['similar_on_quit']):>8}"
        )
    rep = items["all"]["repeats"]
    lines += _wrap(
        f"their repeats inside the window: {rep['in_window_continue']} continued, "
        f"{rep['in_window_quit']} quit; outside it: {rep['out_window_continue']} continued, "
        f"{rep['out_window_quit']} quit",
        "    ",
    )
    return lines


def agreement_lines(report: Mapping[str, Any]) -> list[str]:
    """Return the summary of an agreement report, one string per line, each <= 80 columns."""
    sim = report["simulator"]
    lines = [
        f"Reference agreement on {report['dataset']} (tau {sim['tau']:.4f}, window "
        f"{sim['window']}, max steps {sim['max_steps']})",
        *_mapping_lines(report),
    ]
    for name, sub in report["subsets"].items():
        lines += ["", f"[{name}]"]
        if sub["user_mapped"] is None:
            lines.append("  no episode's user maps: only the item-only checks apply")
        else:
            lines += _user_lines(sub["user_mapped"])
        lines += _item_lines(sub["items"])
    return lines
