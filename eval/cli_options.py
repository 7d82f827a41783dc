"""The command-line options shared by `billp run`, `compare`, `demo` and `report`.

Typer reads each option's flag and help text from its `Annotated` type; keeping them in one
module lets every command take the same option with the same help, and keeps `eval.cli` short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

LLMOpt = Annotated[
    str,
    typer.Option(
        "--llm", help="local, local:/path.gguf, openai:MODEL, or scripted (a test double)"
    ),
]
EmbOpt = Annotated[str, typer.Option("--embeddings", help="minilm, hashing or openai:MODEL")]
TrainOpt = Annotated[int, typer.Option("--train-users", help="Training users per seed")]
TestOpt = Annotated[int, typer.Option("--test-users", help="Held-out test users per seed")]
SeedsOpt = Annotated[str, typer.Option("--seeds", help="Comma-separated seeds, e.g. 0,1,2")]
ConcOpt = Annotated[int, typer.Option("--concurrency", "-k", help="Episodes in flight at once")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Run directory (re-use it to resume)")
]
ContinualOpt = Annotated[
    bool, typer.Option("--continual", help="Keep learning during the test phase (default frozen)")
]
GroundOpt = Annotated[str, typer.Option("--grounding", help="free (title) or shortlist (1 of K)")]
CriticOpt = Annotated[str, typer.Option("--critic", help="llm or learned (a small value net)")]
MaxStepsOpt = Annotated[int, typer.Option("--max-steps", help="Recommendations per episode, max")]
TempOpt = Annotated[
    float,
    typer.Option(
        "--temperature", help="LLM temperature (the paper's 0.5; seeds keep it reproducible)"
    ),
]
HintRuleOpt = Annotated[
    str,
    typer.Option(
        "--hint-rule",
        help="When a remembered state hints: derived (quantile of observed distances, fits any "
        "embedding) or reference (the reference's fixed numbers)",
    ),
]
ActorQOpt = Annotated[
    float, typer.Option("--actor-quantile", help="Derived rule: actor hint quantile (0-1]")
]
CriticQOpt = Annotated[
    float, typer.Option("--critic-quantile", help="Derived rule: critic hint quantile (0-1]")
]
ExploreOpt = Annotated[
    bool,
    typer.Option("--explore/--no-explore", help="Per-step exploration hint (two random genres)"),
]
BatchOpt = Annotated[
    int, typer.Option("--train-batch", help="Learning batch size (memories update after each)")
]
CacheOpt = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache", help="Cache LLM answers, keyed on each call's seed (default: on)"
    ),
]
CacheDirOpt = Annotated[
    Path | None, typer.Option("--cache-dir", help="Share the LLM cache (default: the run dir)")
]
RetriesOpt = Annotated[int, typer.Option("--retries", help="Retries of an episode that raised")]
RLStepsOpt = Annotated[int, typer.Option("--rl-steps", help="Training env steps of RL baselines")]
EnvSeedOpt = Annotated[int, typer.Option("--env-seed", help="Seed of the environment build")]
LoggedOpt = Annotated[
    str,
    typer.Option(
        "--logged-items", help="exclude (never recommend what a user logged) or allow (reference)"
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one line")]
PauseOpt = Annotated[float, typer.Option("--step-pause", hidden=True)]  # tests: kill mid-episode
MemBackendOpt = Annotated[
    str,
    typer.Option(
        "--memory-backend", help="faiss (files) or store (LangGraph store; $BILLP_STORE_URI)"
    ),
]
ExecOpt = Annotated[
    str, typer.Option("--executor", help="Where episodes run: local (this process) or ray")
]
RayAddrOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster host:port (default: a local Ray)"),
]
RayWorkersOpt = Annotated[
    int | None, typer.Option("--ray-workers", help="Ray actors (default: one per cluster CPU)")
]
RunOpt = Annotated[Path, typer.Option("--run", help="A run directory (the --out of run/compare)")]
