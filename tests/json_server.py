"""A tiny JSON HTTP server on 127.0.0.1 for endpoint tests: POST bodies in, scripted replies out.

Shared by the OpenAI endpoint tests and the recorded server-shape replays, which differ only in
how they answer a request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any], dict[str, str]]]


def serve_json(answer: Answer, requests: list[dict[str, Any]]) -> tuple[ThreadingHTTPServer, str]:
    """Start serving `answer(body) -> (status, payload, headers)`; return (server, base URL)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            status, payload, headers = answer(body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
