"""Serve the fake OpenAI-compatible endpoint from a shell: `python -m nodes.llm.fake_server ...`.

The command line of `fake_server.FakeOpenAI`, the fault-injecting server that reliability tests
and benchmarks run against (real servers are tested elsewhere, from recorded fixtures).
Benchmarks run it as a separate process so its request handling does not share the client's CPU.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence

from nodes.llm.fake_server import FAULTS, FakeOpenAI


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until interrupted (or for --serve-seconds), printing the URL and final stats."""
    parser = argparse.ArgumentParser(
        description="A misbehaving OpenAI-compatible chat endpoint on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to answers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--by-prompt", action="store_true", help="answers depend on the request, not its order"
    )
    parser.add_argument("--retry-after", type=float, default=0.05)
    parser.add_argument("--timeout-sleep", type=float, default=2.0)
    parser.add_argument(
        "--refuse",
        action="append",
        default=[],
        metavar="SHAPE=STATUS:MESSAGE",
        help="answer a request shape with an error, e.g. 'json_schema=500:response_format.type'",
    )
    parser.add_argument("--titles-file", help="one catalogue title per line, for title fields")
    parser.add_argument("--serve-seconds", type=float, default=0.0, help="stop after (0: never)")
    args = parser.parse_args(argv)
    titles: list[str] = []
    if args.titles_file:
        with open(args.titles_file, encoding="utf-8") as fh:
            titles = [line.strip() for line in fh if line.strip()]
    fake = FakeOpenAI(
        port=args.port,
        fault_rate=args.fault_rate,
        faults=[f for f in args.faults.split(",") if f],
        latency=args.latency,
        seed=args.seed,
        titles=titles,
        retry_after=args.retry_after,
        timeout_sleep=args.timeout_sleep,
        by_prompt=args.by_prompt,
        refuse={
            shape: (int(status), message)
            for shape, _, rest in (r.partition("=") for r in args.refuse)
            for status, _, message in [rest.partition(":")]
        },
    )
    with fake:
        print(f"fake OpenAI endpoint: {fake.url}", flush=True)
        try:
            if args.serve_seconds > 0:
                time.sleep(args.serve_seconds)
            else:
                threading.Event().wait()
        except KeyboardInterrupt:
            pass
        print(json.dumps(fake.stats()), flush=True)
