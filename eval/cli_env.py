"""The `billp env` commands, and the console helpers every `billp` command shares."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from simulator.build import EnvBundle, EnvConfig, build_env
from simulator.paths import default_dataset
from simulator.types import DataError

env_app = typer.Typer(help="Build and inspect simulator environments.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()

DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset", "-d", help="steam, amazon, csv or synthetic (default: steam if data)"
    ),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Raw data folder (default: $BILLP_DATA)")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Split, training and evaluation seed")]
InteractionsOpt = Annotated[
    Path | None, typer.Option("--interactions", help="csv dataset: user,item[,rating][,timestamp]")
]
ItemsOpt = Annotated[Path | None, typer.Option("--items", help="csv dataset: item,title[,genres]")]
LoggedOpt = Annotated[
    str,
    typer.Option(
        "--logged-items",
        help="exclude: never recommend a user's own logged items (default); allow: reference-style",
    ),
]


def env_config(
    dataset: str | None,
    seed: int,
    interactions: Path | None,
    items: Path | None,
    logged_items: str = "exclude",
) -> EnvConfig:
    """Return the build config of the env commands (csv paths become loader options)."""
    options = {}
    if interactions is not None:
        options["interactions"] = str(interactions)
    if items is not None:
        options["items"] = str(items)
    try:
        return EnvConfig(
            dataset=dataset or default_dataset(),
            seed=seed,
            dataset_options=options,
            logged_items=logged_items,  # type: ignore[arg-type]
        )
    except ValueError as err:
        fail(str(err))
        raise


def debug_enabled() -> bool:
    """Whether errors should show their traceback (`--debug` or BILLP_DEBUG=1)."""
    return os.environ.get("BILLP_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line and exit; tracebacks only with --debug (BILLP_DEBUG=1)."""
    # soft_wrap: one line whatever the terminal width, so scripts can grep it; escaped, so text
    # in brackets (CPU flags, file names) is printed, not read as rich markup.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def build_with_progress(config: EnvConfig, data_dir: Path | None, rebuild: bool) -> EnvBundle:
    """Build (or load) an environment with a progress bar; DataError becomes one clear line."""
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"building {config.dataset}", total=1.0)

        def progress(message: str, fraction: float) -> None:
            bar.update(task, description=message, completed=fraction)

        try:
            return build_env(config, data_dir, rebuild=rebuild, progress=progress)
        except DataError as err:
            if debug_enabled():
                raise
            fail(str(err))
    raise AssertionError("unreachable")


def print_card(card: dict) -> None:
    """Render an environment card as two rich tables."""
    um = card["user_model"]
    summary = Table(title=f"Environment card: {card['dataset']}", show_header=False)
    rows = [
        ("users / items", f"{card['n_users']:,} / {card['n_items']:,}"),
        ("interactions (negatives)", f"{card['n_interactions']:,} ({card['n_negatives']:,})"),
        ("train / test users", f"{card['n_train_users']:,} / {card['n_test_users']:,}"),
        ("user model", f"{um['kind']}: AUC {um['auc']:.3f}, HR@10 {um['hr_at_10']:.3f}"),
        ("popularity (same check)", _popularity_text(um)),
        ("train model", f"AUC {card['train_user_model']['auc']:.3f}"),
        ("tau", f"{card['tau']:.4f} (p{card['tau_percentile']:g} of item distances)"),
        ("window / max steps", f"{card['window']} / {card['max_steps']}"),
        ("logged items", _logged_text(card.get("logged_items"))),
        ("ratings of held-out positives", _hist(card["rating_hist"]["positives"])),
        ("ratings of random items", _hist(card["rating_hist"]["random"])),
    ]
    for name, value in rows:
        summary.add_row(name, value)
    out.print(summary)
    table = Table(title="Reference policies on test users (mean per episode)")
    for col in ("policy", "Len", "R_each", "R_traj"):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for name, m in card["policies"].items():
        label = f"{name} (ceiling)" if name == "oracle" else name
        table.add_row(label, f"{m['len']:.2f}", f"{m['r_each']:.3f}", f"{m['r_traj']:.2f}")
    out.print(table)
    gap = card.get("planning_gap")
    if gap:
        planning = Table(title="Planning gap: truth-greedy without planning vs the oracle")
        for col in ("policy", "Len", "R_traj"):
            planning.add_column(col, justify="right" if col != "policy" else "left")
        labels = {"myopic": "myopic (ignores the similarity rule)", "oracle": "oracle"}
        for name, label in labels.items():
            planning.add_row(label, f"{gap[name]['len']:.2f}", f"{gap[name]['r_traj']:.2f}")
        out.print(planning)
    if card.get("verdict"):
        out.print(f"verdict: {card['verdict']}", highlight=False, soft_wrap=True)


def _logged_text(mode: str | None) -> str:
    if mode == "exclude":
        return "exclude (a user's own logged items are never recommended)"
    if mode == "allow":
        return "allow (logged items may be recommended: echoing the log is rewarded)"
    return "unknown (built before this setting existed)"


def _popularity_text(user_model: dict) -> str:
    if "popularity_auc" not in user_model:
        return "not measured"
    margin = user_model["auc"] - user_model["popularity_auc"]
    return f"AUC {user_model['popularity_auc']:.3f} (model margin {margin:+.3f})"


def _hist(hist: dict) -> str:
    total = sum(hist.values()) or 1
    return "  ".join(f"{k}:{100 * v / total:.0f}%" for k, v in sorted(hist.items()))


@env_app.command("build")
def env_build(
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
    rebuild: Annotated[bool, typer.Option(help="Ignore the cache")] = False,
    interactions: InteractionsOpt = None,
    items: ItemsOpt = None,
    logged_items: LoggedOpt = "exclude",
) -> None:
    """Build (or load from cache) a dataset's train and test environments."""
    config = env_config(dataset, seed, interactions, items, logged_items)
    bundle = build_with_progress(config, data_dir, rebuild)
    console.print(f"environment ready: {bundle.path}")
    print_card(bundle.card)


@env_app.command("info")
def env_info(
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON")] = False,
    interactions: InteractionsOpt = None,
    items: ItemsOpt = None,
    logged_items: LoggedOpt = "exclude",
) -> None:
    """Print a dataset's environment card (building it first if needed)."""
    config = env_config(dataset, seed, interactions, items, logged_items)
    bundle = build_with_progress(config, data_dir, rebuild=False)
    if as_json:
        out.print_json(json.dumps(bundle.card))
    else:
        print_card(bundle.card)


def parse_split(text: str | None) -> tuple[int, list[int]] | None:
    """Parse `--split MOD:R1,R2` (e.g. 4:0,2) into (modulus, residues); None when not given."""
    if not text:
        return None
    try:
        modulus, _, residues = text.partition(":")
        split = int(modulus), [int(r) for r in residues.split(",")]
    except ValueError:
        split = (0, [])
    if split[0] < 1 or not split[1] or any(not 0 <= r < split[0] for r in split[1]):
        fail(f"--split must be MOD:R1[,R2...] with 0 <= R < MOD (e.g. 4:0,2), got {text!r}")
    return split


@env_app.command("validate")
def env_validate(
    reference_logs: Annotated[
        Path, typer.Option("--reference-logs", help="Folder of the reference's run logs")
    ],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
    files: Annotated[
        list[str] | None,
        typer.Option("--files", help="Only these log files (names or globs; repeatable)"),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Also report userid % MOD == R subsets, e.g. 4:0,2"),
    ] = None,
    user_match: Annotated[
        str | None,
        typer.Option("--user-match", help="id or history (default: id on amazon, else history)"),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the JSON report here")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report")] = False,
) -> None:
    """Replay the reference's logged episodes through our simulated user; report agreement."""
    from eval.agreement_text import agreement_lines
    from simulator.reference_logs import load_reference_logs
    from simulator.validate import validate

    name = dataset or default_dataset()  # logs are picked by name: <dataset>_*.json
    if user_match not in (None, "id", "history"):
        fail(f"--user-match must be id or history, got {user_match!r}")
    parts = parse_split(split)
    try:
        episodes = load_reference_logs(reference_logs, name, files or ())
    except DataError as err:
        if debug_enabled():
            raise
        fail(str(err))
    bundle = build_with_progress(env_config(name, seed, None, None), data_dir, rebuild=False)
    report = validate(bundle, episodes, split=parts, method=user_match)  # type: ignore[arg-type]
    text = json.dumps({"reference_agreement": report}, indent=1)
    if output is not None:
        try:
            output.write_text(text + "\n", encoding="utf-8")
        except OSError as err:
            fail(f"cannot write {output}: {err.strerror}")
        console.print(f"report written to {output}")
    if as_json:
        out.print_json(text)
    else:
        for line in agreement_lines(report):
            out.print(line, highlight=False, markup=False, soft_wrap=True)
