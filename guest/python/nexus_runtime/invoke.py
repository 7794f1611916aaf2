"""Calling one handler with one event, with a Lambda-like context and Lambda's error shape;
what both serving loops (the region's, ``serve.py``, and HTTP's, ``serve_http.py``) share."""

import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
import traceback
import uuid
from pathlib import Path

# What Lambda reports for an unpublished function with its default memory size.
DEFAULT_VERSION = "$LATEST"
DEFAULT_MEMORY_MB = "128"
DEFAULT_REGION = "us-east-1"
# The account in ARNs: Nexus has none; twelve zeros keep the ARN well formed.
ACCOUNT_ID = "000000000000"
# One log stream per execution environment (this process), named the way Lambda names them.
LOG_STREAM = f"{time.strftime('%Y/%m/%d', time.gmtime())}/[{DEFAULT_VERSION}]{uuid.uuid4().hex}"


class CognitoIdentity:
    """``context.identity``: the Amazon Cognito identity of a mobile-SDK caller; unset here."""

    def __init__(self, cognito_identity_id=None, cognito_identity_pool_id=None):
        self.cognito_identity_id = cognito_identity_id
        self.cognito_identity_pool_id = cognito_identity_pool_id


class Context:
    """The handler's ``context``, attribute for attribute Lambda's Python one.

    Function-level values come from Lambda's reserved environment variables (see
    ``export_lambda_environment``); as in Lambda, ``memory_limit_in_mb`` is a string. Per
    invocation: a fresh ``aws_request_id``, the deadline, and the caller's client context and
    Cognito identity (``None`` and an identity with no ids when the caller gave none).
    """

    def __init__(self, function_name, timeout_s, client_context=None, identity=None):
        env = os.environ
        self.function_name = function_name
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", DEFAULT_VERSION)
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", DEFAULT_MEMORY_MB)
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", log_group(function_name))
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", LOG_STREAM)
        self.invoked_function_arn = function_arn(function_name)
        self.aws_request_id = str(uuid.uuid4())
        self.identity = identity or CognitoIdentity()
        self.client_context = client_context
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def log_group(function_name):
    return f"/aws/lambda/{function_name}"


def function_arn(function_name):
    """Lambda's ARN form, so handlers that split it (``arn.split(":")[4]`` is the account) work;
    the region is ``AWS_REGION``'s and the account Nexus's placeholder."""
    region = os.environ.get("AWS_REGION") or DEFAULT_REGION
    return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"


def export_lambda_environment(function_name, memory_mb=None):
    """Sets Lambda's reserved variables for this execution environment (this process) where
    they are not set already: the VM's code disk sets the memory size, a host process passes
    ``memory_mb`` (Lambda's default 128 without it). Handlers read them from ``os.environ``
    as in Lambda, and the context reads them too."""
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or memory_mb or DEFAULT_MEMORY_MB
    reserved = {
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": DEFAULT_VERSION,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
        "AWS_LAMBDA_LOG_GROUP_NAME": log_group(function_name),
        "AWS_LAMBDA_LOG_STREAM_NAME": LOG_STREAM,
    }
    for name, value in reserved.items():
        os.environ.setdefault(name, value)


def import_the_shim():
    """Imports the boto3/botocore shim, where it is the one Python finds (the Nexus image, a
    host process), first: a vendored or installed copy cannot shadow it then. A real boto3 (the
    baseline image's) is left alone, so the function's own packages come first, as in Lambda."""
    home = Path(__file__).resolve().parents[1]
    for name in ("boto3", "botocore"):
        found = importlib.util.find_spec(name)
        if found and found.origin and Path(found.origin).resolve().is_relative_to(home):
            importlib.import_module(name)


def load_handler(spec):
    """Imports ``path/to/module.py:function`` (its directory joins sys.path, as Lambda's task
    root does, then the function's installed requirements, ``$NEXUS_PACKAGES``) and returns
    the function."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"Handler {spec!r} is not path/to/module.py:function")
    path = Path(path).resolve()
    import_the_shim()
    sys.path.insert(0, str(path.parent))
    if packages := os.environ.get("NEXUS_PACKAGES"):
        sys.path.insert(1, packages)
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


def load_or_error(spec):
    """(handler, None), or (None, Lambda's import error JSON) if the handler cannot be loaded:
    a server answers every invocation with that error instead of crashing."""
    with contextlib.redirect_stdout(sys.stderr):
        try:
            return load_handler(spec), None
        except Exception as error:
            return None, json.dumps(error_result(error, "Runtime.ImportModuleError"))


def answer(handler, init_error, event_bytes, context, timeout_s):
    """(succeeded, result JSON) for one event as it arrived (JSON bytes). Raises HandlerTimeout
    as ``invoke`` does."""
    try:
        event = json.loads(event_bytes)
    except ValueError as error:
        return False, init_error or json.dumps(error_result(error, "Runtime.InvalidEvent"))
    return answer_event(handler, init_error, event, context, timeout_s)


def answer_event(handler, init_error, event, context, timeout_s):
    """``answer`` for an event already decoded."""
    if init_error is not None:
        return False, init_error
    with contextlib.redirect_stdout(sys.stderr):
        return invoke(handler, event, context, timeout_s)


def restart_after_timeout():
    """Replaces this runtime with a fresh one (same command line): a handler stopped at its
    timeout may have been cut off anywhere, and Lambda re-initializes after a timeout too."""
    print("nexus-runtime: handler timed out; restarting", file=sys.stderr, flush=True)
    os.execv(sys.executable, sys.orig_argv)
