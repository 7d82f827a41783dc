"""The report's memory view: what the learning methods saved, and which entries were used.

Read from each memory's JSON sidecar (`<run>/<method>/seed-<s>/memory/<kind>/entries.json`, the
format of `memory.vector`); the faiss index is never opened and nothing is ever unpickled, so a
report can be made of a run folder from anywhere. A sidecar that is missing, unreadable or of
another format is skipped: the page shows what there is.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.html_data import item_name, json_safe, title_map
from memory.vector import ENTRIES_FILE, FORMAT

MEMORY_KINDS = ("macro", "actor", "critic")
SHOW_REFLECTIONS = 50
SHOW_ENTRIES = 20
# Step fields that may name the memory entry a hint came from (preferred over payload matching).
_HINT_KEY_FIELDS = ("actor_hint_state", "actor_hint_key", "hint_state")
_CRITIC_KEY_FIELDS = ("critic_hint_state", "critic_hint_key")
e = html.escape


def read_entries(folder: Path) -> tuple[list[str], list[Any]] | None:
    """Return (keys, payloads) of a saved memory's JSON sidecar, or None when absent or bad."""
    try:
        data = json.loads((folder / ENTRIES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    keys, payloads = data.get("keys"), data.get("payloads")
    if not isinstance(keys, list) or not isinstance(payloads, list) or len(keys) != len(payloads):
        return None
    return [str(k) for k in keys], payloads


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _uses(
    steps: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    payloads: Sequence[Any],
    key_fields: Sequence[str],
    hint_of: Any,
) -> tuple[Counter, int]:
    """Count, per memory key, the test steps whose prompt carried that entry's hint.

    A step names its entry directly when it records the key; otherwise the hint is matched to
    the one entry with that exact payload. Hints no single entry explains are counted apart.
    """
    by_payload: dict[str, list[str]] = defaultdict(list)
    for key, payload in zip(keys, payloads, strict=True):
        by_payload[_canon(payload)].append(key)
    known = set(keys)
    uses: Counter = Counter()
    unattributed = 0
    for step in steps:
        named = next((step[f] for f in key_fields if isinstance(step.get(f), str)), None)
        if named in known:
            uses[named] += 1
            continue
        hint = hint_of(step)
        if hint is None:
            continue
        owners = by_payload.get(_canon(hint), [])
        if len(owners) == 1:
            uses[owners[0]] += 1
        else:
            unattributed += 1
    return uses, unattributed


def _labels(payload: Any, titles: Mapping[int, str]) -> list[list[Any]]:
    if not isinstance(payload, Mapping):
        return []
    return [[item_name(k, titles), v] for k, v in sorted(payload.items(), key=lambda kv: -kv[1])]


def memory_panels(
    run_dir: Path, methods: Sequence[str], seeds: Sequence[int], records: Sequence[Mapping]
) -> list[dict[str, Any]]:
    """Return one panel per (method, seed) with saved memories: reflections and top entries."""
    titles = title_map(records)
    panels = []
    for method in methods:
        for seed in seeds:
            folder = run_dir / method / f"seed-{seed}" / "memory"
            saved = {kind: read_entries(folder / kind) for kind in MEMORY_KINDS}
            if not any(saved.values()):
                continue
            steps = [
                s
                for r in records
                if r.get("method") == method and int(r.get("seed", -1)) == seed
                if r.get("phase") == "test"
                for s in r.get("steps") or []
            ]
            panel: dict[str, Any] = {"method": method, "seed": seed}
            keys, payloads = saved["macro"] or ([], [])
            panel["n_reflections"] = len(keys)
            panel["reflections"] = [
                {"reflection": p.get("reflection"), "context": p.get("context")}
                for p in payloads[-SHOW_REFLECTIONS:][::-1]  # newest first
                if isinstance(p, Mapping)
            ]
            keys, payloads = saved["actor"] or ([], [])
            uses, loose = _uses(steps, keys, payloads, _HINT_KEY_FIELDS, _actor_hint)
            rows = [
                {"state": k, "labels": _labels(p, titles), "uses": uses.get(k, 0)}
                for k, p in zip(keys, payloads, strict=True)
            ]
            rows.sort(key=lambda row: -row["uses"])
            panel.update(n_actor=len(rows), actor=rows[:SHOW_ENTRIES], actor_unattributed=loose)
            keys, payloads = saved["critic"] or ([], [])
            uses, loose = _uses(steps, keys, payloads, _CRITIC_KEY_FIELDS, _critic_hint)
            rows = [
                {
                    "state": k,
                    "value": p.get("value") if isinstance(p, Mapping) else None,
                    "uses": uses.get(k, 0),
                }
                for k, p in zip(keys, payloads, strict=True)
            ]
            rows.sort(key=lambda row: -row["uses"])
            panel.update(n_critic=len(rows), critic=rows[:SHOW_ENTRIES], critic_unattributed=loose)
            panels.append(json_safe(panel))
    return panels


def _actor_hint(step: Mapping[str, Any]) -> Any:
    hint = step.get("actor_hint")
    return hint if isinstance(hint, Mapping) and hint else None


def _critic_hint(step: Mapping[str, Any]) -> Any:
    value = step.get("critic_hint")
    return {"value": float(value)} if isinstance(value, int | float) else None


def _value(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "–"


def _clip(text: Any, n: int = 150) -> str:
    text = "" if text is None else str(text)
    short = text if len(text) <= n else "…" + text[-n:]  # a state's newest items are at its end
    return f'<span title="{e(text)}">{e(short)}</span>'


def _panel(p: Mapping[str, Any]) -> str:
    key = f"{p['method']}/seed-{p['seed']}"
    refl = "".join(
        f"<li>{e(str(r.get('reflection')))}<br><span class='note'>for a user whose history "
        f"read: {_clip(r.get('context'), 160)}</span></li>"
        for r in p["reflections"]
    )
    actor = "".join(
        f"<tr><td class='num'>{r['uses']}</td><td class='state'>{_clip(r['state'])}</td><td>"
        + ", ".join(f"{'+' if s > 0 else '−'} {e(str(lab))}" for lab, s in r["labels"])
        + "</td></tr>"
        for r in p["actor"]
    )
    critic = "".join(
        f"<tr><td class='num'>{r['uses']}</td><td class='state'>{_clip(r['state'])}</td>"
        f"<td class='num'>{_value(r['value'])}</td></tr>"
        for r in p["critic"]
    )

    def table(head: str, rows: str, what: str) -> str:
        n, loose = p[f"n_{what}"], p[f"{what}_unattributed"]
        if not n:
            return f'<p class="empty">no {what} entries</p>'
        extra = f"; {loose} hinted test steps matched no single entry" if loose else ""
        used = any(r["uses"] for r in p[what])
        which = f"top {len(p[what])} by uses at test" if used else (
            f"no test hint is credited to an entry; the first {len(p[what])} shown"
        )  # fmt: skip
        return (
            f'<p class="note">{n} entries; {which}{extra}</p>'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
            "</table></div>"
        )

    return (
        f'<div class="mem-panel" data-key="{e(key)}"><h3>Reflections (macro memory)</h3>'
        f'<p class="note">{p["n_reflections"]} stored; newest {len(p["reflections"])} shown</p>'
        f"<div class='scroll'><ol class='refl'>{refl}</ol></div><h3>Actor memory (micro)</h3>"
        + table("<th>uses</th><th>state</th><th>labels</th>", actor, "actor")
        + "<h3>Critic memory (micro)</h3>"
        + table("<th>uses</th><th>state</th><th>value</th>", critic, "critic")
        + "</div>"
    )


def memory_section(panels: list[dict[str, Any]]) -> str:
    if not panels:
        inner = '<p class="empty">no saved memories in this run folder</p>'
    else:
        options = "".join(
            f'<option value="{e(p["method"])}/seed-{p["seed"]}">{e(p["method"])} · seed '
            f"{p['seed']}</option>"
            for p in panels
        )
        inner = (
            '<p class="note">What the learning methods saved (read from each '
            "<code>&lt;method&gt;/seed-&lt;s&gt;/memory/*/entries.json</code>). Uses: test steps "
            "whose prompt carried that entry's hint.</p>"
            f'<div class="controls"><label for="sel-memory">memory of</label>'
            f'<select id="sel-memory">{options}</select></div>' + "".join(map(_panel, panels))
        )
    return f'<section id="memory"><h2>Memory</h2>{inner}</section>'
