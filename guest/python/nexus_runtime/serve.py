"""Serving invocations from the region: the loop the agent runs inside a function VM.

The handler is imported once; then each invocation's event is read from the host buffer it
arrived in, the handler runs, and its JSON result (or Lambda's error shape) goes back in the
same buffer. A handler that fails to import answers every invocation with that error. A handler
that runs past the function's timeout is stopped and answered with Lambda's timeout error; the
runtime then replaces itself with a fresh one (exec, same command line), since the handler may
have been cut off anywhere, as Lambda re-initializes after a timeout.
"""

import contextlib
import json
import os
import sys

from nexus_runtime.invoke import (
    Context,
    HandlerTimeout,
    error_result,
    invoke,
    load_handler,
    timeout_result,
)
from nexus_shim.channel import default_channel

# How long one wait for an invocation lasts before it simply waits again.
WAIT_S = 60.0


def serve(handler_spec, function_name, timeout_s):
    channel = default_channel()
    with contextlib.redirect_stdout(sys.stderr):
        try:
            handler, init_error = load_handler(handler_spec), None
        except Exception as error:
            handler, init_error = None, json.dumps(error_result(error, "Runtime.ImportModuleError"))
    channel.ready()
    print(f"nexus-runtime: serving {handler_spec}", file=sys.stderr, flush=True)
    while True:
        got = channel.next_invocation(WAIT_S)
        if got is None:
            continue
        invocation, event_bytes = got
        context = Context(function_name, timeout_s)
        try:
            ok, result = answer(handler, init_error, event_bytes, context, timeout_s)
        except HandlerTimeout:
            result = json.dumps(timeout_result(timeout_s)).encode("utf-8")
            channel.finish_invocation(invocation, False, result)
            print("nexus-runtime: handler timed out; restarting", file=sys.stderr, flush=True)
            os.execv(sys.executable, sys.orig_argv)
        channel.finish_invocation(invocation, ok, result.encode("utf-8"))


def answer(handler, init_error, event_bytes, context, timeout_s):
    """(succeeded, result JSON) for one event."""
    if init_error is not None:
        return False, init_error
    try:
        event = json.loads(event_bytes)
    except ValueError as error:
        return False, json.dumps(error_result(error, "Runtime.InvalidEvent"))
    with contextlib.redirect_stdout(sys.stderr):
        return invoke(handler, event, context, timeout_s)
