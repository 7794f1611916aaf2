"""Serving invocations over HTTP: the runtime of a conventional platform's function VM, which
receives its invocations on its NIC, as a Lambda-style worker sends them to the runtime in an
execution environment.

```text
 GET  /ready   200 once the handler is imported (an import error too: it is then the answer)
 POST /invoke  body: the event (JSON, Content-Length at most MAX_EVENT_BYTES)
               200 with the handler's result JSON, or with Lambda's error shape and
               X-Amz-Function-Error: Unhandled when the handler raised or timed out
               400 a body that is not JSON, 411 no Content-Length, 413 a body too large
 anything else 404 (unknown path) or 405 (other method)
```

One invocation at a time, like one Lambda execution environment: the server handles one
connection after another on the main thread (where the handler's deadline signal lands).
Timeouts behave as in ``serve.py``: the timeout error is sent, then the runtime replaces itself
with a fresh one, which binds the port again.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from nexus_runtime.invoke import (
    Context,
    HandlerTimeout,
    answer_event,
    load_or_error,
    restart_after_timeout,
    timeout_result,
)

# Lambda's limit for a synchronous invocation's payload.
MAX_EVENT_BYTES = 6 * 1024 * 1024
ERROR_HEADER = "X-Amz-Function-Error"
# How long a client may take to send its request, so that a stalled one cannot hold the runtime.
REQUEST_TIMEOUT_S = 30.0


class BadRequest(Exception):
    """A request that carries no event: answered with ``status``."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


def serve_http(handler_spec, function_name, timeout_s, port):
    """Serves on every address of the VM's at ``port`` until killed."""
    handler, init_error = load_or_error(handler_spec)
    requests = _request_handler(handler, init_error, function_name, timeout_s)
    server = HTTPServer(("0.0.0.0", port), requests)
    print(f"nexus-runtime: serving {handler_spec} on http port {port}", file=sys.stderr, flush=True)
    server.serve_forever()


def _request_handler(handler, init_error, function_name, timeout_s):
    class Invocations(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = REQUEST_TIMEOUT_S

        def do_GET(self):
            if self.path == "/ready":
                self._reply(200, b"ready\n", "text/plain")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def do_POST(self):
            if self.path != "/invoke":
                self._reply(404, b"not found\n", "text/plain")
                return
            try:
                event = self._read_event()
            except BadRequest as bad:
                # The rest of a refused body is left unread: the connection ends.
                self.close_connection = True
                self._reply(bad.status, f"{bad.reason}\n".encode(), "text/plain")
                return
            context = Context(function_name, timeout_s)
            try:
                ok, result = answer_event(handler, init_error, event, context, timeout_s)
            except HandlerTimeout:
                self.close_connection = True
                self._reply(200, json.dumps(timeout_result(timeout_s)).encode(), error=True)
                self.wfile.flush()
                restart_after_timeout()
            self._reply(200, result.encode("utf-8"), error=not ok)

        def do_other(self):
            self._reply(405, b"method not allowed\n", "text/plain")

        do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_other

        def _read_event(self):
            """The request's event, decoded; BadRequest if there is none."""
            length = self.headers.get("Content-Length")
            if length is None:
                raise BadRequest(411, "a Content-Length is required")
            if not length.strip().isdigit():
                raise BadRequest(400, "Content-Length is not a number")
            length = int(length)
            if length > MAX_EVENT_BYTES:
                raise BadRequest(413, f"the event exceeds {MAX_EVENT_BYTES} bytes")
            body = self.rfile.read(length)
            if len(body) < length:
                raise BadRequest(400, "the body ended early")
            try:
                return json.loads(body)
            except ValueError as error:
                raise BadRequest(400, f"the event is not JSON: {error}") from None

        def _reply(self, status, body, content_type="application/json", error=False):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if error:
                self.send_header(ERROR_HEADER, "Unhandled")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format, *args):
            # Requests are not logged; errors go to stderr, the VM's console.
            pass

        def log_error(self, format, *args):
            print("nexus-runtime: http: " + format % args, file=sys.stderr, flush=True)

    return Invocations
