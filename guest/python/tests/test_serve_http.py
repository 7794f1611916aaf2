"""python -m nexus_runtime --serve-http PORT: invocations over HTTP, as a conventional
platform's VM receives them, and requests that carry no event refused with 4xx."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import PYTHON_DIR

READY_TIMEOUT_S = 30

HANDLER = """
import time

def handler(event, context):
    if event.get("fail"):
        raise ValueError("bad " + event["fail"])
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"echo": event, "function": context.function_name}
"""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Runtime:
    """A runtime serving over HTTP on a port of its own."""

    def __init__(self, handler_path, timeout_s=30):
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
        env.pop("NEXUS_REGION", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nexus_runtime", "--handler", f"{handler_path}:handler"]
            + ["--serve-http", str(self.port), "--function-name", "echo"]
            + ["--timeout", str(timeout_s)],
            env=env,
            cwd=PYTHON_DIR,
            stderr=subprocess.PIPE,
        )
        self.wait_ready()

    def wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if self.request("GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"runtime not ready: {self.process.stderr.read().decode()}")
            time.sleep(0.05)

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body) of one request on a connection of its own."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def invoke(self, event):
        status, headers, body = self.request("POST", "/invoke", json.dumps(event).encode())
        assert status == 200, body
        return json.loads(body), headers.get("X-Amz-Function-Error")

    def raw(self, data):
        """What the server answers to bytes sent as they are."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as raw:
            raw.sendall(data)
            raw.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
            return answer

    def stop(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture
def runtime(tmp_path):
    (tmp_path / "echo.py").write_text(HANDLER)
    server = Runtime(tmp_path / "echo.py")
    yield server
    server.stop()


def test_an_invocation_returns_the_handlers_result(runtime):
    for n in range(3):
        result, error = runtime.invoke({"n": n})
        assert result == {"echo": {"n": n}, "function": "echo"} and error is None


def test_a_handler_error_has_lambdas_shape_and_header(runtime):
    result, error = runtime.invoke({"fail": "input"})
    assert error == "Unhandled"
    assert result["errorType"] == "ValueError" and result["errorMessage"] == "bad input"
    assert any("echo.py" in frame for frame in result["stackTrace"])
    assert runtime.invoke({"n": 1})[1] is None, "the runtime serves on after an error"


def test_requests_without_an_event_are_refused_and_the_runtime_serves_on(runtime):
    assert runtime.request("POST", "/invoke", b"{not json")[0] == 400
    assert runtime.request("POST", "/elsewhere", b"{}")[0] == 404
    assert runtime.request("GET", "/invoke")[0] == 404
    assert runtime.request("PUT", "/invoke", b"{}")[0] == 405
    no_length = runtime.raw(b"POST /invoke HTTP/1.1\r\nHost: x\r\n\r\n{}")
    assert no_length.startswith(b"HTTP/1.1 411"), no_length
    huge = runtime.raw(b"POST /invoke HTTP/1.1\r\nContent-Length: 7000000\r\n\r\n{}")
    assert huge.startswith(b"HTTP/1.1 413"), huge
    short = runtime.raw(b"POST /invoke HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}")
    assert short.startswith(b"HTTP/1.1 400"), short
    assert b"400 - Bad request" in runtime.raw(b"garbage\r\n\r\n")
    assert runtime.invoke({"n": 2}) == ({"echo": {"n": 2}, "function": "echo"}, None)


def test_a_handler_past_its_timeout_is_answered_and_the_runtime_starts_afresh(tmp_path):
    (tmp_path / "echo.py").write_text(HANDLER)
    runtime = Runtime(tmp_path / "echo.py", timeout_s=0.5)
    try:
        result, error = runtime.invoke({"sleep": 30})
        assert error == "Unhandled"
        assert result["errorType"] == "Sandbox.Timedout", result
        runtime.wait_ready()
        assert runtime.invoke({"n": 3})[0]["echo"] == {"n": 3}
        assert runtime.process.poll() is None, "the same process, re-executed"
    finally:
        runtime.stop()


def test_a_handler_that_cannot_import_answers_every_invocation_with_the_error(tmp_path):
    (tmp_path / "broken.py").write_text("import no_such_module\n")
    runtime = Runtime(tmp_path / "broken.py")
    try:
        for _ in range(2):
            result, error = runtime.invoke({})
            assert error == "Unhandled" and result["errorType"] == "Runtime.ImportModuleError"
    finally:
        runtime.stop()
