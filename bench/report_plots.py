"""Draw the BENCHMARKS.md plots from results.json (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SIZES = ("1000", "10000", "100000", "1000000")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def memory(r: dict[str, Any], out: Path) -> Path | None:
    """Search latency p50/p99 against memory size (log-log), with the 1 ms target."""
    p50, p99 = r.get("memory_search_p50_ms") or {}, r.get("memory_search_p99_ms") or {}
    sizes = [s for s in SIZES if p50.get(s) is not None]
    if not sizes:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [int(s) for s in sizes]
    ax.plot(xs, [p50[s] for s in sizes], "o-", label="p50")
    ax.plot(xs, [p99.get(s) for s in sizes], "s--", label="p99")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="1 ms target (p50 @ 100k)")
    ax.set(xscale="log", yscale="log", xlabel="entries (384-d)", ylabel="ms per query")
    ax.set_title("Memory search latency")
    ax.legend()
    return _save(fig, out / "memory_search.png")


def concurrency(r: dict[str, Any], out: Path) -> Path | None:
    """Speedup against concurrency, with the ideal line and the 12x target."""
    speed = r.get("concurrency_speedup") or {}
    ks = [k for k in ("1", "4", "16", "64") if speed.get(k) is not None]
    if not ks:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [int(k) for k in ks]
    ax.plot(xs, [speed[k] for k in ks], "o-", label="measured")
    ax.plot(xs, xs, color="grey", lw=0.8, ls="--", label="ideal")
    ax.scatter([16], [12], marker="x", color="red", label="target 12× @ 16", zorder=3)
    ax.set(xscale="log", yscale="log", xlabel="episodes in flight", ylabel="speedup vs 1")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_title("Concurrency (200 ms server latency)")
    ax.legend()
    return _save(fig, out / "concurrency.png")


def prompt_cost(r: dict[str, Any], out: Path) -> Path | None:
    """Prompt tokens per step against the step index: ours vs the reference layout."""
    curve = (r.get("prompt_cost") or {}).get("per_step_index") or []
    if not curve:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    steps = [c["step"] for c in curve]
    ax.plot(steps, [c["ours"] for c in curve], "o-", label="ours")
    ax.plot(steps, [c["reference"] for c in curve], "s--", label="reference layout")
    ax.set(xlabel="step in episode", ylabel="prompt tokens per step")
    ax.set_title("Prompt cost per step")
    ax.legend()
    return _save(fig, out / "prompt_cost.png")


def quality(r: dict[str, Any], out: Path) -> Path | None:
    """% of oracle per method, one panel per dataset."""
    data = r.get("quality") or {}
    if not data:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 3.8), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], data.items(), strict=True):
        names = [m for m in rows if m != "oracle"]
        values = [rows[m]["pct_oracle"] or 0.0 for m in names]
        colors = ["tab:orange" if rows[m]["llm_calls_per_episode"] else "tab:blue" for m in names]
        ax.barh(names, values, color=colors)
        ax.invert_yaxis()
        ax.set(xlabel="% of oracle R_traj (blue: non-LLM; orange: local LLM, tiny budget)")
        ax.set_title(dataset)
    return _save(fig, out / "quality.png")


def draw_all(r: dict[str, Any], out: Path) -> dict[str, Path]:
    """Draw every plot whose data is present; return {name: path}."""
    drawn = {}
    for name, draw in (
        ("memory", memory),
        ("concurrency", concurrency),
        ("prompt_cost", prompt_cost),
        ("quality", quality),
    ):
        path = draw(r, out)
        if path is not None:
            drawn[name] = path
    return drawn
