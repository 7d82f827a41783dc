"""The `billp` command line: build and inspect environments, run experiments, render reports.

`billp run` / `billp compare` run the protocol of `eval.protocol` into a run directory (`--out`);
re-running the same command after a crash or Ctrl-C resumes it. `billp report` redraws the table
and plots from what is saved, `billp export` writes the steps as training data, and `billp demo`
is the main job: BiLLP with the embedded local model against the reference policies.
Errors (bad options, unknown specs, missing data, LLM configuration) print one line and exit 2;
`--debug` (or BILLP_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from eval.cli_env import (
    DataDirOpt,
    DatasetOpt,
    build_with_progress,
    console,
    debug_enabled,
    env_app,
    fail,
    print_card,
)
from eval.cli_options import (
    ActorQOpt,
    BatchOpt,
    CacheDirOpt,
    CacheOpt,
    ConcOpt,
    ContinualOpt,
    CriticOpt,
    CriticQOpt,
    DebugOpt,
    EmbOpt,
    EnvSeedOpt,
    ExecOpt,
    ExploreOpt,
    GroundOpt,
    HintRuleOpt,
    LLMOpt,
    LoggedOpt,
    MaxStepsOpt,
    MemBackendOpt,
    OutOpt,
    PauseOpt,
    RayAddrOpt,
    RayWorkersOpt,
    RetriesOpt,
    RLStepsOpt,
    RunOpt,
    SeedsOpt,
    TempOpt,
    TestOpt,
    TrainOpt,
)
from eval.cli_table import print_results
from simulator.build import EnvConfig
from simulator.paths import default_dataset
from simulator.types import DataError

__all__ = ["app", "fail", "main", "print_card"]

app = typer.Typer(help="BiLLP: LLM planners for long-term recommendation.", no_args_is_help=True)
app.add_typer(env_app, name="env")

DEMO_METHODS = ["billp", "reflexion", "random", "popularity", "itemcf", "oracle"]
EMBEDDED_MODEL_LINE = (
    "Model: the embedded SmolLM2-135M-Instruct (llama.cpp on the CPU), picking 1 of 10 "
    "candidates (shortlist grounding: a 135M model cannot write catalogue titles). A stronger "
    "model plugs in through --llm openai:MODEL (OPENAI_BASE_URL, OPENAI_API_KEY)."
)


def _set_debug(debug: bool) -> None:
    if debug:
        os.environ["BILLP_DEBUG"] = "1"


@app.callback()
def _options(debug: DebugOpt = False) -> None:
    """BiLLP: LLM planners for long-term recommendation."""
    _set_debug(debug)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from memory.vector import MemoryCorruptError
    from nodes.llm.calls import LLMError

    return (ValueError, DataError, LLMError, OSError, MemoryCorruptError)


@contextmanager
def friendly_errors(run_dir: Path | None = None) -> Iterator[None]:
    """Turn expected errors into one line + exit 2, and Ctrl-C into a resume hint + exit 130."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        where = f" in {run_dir}" if run_dir else ""
        console.print(
            f"[yellow]interrupted[/]: finished episodes are saved{where}; "
            "run the same command again to resume"
        )
        raise typer.Exit(130) from None
    except _expected_errors() as err:
        if debug_enabled():
            raise
        fail(" ".join(str(err).split()) or type(err).__name__)


def parse_list(text: str, what: str) -> list[str]:
    """Split a comma-separated option, refusing an empty one."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{what} is empty")
    return items


def parse_seeds(text: str) -> list[int]:
    """Parse --seeds 0,1,2."""
    try:
        return [int(s) for s in parse_list(text, "--seeds")]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None


def experiment(
    methods: list[str], out_dir: Path | None, *, step_pause: float = 0.0, **opts: Any
) -> None:
    """Build the environment, run (or resume) the experiment, render and print the results."""
    from eval.executor import make_executor
    from eval.experiment import Experiment
    from eval.html_report import write_html
    from eval.protocol import LLM_METHODS, RunConfig
    from eval.report import render
    from nodes.llm.probe import ensure_llm_works

    executor = make_executor(
        opts.pop("executor", "local"), opts.pop("ray_address", None), opts.pop("ray_workers", None)
    )
    dataset = opts.pop("dataset") or default_dataset()
    data_dir = opts.pop("data_dir")
    config = RunConfig(
        methods=methods,
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        seeds=parse_seeds(opts.pop("seeds")),
        cache_dir=str(opts.pop("cache_dir")) if opts.get("cache_dir") else None,
        **{k: v for k, v in opts.items() if k != "cache_dir"},
    ).validate()
    run_dir = out_dir or Path("runs") / f"{dataset}-{'-'.join(methods)}"[:120]
    with friendly_errors(run_dir):
        if any(m in LLM_METHODS for m in methods):
            ensure_llm_works(config.llm)  # before the env build: a crash costs seconds, not minutes
        env = EnvConfig(dataset=dataset, seed=config.env_seed, logged_items=config.logged_items)
        build_with_progress(env, data_dir, False)
        columns = (
            TextColumn("{task.description:>12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as bar:
            tasks: dict[str, Any] = {}

            def progress(method: str, done: int, total: int | None) -> None:
                if method not in tasks:
                    reference = method == "oracle" and method not in methods
                    label = f"{method} (ref)" if reference else method
                    tasks[method] = bar.add_task(label, total=total, completed=done)
                else:
                    bar.update(tasks[method], completed=done)

            timings = Experiment(
                config, run_dir, progress=progress, step_pause=step_pause, executor=executor
            ).run()
        results, files = render(run_dir)
        files.append(write_html(run_dir, results))
    print_results(results)
    spent = ", ".join(f"{m} {s:.1f}s" for m, s in timings.items())
    console.print(f"wall time this run: {spent}")
    failed = sum(m["failed_episodes"] for m in results["methods"].values())
    if failed:
        console.print(f"[yellow]warning[/]: {failed} episode(s) failed; see results.csv")
    console.print(f"results in {run_dir}: " + ", ".join(p.name for p in files))
    console.print(f"HTML report (open in a browser): {files[-1].resolve().as_uri()}")


@app.command()
def run(
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help="billp, billp-nomacro, billp-nomicro, reflexion, react, actonly, random, "
            "popularity, itemcf, oracle, a2c, dqn or ppo",
        ),
    ],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    llm: LLMOpt = "local",
    embeddings: EmbOpt = "minilm",
    train_users: TrainOpt = 10,
    test_users: TestOpt = 10,
    seeds: SeedsOpt = "0",
    concurrency: ConcOpt = 4,
    out_dir: OutOpt = None,
    continual: ContinualOpt = False,
    grounding: GroundOpt = "free",
    critic: CriticOpt = "llm",
    max_steps: MaxStepsOpt = 50,
    temperature: TempOpt = 0.5,
    hint_rule: HintRuleOpt = "derived",
    actor_quantile: ActorQOpt = 0.5,
    critic_quantile: CriticQOpt = 0.25,
    explore: ExploreOpt = True,
    train_batch: BatchOpt = 10,
    cache: CacheOpt = None,
    cache_dir: CacheDirOpt = None,
    retries: RetriesOpt = 2,
    rl_steps: RLStepsOpt = 250_000,
    env_seed: EnvSeedOpt = 0,
    logged_items: LoggedOpt = "exclude",
    memory_backend: MemBackendOpt = "faiss",
    executor: ExecOpt = "local",
    ray_address: RayAddrOpt = None,
    ray_workers: RayWorkersOpt = None,
    debug: DebugOpt = False,
    step_pause: PauseOpt = 0.0,
) -> None:
    """Run one method: train (if it learns), then test on held-out users, per seed."""
    _set_debug(debug)
    opts = {
        k: v for k, v in locals().items() if k not in ("method", "out_dir", "debug", "step_pause")
    }
    with friendly_errors(out_dir):
        experiment([method.strip()], out_dir, step_pause=step_pause, **opts)


@app.command()
def compare(
    methods: Annotated[
        str,
        typer.Option(
            "--methods", help="Comma-separated methods, e.g. random,itemcf,oracle,react,billp"
        ),
    ],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    llm: LLMOpt = "local",
    embeddings: EmbOpt = "minilm",
    train_users: TrainOpt = 10,
    test_users: TestOpt = 10,
    seeds: SeedsOpt = "0",
    concurrency: ConcOpt = 4,
    out_dir: OutOpt = None,
    continual: ContinualOpt = False,
    grounding: GroundOpt = "free",
    critic: CriticOpt = "llm",
    max_steps: MaxStepsOpt = 50,
    temperature: TempOpt = 0.5,
    hint_rule: HintRuleOpt = "derived",
    actor_quantile: ActorQOpt = 0.5,
    critic_quantile: CriticQOpt = 0.25,
    explore: ExploreOpt = True,
    train_batch: BatchOpt = 10,
    cache: CacheOpt = None,
    cache_dir: CacheDirOpt = None,
    retries: RetriesOpt = 2,
    rl_steps: RLStepsOpt = 250_000,
    env_seed: EnvSeedOpt = 0,
    logged_items: LoggedOpt = "exclude",
    memory_backend: MemBackendOpt = "faiss",
    executor: ExecOpt = "local",
    ray_address: RayAddrOpt = None,
    ray_workers: RayWorkersOpt = None,
    debug: DebugOpt = False,
    step_pause: PauseOpt = 0.0,
) -> None:
    """Run several methods on the same users and seeds: one table, one set of plots."""
    _set_debug(debug)
    opts = {
        k: v for k, v in locals().items() if k not in ("methods", "out_dir", "debug", "step_pause")
    }
    with friendly_errors(out_dir):
        experiment(parse_list(methods, "--methods"), out_dir, step_pause=step_pause, **opts)


@app.command()
def report(run_dir: RunOpt, debug: DebugOpt = False) -> None:
    """Re-render the table, plots and HTML report of a run from its saved episodes."""
    from eval.html_report import write_html
    from eval.report import render

    _set_debug(debug)
    with friendly_errors():
        results, files = render(run_dir)
        files.append(write_html(run_dir, results))
    print_results(results)
    console.print(f"written: {', '.join(str(p) for p in files)}")
    console.print(f"HTML report (open in a browser): {files[-1].resolve().as_uri()}")


@app.command()
def export(
    run_dir: RunOpt,
    fmt: Annotated[str, typer.Option("--format", help="Output format: jsonl")] = "jsonl",
    output: Annotated[
        Path | None,
        typer.Option("--output", help="File to write (default: RUN/steps_export.jsonl)"),
    ] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="Only these methods")] = None,
    phase: Annotated[str, typer.Option("--phase", help="train, test or all")] = "all",
    debug: DebugOpt = False,
) -> None:
    """Write one record per step (context, thought, action, item, reward, value, advantage)."""
    from eval.export import export_steps

    _set_debug(debug)
    with friendly_errors():
        if phase not in ("train", "test", "all"):
            raise ValueError(f"--phase is train, test or all, got {phase!r}")
        phases = ("train", "test") if phase == "all" else (phase,)
        chosen = parse_list(methods, "--methods") if methods else None
        path, count = export_steps(run_dir, output, fmt=fmt, methods=chosen, phases=phases)
    console.print(f"{count} steps written to {path}")


@app.command()
def demo(
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    llm: LLMOpt = "local",
    embeddings: EmbOpt = "minilm",
    train_users: TrainOpt = 4,
    test_users: TestOpt = 3,
    max_steps: MaxStepsOpt = 5,
    train_batch: BatchOpt = 2,
    grounding: GroundOpt = "shortlist",
    out_dir: OutOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Train then test BiLLP and Reflexion with the embedded local model, beside the reference
    policies, on the same users; write the results table and the HTML report.

    The default budget (4 training users in 2 batches, 3 test users, at most 5 steps, one seed)
    is sized for 2 CPU cores: the embedded model spends ~0.3-5 s per call and BiLLP makes ~3
    calls per step. Reflexion on the same users shows what BiLLP's micro memories add.
    """
    _set_debug(debug)
    name = dataset or default_dataset()
    console.print(
        f"[bold]BiLLP demo[/] on {name}: BiLLP and Reflexion ({llm}) learn from {train_users} "
        f"training users, then meet {test_users} held-out users with frozen memories (at most "
        f"{max_steps} recommendations each); random, popularity, itemcf and the oracle ceiling "
        "play the same users."
    )
    if llm == "local":
        console.print(EMBEDDED_MODEL_LINE, highlight=False)
    with friendly_errors(out_dir):
        experiment(
            DEMO_METHODS,
            out_dir or Path("runs") / f"demo-{name}-{llm.replace(':', '_').replace('/', '_')}",
            dataset=name,
            data_dir=data_dir,
            llm=llm,
            embeddings=embeddings,
            train_users=train_users,
            train_batch=train_batch,
            test_users=test_users,
            grounding=grounding,
            seeds="0",
            concurrency=2,
            max_steps=max_steps,
        )


def main() -> None:
    """Entry point with logging configured; kept separate so tests can call `app` directly."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    sys.exit(main())
