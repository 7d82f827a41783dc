"""The embedded model's cost per call, on one fixed set of real agent prompts, cache off.

The calls are recorded once (`--record`) from BiLLP episodes on the synthetic dataset with the
demo's settings (shortlist grounding, learning on, so prompts carry reflections and memory
hints), answered by the scripted double while recording. They live in
`bench/fixtures/local_calls.json` (synthetic titles only, no real data), so a number measured
today and one measured after a change to the model, the build or the sampler are on the very
same prompts, whatever the prompts' code does meanwhile.

Each call is replayed through the project's own path (`make_chat_model("local")` and
`with_structured_output`, the grammar checked token by token), with a per-call seed, at
concurrency 1 (one after another) and concurrency 4 (four threads at once). The row states the
prompt and completion tokens per call and a compute-floor estimate beside the measured figure.

python -m bench.local_model [--quick] [--out PATH]
python -m bench.local_model --record      # re-record the fixture (scripted double, synthetic)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel

from bench.common import write_json

FIXTURE = Path(__file__).parent / "fixtures" / "local_calls.json"
RESPONDER = "local_model_record"
FULL_CALLS, QUICK_CALLS = 48, 12
MODEL_GFLOP_PER_TOKEN = 0.27
"""~2 x 135M parameters: the multiply-adds of one token through SmolLM2-135M."""
ASSUMED_GFLOPS = 100.0
"""A realistic sustained int8/fp32 matmul rate of 2 modern cores (the floor's assumption)."""
DECODE_MS_PER_TOKEN = 5.0
"""Decoding is memory-bound: ~80 MB of weights read per token at ~20 GB/s is ~4 ms."""


def _schema_of(spec: dict[str, Any]) -> type[BaseModel]:
    from nodes import prompts

    if spec["name"] == "ShortlistChoice":
        return prompts.shortlist_schema(int(spec["k"]))
    return {"Plan": prompts.Plan, "Value": prompts.Value, "Reflection": prompts.Reflection}[
        spec["name"]
    ]


def _spec_of(schema: type[BaseModel]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": schema.__name__}
    if schema.__name__ == "ShortlistChoice":
        spec["k"] = len(schema.model_json_schema()["properties"]["choice"]["enum"])
    return spec


def record(users: int = 6, max_steps: int = 5) -> dict[str, Any]:
    """Record the prompts of `users` synthetic BiLLP episodes (scripted answers) as the fixture."""
    from graph import Context
    from graph.builder import build_graph
    from nodes import scripted_agent
    from nodes.llm.scripted import register_scripted_responder
    from nodes.resources import get_resources

    calls: list[dict[str, Any]] = []

    def capture(messages: list[BaseMessage], schema: type[BaseModel] | None) -> Any:
        if schema is not None:
            calls.append(
                {
                    "schema": _spec_of(schema),
                    "messages": [{"role": m.type, "content": m.text} for m in messages],
                }
            )
        return scripted_agent.respond(messages, schema)

    register_scripted_responder(RESPONDER, capture)
    ctx = Context(
        dataset="synthetic",
        llm=f"scripted:{RESPONDER}",
        embeddings="hashing",
        memory_dir=tempfile.mkdtemp(prefix="billp-local-bench-"),
        max_steps=max_steps,
        grounding="shortlist",
        learn=True,
    )
    res = get_resources(ctx)
    graph = build_graph("billp")
    for user in res.bundle.train_users[:users]:
        asyncio.run(graph.ainvoke({"user_id": int(user)}, context=ctx))
    fixture = {
        "recorded_with": "BiLLP, synthetic dataset, shortlist grounding, learning on, scripted "
        f"answers; {users} training users, at most {max_steps} steps",
        "calls": calls,
    }
    write_json(FIXTURE, fixture)
    return fixture


def _messages(call: dict[str, Any]) -> list[BaseMessage]:
    kinds = {"system": SystemMessage, "human": HumanMessage}
    return [kinds.get(m["role"], HumanMessage)(content=m["content"]) for m in call["messages"]]


def _one(model: Any, call: dict[str, Any], seed: int) -> dict[str, Any]:
    """Answer one recorded call through the project's structured path; time it."""
    from nodes.llm.calls import CALL_SEED

    token = CALL_SEED.set(seed)
    try:
        started = time.perf_counter()
        out = model.with_structured_output(_schema_of(call["schema"]), include_raw=True).invoke(
            _messages(call)
        )
        seconds = time.perf_counter() - started
    finally:
        CALL_SEED.reset(token)
    usage = out["raw"].usage_metadata or {}
    return {
        "seconds": seconds,
        "parsed": out["parsed"] is not None and out.get("parsing_error") is None,
        "prompt_tokens": int(usage.get("input_tokens", 0)),
        "completion_tokens": int(usage.get("output_tokens", 0)),
    }


def _fresh_state(model: Any) -> None:
    """Empty the model's prompt-prefix cache and context, so each replay starts cold alike."""
    from llama_cpp import LlamaRAMCache

    from nodes.llm.local import PROMPT_CACHE_BYTES, load_llama

    llama, lock = load_llama(model.model_path, model.n_ctx, model.n_threads)
    with lock:
        llama.reset()
        llama.set_cache(LlamaRAMCache(capacity_bytes=PROMPT_CACHE_BYTES))


def _replay(model: Any, calls: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    _fresh_state(model)
    started = time.perf_counter()
    if concurrency == 1:
        rows = [_one(model, c, seed) for seed, c in enumerate(calls)]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            rows = list(pool.map(lambda a: _one(model, a[1], a[0]), enumerate(calls)))
    wall = time.perf_counter() - started
    n = len(rows)
    prompt = statistics.fmean(r["prompt_tokens"] for r in rows)
    completion = statistics.fmean(r["completion_tokens"] for r in rows)
    return {
        "concurrency": concurrency,
        "calls": n,
        "seconds_per_call": round(wall / n, 3),
        "calls_per_second": round(n / wall, 3),
        "median_call_seconds": round(statistics.median(r["seconds"] for r in rows), 3),
        "parsed_share": sum(r["parsed"] for r in rows) / n,
        "prompt_tokens_per_call": round(prompt, 1),
        "completion_tokens_per_call": round(completion, 1),
        "wall_seconds": round(wall, 1),
    }


def floor_seconds(prompt_tokens: float, completion_tokens: float) -> float:
    """Return one call's compute floor: prompt FLOPs at ASSUMED_GFLOPS + memory-bound decode."""
    prefill = prompt_tokens * MODEL_GFLOP_PER_TOKEN / ASSUMED_GFLOPS
    return prefill + completion_tokens * DECODE_MS_PER_TOKEN / 1000


def build_info() -> dict[str, Any]:
    """Return what llama.cpp was built with (its own system-info line) and its version."""
    import llama_cpp

    return {
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Replay the fixture's first calls at concurrency 1 and 4; return the `local_model` row."""
    from nodes.llm.factory import make_chat_model

    calls = json.loads(FIXTURE.read_text())["calls"][: QUICK_CALLS if quick else FULL_CALLS]
    model = make_chat_model("local", temperature=0.5)
    _one(model, calls[0], 0)  # load the weights outside the timed runs
    one = _replay(model, calls, 1)
    four = _replay(model, calls, 4)
    floor = floor_seconds(one["prompt_tokens_per_call"], one["completion_tokens_per_call"])
    return {
        "local_model_bench": {
            "model": "SmolLM2-135M-Instruct Q4_1 via llama.cpp, JSON schema checked token by "
            "token, LLM answer cache off",
            "fixture": str(
                FIXTURE.relative_to(Path.cwd()) if FIXTURE.is_relative_to(Path.cwd()) else FIXTURE
            ),
            "build": build_info(),
            "concurrency_1": one,
            "concurrency_4": four,
            "floor_seconds_per_call": round(floor, 3),
            "floor_rule": f"{MODEL_GFLOP_PER_TOKEN} GFLOP/prompt token at {ASSUMED_GFLOPS:.0f} "
            f"GFLOPS + {DECODE_MS_PER_TOKEN:.0f} ms/completion token (memory-bound decode)",
        }
    }


def main(argv: list[str] | None = None) -> None:
    """`--record` re-records the fixture; otherwise measure (`--quick`, `--out` as every part)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CALLS} calls")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--record", action="store_true", help="re-record the fixture and stop")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.record:
        print(f"recorded {len(record()['calls'])} calls into {FIXTURE}")
        return
    result = run(quick=args.quick)
    if args.out is not None:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
