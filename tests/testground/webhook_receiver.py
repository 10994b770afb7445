"""A local HTTP receiver of completion webhooks (spec.notify.webhook) for tests: records each POST
(path, body, signature header, time) and answers from a script of status codes per path; a path
with a gate holds its requests until the gate is set."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lora_operator.webhook import SIGNATURE_HEADER


class Receiver:
    """A local HTTP server that records each POST and answers from a script per path."""

    def __init__(self):
        self.calls: list[tuple[str, bytes, str, float]] = []
        self.script: dict[str, list[int]] = {}
        self.gates: dict[str, threading.Event] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((self.path, body, self.headers[SIGNATURE_HEADER], time.monotonic()))
                if self.path in receiver.gates:
                    receiver.gates[self.path].wait(timeout=30)
                codes = receiver.script.get(self.path) or [200]
                self.send_response(codes.pop(0) if len(codes) > 1 else codes[0])
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
