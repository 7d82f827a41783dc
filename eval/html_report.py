"""Write report.html: one self-contained page that shows what every method of a run did.

A researcher's first question after a run is what the agent actually did and why the user left;
episodes.jsonl answers it, but not readably, and LangGraph Studio's page needs a network. This
page needs nothing but a browser and the file: its CSS and JavaScript are inline, its plots are
inline SVG or PNG data URIs, and it loads no script, stylesheet, image or font from anywhere.

Sections: the results table (with CIs, fallback and hint-rate columns when results.json has
them), the plots, learning curves (R_traj per training batch), a trajectory browser (every
method's episode for one user side by side, step by step; it opens on the first test user of the
first seed), and the memories the learning methods saved. The step detail is stored compressed
and inflated on demand (see eval/html_data.py), so big runs open fast.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval.html_data import learning_curves, method_order, trajectories
from eval.html_memory import memory_panels, memory_section
from eval.log import EPISODES_FILE, EpisodeLog
from eval.protocol import CONFIG_FILE, RunConfig
from eval.report import PLOTS, method_kind
from storage.files import atomic_write_bytes

REPORT_HTML = "report.html"
ASSETS = Path(__file__).with_name("html_assets")
# Step fields that may carry the actor hint's distance (squared L2 between unit vectors).
DISTANCE_FIELDS = ("hint_distance", "actor_hint_sq_l2", "actor_hint_distance", "hint_sq_l2")
PLOT_CAPTIONS = {
    "r_traj.png": "R_traj per method (mean ± 95% CI)",
    "cumulative_reward.png": "mean cumulative reward by step",
    "quit_reasons.png": "why sessions ended",
}
e = html.escape


def write_html(run_dir: str | Path, results: Mapping[str, Any] | None = None) -> Path:
    """Write `<run_dir>/report.html` (atomically) and return its path.

    `results` is the results.json object (as `eval.report.render` returns it); when None it is
    read from the run folder, so call this after `render`.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    if results is None:
        results_file = run_dir / "results.json"
        if not results_file.is_file():
            raise FileNotFoundError(f"{results_file} is missing: run `billp report --run DIR`")
        results = json.loads(results_file.read_text(encoding="utf-8"))
    config = RunConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")))
    records = EpisodeLog(run_dir).records() if (run_dir / EPISODES_FILE).is_file() else []
    page = build_html(run_dir, results, records, config)
    path = run_dir / REPORT_HTML
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def build_html(
    run_dir: Path, results: Mapping[str, Any], records: list[dict[str, Any]], config: RunConfig
) -> str:
    """Return the whole page as text."""
    methods = method_order(config.methods, records)
    index, blocks = trajectories(records, methods)
    kinds = {m: (results.get("methods", {}).get(m) or {}).get("kind") for m in methods}
    kinds = {m: k or method_kind(m) for m, k in kinds.items()}
    data = {"index": index, "kinds": kinds, "distance_fields": list(DISTANCE_FIELDS)}
    curves = learning_curves(records, results, config.train_batch)
    panels = memory_panels(run_dir, methods, config.seeds, records)
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    js = (ASSETS / "report.js").read_text(encoding="utf-8")
    title = f"BiLLP run report: {config.dataset} ({run_dir.name})"
    block_tags = "\n".join(
        f'<script type="application/octet-stream" id="blk-{i}">{b}</script>'
        for i, b in enumerate(blocks)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{css}</style></head><body>",
        _header(title, results, config, len(records)),
        '<nav class="toc"><a href="#results">Results</a><a href="#trajectories">Trajectories</a>'
        '<a href="#plots">Plots</a><a href="#learning">Learning</a><a href="#memory">Memory</a>'
        "</nav><main>",
        _results_section(results),
        _trajectory_section(),
        _plots_section(run_dir),
        _learning_section(curves, config.train_batch),
        memory_section(panels),
        "</main>",
        f'<script type="application/json" id="billp-data">{_script_json(data)}</script>',
        block_tags,
        f"<script>{js}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _script_json(data: Any) -> str:
    """Return JSON safe inside a <script> element (no '</' can close it early)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _markdown_inline(text: str) -> str:
    """Render the backend line's **bold** and `code` (results.json writes it for markdown)."""
    out = e(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _header(title: str, results: Mapping[str, Any], config: RunConfig, n: int) -> str:
    c = config
    seeds = ", ".join(str(s) for s in c.seeds)
    learning = "frozen (read-only)" if not c.continual else "continual (still learning)"
    backend = _markdown_inline(str(results.get("backend", c.llm)))
    items = [
        f"LLM backend: {backend}; temperature {c.temperature:g}",
        f"embeddings <code>{e(c.embeddings)}</code>, grounding <code>{e(c.grounding)}</code>, "
        f"critic <code>{e(c.critic)}</code>",
        f"{c.train_users} training users (batches of {c.train_batch}), {c.test_users} test "
        f"users per seed, seeds {e(seeds)}, at most {c.max_steps} steps; test memories {learning}",
        f"{n} episodes recorded; files beside this page: "
        '<a href="results.json">results.json</a>, <a href="results.csv">results.csv</a>, '
        '<a href="episodes.jsonl">episodes.jsonl</a>',
    ]
    lis = "".join(f"<li>{i}</li>" for i in items)
    return f'<header class="top"><h1>{e(title)}</h1><ul>{lis}</ul></header>'


def _ci(stat: Any, digits: int = 2) -> str:
    if not isinstance(stat, Mapping) or stat.get("mean") is None:
        return "–"
    if stat.get("ci95") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def _num(value: Any, digits: int = 1, pct: bool = False) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    return f"{100 * value:.0f}%" if pct else f"{value:.{digits}f}"


def _node_fallbacks(entry: Mapping[str, Any]) -> str:
    """Render the per-node fallback breakdown (nodes that fell back), whatever its key."""
    for key, value in entry.items():
        if key.startswith("fallback") and isinstance(value, Mapping) and value:
            pct = "rate" in key
            shown = [
                f"{e(str(k))} {v if isinstance(v, int) else _num(v, 2, pct)}"
                for k, v in value.items()
                if k != "total" and isinstance(v, int | float) and v
            ]
            return "<br>".join(shown)
    return ""


def _precision(value: Any) -> str:
    if not isinstance(value, Mapping):
        return "–"
    plus = f"+ {_num(value.get('plus'), 2)} (n={value.get('n_plus', '–')})"
    minus = f"− {_num(value.get('minus'), 2)} (n={value.get('n_minus', '–')})"
    return f"{plus}<br>{minus}"


def _differs(value: Any) -> str:
    if not isinstance(value, Mapping) or not value:
        return "–"
    return "<br>".join(f"{e(str(k))} {_num(v, pct=True)}" for k, v in value.items())


RESULT_HEADERS = (
    "method", "kind", "Len", "R_each", "R_traj", "% oracle", "episodes", "failed",
    "LLM calls/ep", "tokens/ep", "s/ep", "replaced", "fallback rate", "actor hint rate",
    "critic hint rate", "reflections/ep", "hint precision", "differs from",
)  # fmt: skip


def _result_row(name: str, m: Mapping[str, Any]) -> str:
    llm = m.get("kind") == "llm"
    tokens = None
    if isinstance(m.get("prompt_tokens_per_episode"), int | float):
        tokens = m["prompt_tokens_per_episode"] + (m.get("completion_tokens_per_episode") or 0)
    learn = m.get("learning") if isinstance(m.get("learning"), Mapping) else {}
    flag = ""
    if m.get("degraded"):
        why = m.get("degraded_reason") or m["degraded"]
        why = why if isinstance(why, str) else json.dumps(why)
        flag = f'<span class="badge" title="{e(why)}">degraded</span>'
    fallback = _num(m.get("fallback_rate"), pct=True)
    if isinstance(m.get("train_fallback_rate"), int | float):
        fallback += f" (train {_num(m['train_fallback_rate'], pct=True)})"
    if nodes := _node_fallbacks(m):
        fallback += f'<br><span class="note">{nodes}</span>'
    cells = [
        f'<td class="name">{e(name)}{flag}</td>',
        f'<td class="kind">{e(str(m.get("kind", "–")))}</td>',
        f"<td>{_ci(m.get('len'))}</td>",
        f"<td>{_ci(m.get('r_each'), 3)}</td>",
        f"<td>{_ci(m.get('r_traj'))}</td>",
        f"<td>{_num(m.get('pct_oracle'))}</td>",
        f"<td>{e(str(m.get('episodes', '–')))}</td>",
        f"<td>{e(str(m.get('failed_episodes', '–')))}</td>",
        f"<td>{_num(m.get('llm_calls_per_episode')) if llm else '–'}</td>",
        f"<td>{_num(tokens, 0) if llm else '–'}</td>",
        f"<td>{_num(m.get('seconds_per_episode'), 3)}</td>",
        f"<td>{_num(m.get('grounding_replacement_rate'), pct=True) if llm else '–'}</td>",
        f'<td class="wrap">{fallback if llm else "–"}</td>',
        f"<td>{_num(learn.get('actor_hint_rate'), pct=True)}</td>",
        f"<td>{_num(learn.get('critic_hint_rate'), pct=True)}</td>",
        f"<td>{_num(learn.get('reflections_per_episode'), 2)}</td>",
        f'<td class="wrap">{_precision(learn.get("hint_precision"))}</td>',
        f'<td class="wrap">{_differs(learn.get("differs_from"))}</td>',
    ]
    return f'<tr data-method="{e(name)}">{"".join(cells)}</tr>'


def _results_section(results: Mapping[str, Any]) -> str:
    methods = results.get("methods") or {}
    names = sorted(methods, key=lambda n: -(((methods[n] or {}).get("r_traj") or {}).get("mean")
                                             or float("-inf")))  # fmt: skip
    head = "".join(f"<th>{e(h)}</th>" for h in RESULT_HEADERS)
    body = "".join(_result_row(n, methods[n] or {}) for n in names)
    config = results.get("config") or {}
    over = "seeds (Student t)" if len(config.get("seeds") or [0]) > 1 else "episodes"
    oracle = (results.get("reference") or {}).get("oracle_r_traj")
    note = (
        f"Test phase only. mean ± 95% CI over {over}; % oracle = mean R_traj / the oracle's "
        f"({_num(oracle, 2)}, a ceiling that reads the ground truth) on the same users. "
        "Hint rates: share of test steps whose prompt carried the actor / critic memory hint; "
        "hint precision: share of hinted items the test env would accept, for + and − labels; "
        "differs from: share of shared test episodes whose item lists differ. – : not measured."
    )
    return (
        f'<section id="results"><h2>Results</h2><table class="results" id="results-table">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f'<p class="note">{note}</p></section>'
    )


def _trajectory_section() -> str:
    return (
        '<section id="trajectories"><h2>Trajectories</h2>'
        '<p class="note">Every method meets the same user; steps side by side. Per step: the '
        "plan, the actor-memory hint, the shortlist, the model's raw answer and how it was "
        "grounded, the simulated user's rating and reward, the critic's value and advantage, "
        "and why the session ended.</p>"
        '<div class="controls"><label for="sel-phase">phase</label><select id="sel-phase">'
        '</select><label for="sel-seed">seed</label><select id="sel-seed"></select>'
        '<label for="sel-user">user</label><select id="sel-user"></select>'
        '<button id="prev" type="button">◀</button><button id="next" type="button">▶</button>'
        '</div><div class="controls toggles" id="toggles"></div>'
        '<div class="history" id="history"></div>'
        '<div class="traj-wrap" id="traj"><noscript>The trajectory browser needs JavaScript.'
        "</noscript></div></section>"
    )


def _plots_section(run_dir: Path) -> str:
    figures = []
    for name in PLOTS:
        path = run_dir / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            caption = PLOT_CAPTIONS.get(name, name)
            figures.append(
                f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    inner = "".join(figures) or '<p class="empty">no plots (run `billp report --run DIR`)</p>'
    return f'<section id="plots"><h2>Plots</h2><div class="plots">{inner}</div></section>'


def learning_svg(curves: Mapping[str, Mapping[str, Any]], train_batch: int) -> str:
    """Draw R_traj per training batch per learning method as inline SVG (text kept as text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "billp"}):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for i, (name, c) in enumerate(curves.items()):
            color = f"C{i}"
            xs = list(range(1, len(c["curve"]) + 1))
            ys = [float("nan") if v is None else v for v in c["curve"]]
            ax.plot(xs, ys, marker="o", color=color, label=f"{name} (train)")
            if isinstance(c.get("test"), int | float):
                ax.axhline(c["test"], color=color, ls="--", lw=1, label=f"{name} test mean")
        longest = max(len(c["curve"]) for c in curves.values())
        if longest <= 12:
            ax.set_xticks(range(1, longest + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"training batch ({train_batch} users each)")
        ax.set_ylabel("mean R_traj")
        ax.legend(fontsize=8)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _learning_section(curves: Mapping[str, Mapping[str, Any]], train_batch: int) -> str:
    if not curves:
        inner = '<p class="empty">no method learned in this run (no training episodes)</p>'
    else:
        rows = "".join(
            f'<tr data-method="{e(n)}"><td class="name">{e(n)}</td>'
            f'<td class="wrap">{" · ".join(_num(v, 2) for v in c["curve"])}</td>'
            f"<td>{_num(c.get('test'), 2)}"
            "</td></tr>"
            for n, c in curves.items()
        )
        inner = (
            f'<div class="plots"><figure>{learning_svg(curves, train_batch)}<figcaption>'
            "R_traj per training batch (mean over seeds); dashed: the test-phase mean"
            "</figcaption></figure></div>"
            '<table class="results" id="learning-table"><thead><tr><th>method</th>'
            "<th>mean R_traj per training batch</th><th>test mean</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    return f'<section id="learning"><h2>Learning curves</h2>{inner}</section>'
