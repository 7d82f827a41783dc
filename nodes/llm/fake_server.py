"""Serve a misbehaving OpenAI-compatible chat endpoint on 127.0.0.1, for reliability checks.

Why it exists: the retry, fallback and structured-output paths of `nodes.llm` must be exercised
against every way a server misbehaves, reproducibly and offline. Reliability tests and the
concurrency benchmark run against this server; real servers' request shapes and envelopes are
tested elsewhere (`tests/test_server_shapes.py`, from recorded fixtures). A tool, not a backend.

The server reads what each request asks for — function calling (`tools`), `response_format`
`json_schema` / `json_object`, or plain text — and answers with a valid instance of the schema
inside it, except when it decides (seeded, per request) to serve a fault instead:

    429           HTTP 429 with a Retry-After header        500       HTTP 500
    429_bare      HTTP 429 without Retry-After              timeout   sleep past the client timeout
    bad_body      HTTP 200 whose body is not JSON           bad_json  content that is not JSON
    missing       JSON lacking required fields              types     fields of the wrong type
    range         out-of-range values (ints -> 10**9, enums -> a non-member)
    hallucinated  a catalogue-like title that is not in the catalogue
    empty         an empty answer                           long      a very long answer

Faults that do not apply to a request (a schema fault on a plain-text request, a hallucinated
title where the schema has no title) are not drawn for it. Every fault served is counted in
`FakeOpenAI.stats()` and at `GET /stats` (with requests in flight over time); `POST /reset` clears
them.

    with FakeOpenAI(fault_rate=0.3, seed=0, titles=catalogue) as fake:
        os.environ["OPENAI_BASE_URL"] = fake.url

With `by_prompt=True` an answer depends only on the seed and the request body, not on the
order requests arrive in: concurrent clients then get the same answers as sequential ones.

From a shell (benchmarks; `fake_server_cli`): `python -m nodes.llm.fake_server --fault-rate 0.3`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nodes.llm.fake_faults import (
    CONTENT_FAULTS,
    FAULTS,
    HALLUCINATED,
    LONG_CHARS,
    NOT_JSON,
    SCHEMA_FAULTS,
    SchemaInstance,
    applicable,
    pad_strings,
    request_schema,
)

__all__ = ["FAULTS", "HALLUCINATED", "FakeOpenAI", "SchemaInstance", "request_schema"]


class FakeOpenAI:
    """An OpenAI-compatible chat server on 127.0.0.1 that injects seeded faults."""

    def __init__(
        self,
        *,
        port: int = 0,
        fault_rate: float = 0.0,
        faults: Sequence[str] = FAULTS,
        latency: float = 0.0,
        seed: int = 0,
        titles: Sequence[str] = (),
        retry_after: float = 0.05,
        timeout_sleep: float = 2.0,
        force: dict[str, Any] | None = None,
        api_key: str | None = None,
        keep_requests: int = 200,
        refuse: dict[str, tuple[int, str]] | None = None,
        by_prompt: bool = False,
    ) -> None:
        """Configure the server; `start()` (or `with`) binds it.

        `fault_rate` is the share of requests answered with a fault, drawn uniformly from the
        applicable ones among `faults`; `latency` seconds are added to every answer;
        `titles` are what title fields are filled with; `retry_after` is the Retry-After sent
        with `429`; `timeout_sleep` is how long `timeout` stalls (set it above the client's
        timeout); `force` sets fields by name in every structured answer (e.g. `{"value": 10**9}`
        for a critic that always answers out of range; not counted as a fault); `api_key`, when
        set, makes every request with another bearer key fail with 401 (counted as `rejected`);
        `by_prompt` seeds each answer from (seed, request body) instead of arrival order;
        `refuse` maps request shapes (`json_schema`, `json_object`, `tools`, `text`) to the
        (status, message) the server answers them with, as servers that do not take that
        structured-output form do (counted as `refused`, never as a fault). A plain-text request
        whose system message states a JSON Schema is answered with JSON inside prose.
        """
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown or not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"faults must be among {FAULTS} and 0 <= fault_rate <= 1: {unknown}")
        self.port = port
        self.fault_rate, self.faults, self.latency = fault_rate, tuple(faults), latency
        self.titles, self.retry_after, self.timeout_sleep = list(titles), retry_after, timeout_sleep
        self.force = dict(force or {})
        self.refuse = dict(refuse or {})
        self.api_key = api_key
        self.seed, self.by_prompt = seed, by_prompt
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._flight = _Flight()
        self.requests: deque[dict[str, Any]] = deque(maxlen=keep_requests)
        self.headers: deque[dict[str, str]] = deque(maxlen=keep_requests)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        """Return the base URL to give OpenAI clients (`.../v1`)."""
        if self._httpd is None:
            raise RuntimeError("the fake server is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        """Bind 127.0.0.1 (a free port unless one was given) and serve in a daemon thread."""
        self._httpd = _Server(("127.0.0.1", self.port), _handler(self))
        self._httpd.daemon_threads = True  # a stalled `timeout` answer never blocks shutdown
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- accounting

    def stats(self) -> dict[str, Any]:
        """Return {"requests", "ok", "rejected", "faults": total, "by_fault": {name: count}}.

        Also "busy_s" (first arrival to last answer), "mean_in_flight" and "max_in_flight" of
        chat requests since the last reset: what a benchmark needs to judge client concurrency.
        """
        with self._lock:
            by_fault = {k: v for k, v in self._counts.items() if k in FAULTS}
            return {
                "requests": self._counts["requests"],
                "ok": self._counts["ok"],
                "rejected": self._counts["rejected"],
                "refused": self._counts["refused"],
                "faults": sum(by_fault.values()),
                "by_fault": dict(sorted(by_fault.items())),
                **self._flight.summary(),
            }

    def reset(self) -> None:
        """Forget counts and recorded requests."""
        with self._lock:
            self._counts.clear()
            self._flight = _Flight()
            self.requests.clear()
            self.headers.clear()

    # ---- answering

    def _draw(self, shape: str, schema: dict[str, Any] | None) -> str | None:
        """Return the fault to serve for this request, or None (under the lock: seeded order)."""
        usable = applicable(self.faults, schema)
        if self._rng.random() >= self.fault_rate or not usable:
            return None
        return self._rng.choice(usable)

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict, bytes]:
        """Return (status, headers, body bytes) for one request (`headers` keys lowercase)."""
        with self._lock:
            flight = self._flight
            flight.change(+1)
        try:
            return self._answer(body, headers)
        finally:
            with self._lock:
                flight.change(-1)

    def _answer(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict, bytes]:
        shape, schema, tool = request_schema(body)
        sent = headers.get("authorization", "")
        if self.api_key is not None and sent != f"Bearer {self.api_key}":
            with self._lock:
                self._counts["requests"] += 1
                self._counts["rejected"] += 1
            shown = sent.removeprefix("Bearer ")
            masked = f"{shown[:3]}...{shown[-2:]}" if len(shown) > 8 else "***"
            return _error(401, f"Incorrect API key provided: {masked} (fake)")
        if shape in self.refuse:  # a server that does not take this request shape
            with self._lock:
                self._counts["requests"] += 1
                self._counts["refused"] += 1
                self.requests.append(body)
            return _error(*self.refuse[shape])
        with self._lock:
            self._counts["requests"] += 1
            self.requests.append(body)
            self.headers.append(headers)
            fault = self._draw(shape, schema)
            self._counts[fault or "ok"] += 1
            rng = random.Random(self._rng.random())  # per-request stream, fixed by arrival order
        if self.by_prompt:
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            rng = random.Random(f"{self.seed}:{digest}")
        build = SchemaInstance(rng, self.titles)
        if self.latency:
            time.sleep(self.latency)
        if fault == "429":
            return _error(429, "rate limited (fake)", {"Retry-After": f"{self.retry_after:g}"})
        if fault == "429_bare":
            return _error(429, "rate limited (fake), no Retry-After")
        if fault == "500":
            return _error(500, "internal server error (fake)")
        if fault == "bad_body":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            return 200, {"Content-Type": "application/json"}, page
        if fault == "timeout":
            time.sleep(self.timeout_sleep)
        finish = "stop"
        if fault == "bad_json":
            text = NOT_JSON
        elif fault == "empty":
            text = ""
        elif schema is None and shape != "json_object":
            text = "Try a calm puzzle game next, then switch genre."
            if fault == "long":
                text = (text + " ") * (LONG_CHARS // len(text))
        else:
            value = self._structured(build, schema, fault)
            text = json.dumps(value, ensure_ascii=False)
            if fault == "long":
                text = json.dumps(pad_strings(value, LONG_CHARS), ensure_ascii=False)
                text += " " * max(0, LONG_CHARS - len(text))  # long even with no string fields
            if shape == "text" and fault not in CONTENT_FAULTS:
                text = f"Sure, here is my answer:\n```json\n{text}\n```\nHope it helps."
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if shape == "tools" and fault != "empty":
            call = {"id": "call_fake", "type": "function"}
            call["function"] = {"name": tool, "arguments": text}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
        usage = {
            "prompt_tokens": prompt_chars // 4 + 1,
            "completion_tokens": len(text) // 4 + 1,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        payload = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    def _structured(self, build: SchemaInstance, schema: dict | None, fault: str | None) -> Any:
        if schema is None:  # json_object without a schema: any object is an answer
            return {"answer": build.valid({"type": "string"})}
        if fault in SCHEMA_FAULTS:
            return build.broken(fault, schema)
        value = build.valid(schema)
        if isinstance(value, dict):
            value.update({k: copy.deepcopy(v) for k, v in self.force.items() if k in value})
        return value

    def embed(self, body: dict[str, Any]) -> tuple[int, dict, bytes]:
        """Answer /v1/embeddings with deterministic unit vectors (no faults)."""
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = []
        for i, text in enumerate(inputs):
            rng = random.Random(str(text))
            vec = [rng.gauss(0, 1) for _ in range(int(body.get("dimensions") or 32))]
            norm = sum(v * v for v in vec) ** 0.5 or 1.0
            data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vec]})
        payload = {"object": "list", "data": data, "model": body.get("model", "fake")}
        payload["usage"] = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()


class _Flight:
    """Track chat requests in flight over time (callers hold the server's lock)."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self.first = self.last = None
        self.area = 0.0  # integral of requests in flight over seconds

    def change(self, delta: int) -> None:
        t = time.perf_counter()
        if self.first is None:
            self.first = t
        if self.last is not None:
            self.area += self.now * (t - self.last)
        self.last, self.now = t, self.now + delta
        self.peak = max(self.peak, self.now)

    def summary(self) -> dict[str, float]:
        busy = (self.last - self.first) if self.first is not None else 0.0
        mean = self.area / busy if busy > 0 else 0.0
        return {
            "busy_s": round(busy, 4),
            "mean_in_flight": round(mean, 3),
            "max_in_flight": self.peak,
        }


def _error(status: int, message: str, headers: dict[str, str] | None = None):
    payload = {"error": {"message": message, "type": "fake_error", "code": str(status)}}
    return (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(payload).encode(),
    )


class _Server(ThreadingHTTPServer):
    """A threaded server whose listen backlog holds a burst of concurrent clients.

    The default backlog of 5 drops connection attempts when dozens of clients connect at once,
    and each dropped SYN costs the client a 1 s retransmit: a latency the benchmark would blame
    on the client.
    """

    request_queue_size = 256


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle on, the body waits for the client's
        # delayed ACK (40 ms on Linux), which would add to every answer's latency.
        disable_nagle_algorithm = True

        def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): nothing to answer

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/stats"):
                data = json.dumps(fake.stats()).encode()
                self._send(200, {"Content-Type": "application/json"}, data)
            elif self.path.rstrip("/").endswith("/models"):
                models = {"object": "list", "data": [{"id": "fake", "object": "model"}]}
                self._send(200, {"Content-Type": "application/json"}, json.dumps(models).encode())
            else:
                self._send(*_error(404, f"no route {self.path}"))

        def do_POST(self) -> None:
            if self.path.rstrip("/").endswith("/reset"):
                fake.reset()
                self._send(200, {"Content-Type": "application/json"}, b"{}")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, OSError) as exc:
                self._send(*_error(400, f"request body is not JSON: {exc}"))
                return
            if self.path.rstrip("/").endswith("/chat/completions"):
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._send(*fake.answer(body, headers))
            elif self.path.rstrip("/").endswith("/embeddings"):
                self._send(*fake.embed(body))
            else:
                self._send(*_error(404, f"no route {self.path}"))

        def log_message(self, *args: Any) -> None:
            pass  # quiet: tests read stats(), not access logs

    return Handler


if __name__ == "__main__":  # `python -m nodes.llm.fake_server`: the command line is kept apart
    from nodes.llm.fake_server_cli import main

    main()
