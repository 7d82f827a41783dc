"""Run single episodes and turn them into records: LLM graphs with retries and checkpoints, and
non-LLM policies on the batched simulator.

An LLM episode runs through a graph compiled with a checkpointer, one thread per episode. If a
thread already has a checkpoint (the process was killed mid-episode, or an attempt raised), the
episode continues from it instead of starting over; a checkpoint that already reached the end is
read back as the result. During an episode the memories are read-only (see `eval.protocol`), so
continuing from a checkpoint can never count a half-finished episode's lessons twice.

A failing attempt is retried up to `retries` times (transient LLM errors are already retried
inside `nodes.llm.calls`); then the episode is recorded as failed, with the error. An `LLMError`
(bad key, unknown model, unreachable endpoint) is not retried: every later episode would fail the
same way, so it stops the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from eval.metrics import episode_metrics, usage_totals
from nodes.llm.cache import count_hits
from nodes.llm.calls import LLMError
from simulator.env import BatchedRecEnv, UserWorld, quit_reason
from simulator.policies import Policy, Reseedable

log = logging.getLogger(__name__)

NODES_PER_STEP = 6  # generous: planner, actor, user, critic and any inserted nodes


@dataclass
class Outcome:
    """What running one LLM episode produced."""

    state: dict[str, Any] | None
    attempts: int
    seconds: float
    cache_hits: int
    error: str | None = None
    resumed: bool = False


def recursion_limit(max_steps: int) -> int:
    """Return a LangGraph recursion limit that a full-length episode never reaches."""
    return max_steps * NODES_PER_STEP + 20


async def _attempt(graph: Any, ctx: Any, user: int, config: dict) -> tuple[dict, bool]:
    """Run the episode once, continuing its checkpoint if possible; return (state, resumed)."""
    snapshot = await graph.aget_state(config)
    if snapshot.values:
        if not snapshot.next and snapshot.values.get("done"):
            return dict(snapshot.values), True  # it finished just before the process died
        if snapshot.next and set(snapshot.next) <= set(graph.nodes):
            state = await graph.ainvoke(None, config, context=ctx)
            if state.get("done"):
                return state, True
        # A checkpoint this graph cannot continue (its nodes changed): start the episode over.
        await graph.checkpointer.adelete_thread(config["configurable"]["thread_id"])
    state = await graph.ainvoke({"user_id": int(user)}, config, context=ctx)
    return state, False


async def run_llm_episode(
    graph: Any,
    ctx: Any,
    *,
    user: int,
    thread_id: str,
    retries: int = 2,
) -> Outcome:
    """Run (or continue) one episode of `graph` for `user`; never raise except on LLMError."""
    config = {
        "configurable": {"thread_id": thread_id},
        "recursion_limit": recursion_limit(ctx.max_steps),
    }
    started = time.perf_counter()
    error, attempts, resumed = None, 0, False
    with count_hits() as hits:
        while attempts <= retries:
            attempts += 1
            try:
                state, was_resumed = await _attempt(graph, ctx, user, config)
                resumed = resumed or was_resumed
                if not state.get("done"):
                    raise RuntimeError(f"episode of user {user} ended without finishing")
                seconds = time.perf_counter() - started
                return Outcome(dict(state), attempts, seconds, hits.hits, resumed=resumed)
            except (LLMError, asyncio.CancelledError):
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning("episode %s failed (attempt %d): %s", thread_id, attempts, error)
    seconds = time.perf_counter() - started
    return Outcome(None, attempts, seconds, hits.hits, error=error, resumed=resumed)


def _titled_hint(hint: Mapping[str, int] | None, titles: Sequence[str]) -> dict[str, int] | None:
    if not hint:
        return None
    return {
        (titles[int(k)] if k.isdigit() and int(k) < len(titles) else k): int(v)
        for k, v in hint.items()
    }


def llm_record(outcome: Outcome, *, titles: Sequence[str], **identity: Any) -> dict[str, Any]:
    """Return the episode record of an LLM run: metrics, costs, and everything export needs."""
    base = {**identity, "attempts": outcome.attempts, "seconds": round(outcome.seconds, 4)}
    base["cache_hits"] = outcome.cache_hits
    base["resumed"] = outcome.resumed
    state = outcome.state
    if state is None:
        return {**base, "status": "failed", "error": outcome.error, "steps": []}
    steps = []
    for s in state.get("steps", []):
        step = dict(s)
        step["hint"] = _titled_hint(step.get("actor_hint"), titles)
        if isinstance(step.get("candidates"), list):  # the HTML report shows the shortlist
            step["candidate_titles"] = [titles[int(i)] for i in step["candidates"]]
        steps.append(step)
    metrics = episode_metrics(steps)
    usage = usage_totals(state.get("usage"))
    history = [int(i) for i in state.get("history", [])]
    return {
        **base,
        "status": "ok",
        "error": None,
        **metrics,
        "quit_reason": state.get("quit_reason"),
        "llm_calls": int(usage["calls"]),
        "prompt_tokens": int(usage["prompt_tokens"]),
        "completion_tokens": int(usage["completion_tokens"]),
        "llm_seconds": round(float(usage["seconds"]), 4),
        "replaced": sum(1 for s in steps if s.get("replaced")),
        "fallbacks": int(sum((state.get("fallbacks") or {}).values())),
        "fallbacks_by_node": dict(state.get("fallbacks") or {}),
        "usage": dict(state.get("usage") or {}),
        "history": history,
        "history_titles": [titles[i] for i in history],
        "reflections": list(state.get("reflections") or []),
        "reflection": state.get("reflection"),
        "steps": steps,
    }


def play_policy(
    world: UserWorld,
    policy: Policy,
    users: Sequence[int],
    *,
    seed: int,
    titles: Sequence[str],
) -> list[dict[str, Any]]:
    """Play one episode per user with a non-LLM policy; return records with per-step rewards.

    The same loop as `simulator.policies.evaluate_policy` (one batch, the policy reseeded with
    `seed`), keeping each step so cumulative-reward curves and exports cover every method.
    """
    if isinstance(policy, Reseedable):
        policy.reseed(seed)
    ids = torch.as_tensor(list(users), dtype=torch.long)
    env = BatchedRecEnv(world)
    state = env.reset(ids)
    policy.reset(ids)
    steps: list[list[dict[str, Any]]] = [[] for _ in users]
    started = time.perf_counter()
    for t in range(world.max_steps):
        if bool(state.done.all()):
            break
        actions = policy.act(state)
        result = env.step(actions)
        ended = (result.terminated | result.truncated).tolist()
        codes = result.quit_code.tolist()
        items, ratings, rewards = actions.tolist(), result.rating.tolist(), result.reward.tolist()
        accepted = result.accepted.tolist()
        for row in result.active.nonzero().squeeze(1).tolist():
            item = int(items[row])
            steps[row].append(
                {
                    "step": t + 1,
                    "item": item,
                    "title": titles[item],
                    "rating": float(ratings[row]),
                    "reward": float(rewards[row]),
                    "accepted": bool(accepted[row]),
                    "quit_reason": quit_reason(int(codes[row])) if ended[row] else None,
                }
            )
        state = env.state
    if not bool(state.done.all()):
        raise RuntimeError("play_policy: episodes still running after max_steps")
    seconds = (time.perf_counter() - started) / max(len(users), 1)
    records = []
    for row, user in enumerate(users):
        metrics = episode_metrics(steps[row])
        records.append(
            {
                "user": int(user),
                "status": "ok",
                "error": None,
                **metrics,
                "quit_reason": quit_reason(int(state.quit_code[row])),
                "llm_calls": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "seconds": round(seconds, 6),
                "replaced": 0,
                "fallbacks": 0,
                "cache_hits": 0,
                "steps": steps[row],
            }
        )
    return records
