"""Serving invocations from the region: the loop the agent runs inside a function VM.

The handler is imported once; then each invocation's event is read from the host buffer it
arrived in, the handler runs, and its JSON result (or Lambda's error shape) goes back in the
same buffer. A handler that fails to import answers every invocation with that error.
"""

import contextlib
import json
import sys

from nexus_runtime.invoke import Context, error_result, invoke, load_handler
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
        ok, result = answer(handler, init_error, event_bytes, Context(function_name, timeout_s))
        channel.finish_invocation(invocation, ok, result.encode("utf-8"))


def answer(handler, init_error, event_bytes, context):
    """(succeeded, result JSON) for one event."""
    if init_error is not None:
        return False, init_error
    try:
        event = json.loads(event_bytes)
    except ValueError as error:
        return False, json.dumps(error_result(error, "Runtime.InvalidEvent"))
    with contextlib.redirect_stdout(sys.stderr):
        return invoke(handler, event, context)
