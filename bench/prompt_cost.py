"""Prompt tokens per step: our BiLLP graph vs the reference's prompt layout, on the same steps.

Episodes run through our real graph (grounding `free`, critic `llm`) with a capturing scripted
responder, so every prompt our nodes send is recorded. The same trajectories (same thoughts,
items, ratings, hints and reflections) are then replayed through `bench.reference_prompt`, so
R_traj is equal by construction and only the prompt layout differs. Both sides are counted with
one tokenizer (SmolLM2-135M's, vocab only) and one chat wrapper (ChatML).

The responder is a test double, not an LLM: thoughts are short, and the actor takes the top
logged-data (item-CF) candidate so episodes last long enough for the reference's scratchpad to
grow. Short thoughts and short episodes both favour the reference, so the ratio is conservative.

python -m bench.prompt_cost [--quick] [--out PATH]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from pydantic import BaseModel

import nodes.scripted_agent as scripted_agent
from bench import reference_prompt as ref
from bench.common import main as cli
from eval.metrics import episode_metrics
from graph import Context
from graph.builder import build_graph
from nodes.llm.local import find_local_model
from nodes.llm.scripted import register_scripted_responder
from nodes.resources import Resources, get_resources

RESPONDER = "prompt_cost"
CURVE_STEPS = (1, 5, 10, 20, 30, 40, 50)
ROLE_OF_FIELD = {
    "thought": "planner",
    "title": "actor",
    "value": "critic",
    "reflection": "reflector",
}
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


class Tokenizer:
    """SmolLM2's tokenizer (vocab only, no weights) with the ChatML wrapper it is served with."""

    def __init__(self) -> None:
        from llama_cpp import Llama

        self.path = find_local_model()
        self._llama = Llama(model_path=str(self.path), vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        """Return the tokens of plain text."""
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=False))

    def chat(self, messages: Sequence[tuple[str, str]]) -> int:
        """Return the prompt tokens of a chat request, with its role markers."""
        text = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in messages)
        text += "<|im_start|>assistant\n"
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=True))


class Capture:
    """Record every prompt of the running episode and answer it like the scripted double."""

    def __init__(self) -> None:
        self.res: Resources | None = None
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []
        self._ids: dict[str, int] = {}

    def attach(self, res: Resources) -> None:
        """Use `res` (catalogue and logged-data candidates) for the actor's choices."""
        self.res = res
        self._ids = {}
        for item, title in enumerate(res.catalogue.titles):
            self._ids.setdefault(title, item)

    def __call__(self, messages: list[BaseMessage], schema: type[BaseModel] | None) -> Any:
        fields = set(schema.model_fields) if schema is not None else set()
        role = next((ROLE_OF_FIELD[f] for f in fields if f in ROLE_OF_FIELD), "other")
        self.calls.append((role, [(_ROLES.get(m.type, "user"), m.text) for m in messages]))
        if role == "actor" and self.res is not None:
            return {"title": self._top_candidate(messages[-1].text)}
        return scripted_agent.respond(messages, schema)

    def _titles(self, text: str, header: str) -> list[int]:
        lines = scripted_agent._section(text, header)
        titles = [scripted_agent._quoted(line) for line in lines]
        return [self._ids[t] for t in titles if t in self._ids]

    def _top_candidate(self, text: str) -> str:
        """Return the best item-CF candidate (training logs only) for the prompt's state."""
        assert self.res is not None
        history = self._titles(text, "User history")
        done = self._titles(text, "Already recommended")
        good, _ = scripted_agent._hints(text)
        for title in good:
            if title in self._ids and self._ids[title] not in done:
                return title
        item = self.res.candidates.shortlist(0, history, done, 1)[0]
        return self.res.catalogue.titles[item]


def _explore(res: Resources, vocabulary: list[str], recommended: list[int], seed: int) -> tuple:
    """Pick two genres absent from this episode's items, as the reference's exploration hint."""
    seen = {g for item in recommended for g in res.catalogue.genres[item]}
    pool = [g for g in vocabulary if g not in seen] or vocabulary or ["any", "other"]
    picked = random.Random(seed).sample(pool, 2) if len(pool) >= 2 else [pool[0], pool[0]]
    return picked[0], picked[1]


def ref_steps(res: Resources, user: int, steps: list[dict]) -> list[ref.RefStep]:
    """Turn our step records into the reference's view of the same steps."""
    titles = res.catalogue.titles
    vocabulary = sorted({g for gs in res.catalogue.genres for g in gs})
    out = []
    for i, s in enumerate(steps):
        hint = s.get("actor_hint")
        labels = {int(k): v for k, v in (hint or {}).items() if str(k).isdigit()}
        out.append(
            ref.RefStep(
                thought=s.get("thought", ""),
                action=s.get("action") or s["title"],
                title=s["title"],
                rating=float(s["rating"]),
                left=not s["accepted"],
                explore=_explore(res, vocabulary, [t["item"] for t in steps[:i]], user * 1000 + i),
                good=tuple(titles[k] for k, v in labels.items() if v > 0),
                bad=tuple(titles[k] for k, v in labels.items() if v < 0),
                hinted=hint is not None,
                critic_hint=s.get("critic_hint"),
            )
        )
    return out


def split_calls(calls: list[tuple[str, list]]) -> tuple[list[list], list]:
    """Group an episode's calls into steps (a planner call opens one) and the end calls."""
    steps: list[list] = []
    end: list = []
    for role, messages in calls:
        if role == "planner":
            steps.append([])
        (end if role == "reflector" or not steps else steps[-1]).append((role, messages))
    return steps, end


async def run_dataset(
    dataset: str, users: int, max_steps: int, tok: Tokenizer, capture: Capture
) -> list[dict]:
    """Run `users` BiLLP episodes on `dataset`; return per-episode token counts both ways."""
    memory = tempfile.mkdtemp(prefix="billp-prompt-cost-")
    ctx = Context(
        dataset=dataset,
        llm=f"scripted:{RESPONDER}",
        embeddings="hashing",
        memory_dir=memory,
        max_steps=max_steps,
        grounding="free",
        critic="llm",
        learn=True,  # later episodes see reflections and memory hints, as in training
    )
    res = get_resources(ctx)
    capture.attach(res)
    graph = build_graph("billp")
    episodes = []
    for user in res.bundle.test_users[:users]:
        capture.calls = []
        state = await graph.ainvoke(
            {"user_id": int(user)}, context=ctx, config={"recursion_limit": 8 * max_steps + 20}
        )
        steps = state["steps"]
        ours_steps, ours_end = split_calls(capture.calls)
        if len(ours_steps) != len(steps):
            raise RuntimeError(f"captured {len(ours_steps)} steps for {len(steps)} taken")
        history = [res.catalogue.titles[i] for i in state["history"]]
        reflections = list(state.get("reflections") or [])
        rsteps = ref_steps(res, int(user), steps)
        ref_per_step, ref_reflect = ref.episode_prompts(
            history, reflections, rsteps, dataset, tok.count
        )
        episodes.append(
            {
                "dataset": dataset,
                "user": int(user),
                **episode_metrics(steps),
                "ours_steps": [[tok.chat(m) for _, m in calls] for calls in ours_steps],
                "ours_end": [tok.chat(m) for _, m in ours_end],
                "ref_steps": [
                    [tok.chat([("user", p)]) for _, p in calls] for calls in ref_per_step
                ],
                "ref_end": [tok.chat([("user", ref_reflect)])],
                "ours_roles": [[r for r, _ in calls] for calls in ours_steps],
            }
        )
    return episodes


def _per_role(episodes: list[dict], side: str, roles: Sequence[str]) -> dict[str, float]:
    sums: dict[str, list[int]] = {r: [] for r in roles}
    for ep in episodes:
        for k, calls in enumerate(ep[f"{side}_steps"]):
            names = ep["ours_roles"][k] if side == "ours" else ["thought", "action", "critic"]
            for name, n in zip(names, calls, strict=True):
                sums.setdefault(name, []).append(n)
    return {r: round(statistics.fmean(v), 1) for r, v in sums.items() if v}


def summarize(episodes: list[dict], seconds: float, datasets: Sequence[str], users: int) -> dict:
    """Return the JSON report: the headline ratio and every detail behind it."""
    n_steps = sum(len(ep["ours_steps"]) for ep in episodes)
    total = {
        side: sum(sum(map(sum, ep[f"{side}_steps"])) + sum(ep[f"{side}_end"]) for ep in episodes)
        for side in ("ours", "ref")
    }
    step_only = {side: sum(sum(map(sum, ep[f"{side}_steps"])) for ep in episodes) for side in total}
    calls = {
        side: sum(sum(map(len, ep[f"{side}_steps"])) + len(ep[f"{side}_end"]) for ep in episodes)
        for side in total
    }
    curve = []
    for k in CURVE_STEPS:
        rows = [ep for ep in episodes if len(ep["ours_steps"]) >= k]
        if not rows:
            continue
        ours = statistics.fmean(sum(ep["ours_steps"][k - 1]) for ep in rows)
        theirs = statistics.fmean(sum(ep["ref_steps"][k - 1]) for ep in rows)
        curve.append(
            {
                "step": k,
                "episodes": len(rows),
                "ours": round(ours, 1),
                "reference": round(theirs, 1),
                "ratio": round(ours / theirs, 3),
            }
        )
    lengths = [ep["n_steps"] for ep in episodes]
    r_traj = statistics.fmean(ep["r_traj"] for ep in episodes)
    tok_few = {k: v for k, v in ref.REFERENCE_TOKENS.items()}

    def side(name: str, roles: tuple[str, ...]) -> dict[str, Any]:
        return {
            "prompt_tokens_per_step": round(total[name] / n_steps, 1),
            "prompt_tokens_per_step_excl_reflection": round(step_only[name] / n_steps, 1),
            "calls_per_step": round(calls[name] / n_steps, 3),
            "prompt_tokens_per_call": round(total[name] / calls[name], 1),
            "per_call_by_role": _per_role(episodes, name, roles),
        }

    return {
        "prompt_tokens_ratio_vs_reference": round(total["ours"] / total["ref"], 4),
        "prompt_cost": {
            "tokenizer": "SmolLM2-135M-Instruct (llama.cpp vocab_only), ChatML wrapper on both",
            "llm": "scripted test double (prompt capture), not an LLM",
            "datasets": list(datasets),
            "users_per_dataset": users,
            "episodes": len(episodes),
            "steps": n_steps,
            "mean_episode_steps": round(statistics.fmean(lengths), 2),
            "max_episode_steps": max(lengths),
            "mean_len": round(statistics.fmean(ep["len"] for ep in episodes), 2),
            "r_traj": {
                "ours": round(r_traj, 3),
                "reference": round(r_traj, 3),
                "note": "equal by construction: the reference layout replays our trajectories",
            },
            "ours": side("ours", ("planner", "actor", "critic")),
            "reference": side("ref", ("thought", "action", "critic")),
            "ratio_excl_reflection": round(step_only["ours"] / step_only["ref"], 4),
            "per_step_index": curve,
            "reference_fewshot_tokens": tok_few,
            "reference_layout": (
                "jizhi-zhang/BiLLP (Agents/agent_a2c.py, agent_base.py, agent_reflexion.py, "
                "prompts.py, fewshots.py), read from stored public code. Per step: Thought and "
                "Action calls on one ReAct prompt (instructions + few-shot episodes + top-2 "
                "reflections + question of 15 titles + whole scratchpad, scratchpad cut to 4,000 "
                "tokens by truncating the longest thoughts), the Action call adding the "
                "exploration and actor-memory hints; a critic call (3 examples, last 10 titles, "
                "critic-memory hint), also after the quitting step; one reflection call per "
                "episode on the untruncated scratchpad."
            ),
            "fewshot_reconstruction": (
                "our own text in the reference's shape (same episodes, steps, list lengths and "
                "line layout), written to the token count of each reference block measured with "
                "the same tokenizer (within 3% for the few-shots; see REFERENCE_TOKENS)"
            ),
            "caveats": (
                "short episodes and the double's short thoughts keep the reference's scratchpad "
                "small, so the ratio is conservative; the reference's Action retries (up to 5 on "
                "unparsable output) are not counted"
            ),
            "seconds": round(seconds, 1),
        },
    }


def run(quick: bool = False) -> dict:
    """Measure prompt tokens per step both ways; `quick`: 4 synthetic users, 40 steps."""
    started = time.perf_counter()
    datasets = ("synthetic",) if quick else ("synthetic", "steam")
    users, max_steps = (4, 40) if quick else (10, 50)
    tok = Tokenizer()
    capture = Capture()
    register_scripted_responder(RESPONDER, capture)
    episodes: list[dict] = []
    for dataset in datasets:
        episodes += asyncio.run(run_dataset(dataset, users, max_steps, tok, capture))
    return summarize(episodes, time.perf_counter() - started, datasets, users)


if __name__ == "__main__":
    cli(run, __doc__)
