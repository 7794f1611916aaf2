"""Calling one handler with one event, with a Lambda-like context and Lambda's error shape."""

import contextlib
import importlib.util
import json
import signal
import sys
import time
import traceback
import uuid
from pathlib import Path


class Context:
    """The handler's ``context``: the subset of Lambda's that functions read."""

    def __init__(self, function_name, timeout_s):
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(spec):
    """Imports ``path/to/module.py:function`` (its directory joins sys.path, as Lambda's task
    root does) and returns the function."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"Handler {spec!r} is not path/to/module.py:function")
    path = Path(path).resolve()
    for shim in ("boto3", "botocore"):  # imported first, so a vendored copy cannot shadow them
        importlib.import_module(shim)
    sys.path.insert(0, str(path.parent))
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None:
        raise ImportError(f"Cannot import handler module {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[path.stem] = module
    module_spec.loader.exec_module(module)
    handler = getattr(module, name, None)
    if not callable(handler):
        raise AttributeError(f"Handler {name!r} missing or not callable in {path}")
    return handler


def error_result(error, error_type=None):
    """Lambda's JSON for a failed invocation."""
    return {
        "errorType": error_type or type(error).__name__,
        "errorMessage": str(error),
        "stackTrace": traceback.format_list(traceback.extract_tb(error.__traceback__)),
    }


class HandlerTimeout(BaseException):
    """Raised in the handler when its time is up. A BaseException, like KeyboardInterrupt, so
    that a handler's ``except Exception`` does not swallow it."""


def timeout_result(timeout_s):
    """Lambda's JSON for an invocation whose handler ran out of time."""
    return {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"Task timed out after {timeout_s:.2f} seconds",
        "stackTrace": [],
    }


@contextlib.contextmanager
def deadline(timeout_s):
    """Raises HandlerTimeout in the block once ``timeout_s`` seconds have passed (SIGALRM: the
    caller is the main thread). Code blocked inside a C call sees it when the call returns; a
    guest that never returns is the backend's to recycle."""

    def expire(_signum, _frame):
        raise HandlerTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def invoke(handler, event, context, timeout_s):
    """Calls the handler with ``timeout_s`` seconds to run; returns (succeeded, result JSON
    text). Raises HandlerTimeout when the time runs out: the handler may have been stopped
    anywhere (in the middle of a call to the backend, say), so the caller answers with
    ``timeout_result`` and starts afresh, as Lambda does."""
    try:
        with deadline(timeout_s):
            result = handler(event, context)
    except Exception as error:
        return False, json.dumps(error_result(error))
    try:
        return True, json.dumps(result)
    except (TypeError, ValueError) as error:
        return False, json.dumps(
            {
                "errorType": "Runtime.MarshalError",
                "errorMessage": f"Unable to marshal response: {error}",
                "stackTrace": [],
            }
        )
