"""Serving invocations from the region: the loop the agent runs inside a function VM.

The handler is imported once; then each invocation's event is read from the host buffer it
arrived in, the handler runs, and its JSON result (or Lambda's error shape) goes back in the
same buffer. A handler that fails to import answers every invocation with that error. A handler
that runs past the function's timeout is stopped and answered with Lambda's timeout error; the
runtime then replaces itself with a fresh one (exec, same command line), since the handler may
have been cut off anywhere, as Lambda re-initializes after a timeout.
"""

import json
import sys

from nexus_runtime.invoke import (
    Context,
    HandlerTimeout,
    answer,
    load_or_error,
    restart_after_timeout,
    timeout_result,
)
from nexus_shim.channel import default_channel

# How long one wait for an invocation lasts before it simply waits again.
WAIT_S = 60.0


def serve(handler_spec, function_name, timeout_s):
    channel = default_channel()
    handler, init_error = load_or_error(handler_spec)
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
            restart_after_timeout()
        channel.finish_invocation(invocation, ok, result.encode("utf-8"))
