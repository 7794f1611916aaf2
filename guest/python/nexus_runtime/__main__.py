"""``python3 -m nexus_runtime --handler path/to/handler.py:function --event event.json``

Prints the handler's JSON result on stdout (the handler's own prints go to stderr); on a handler
error prints ``{"errorType", "errorMessage", "stackTrace"}`` and exits 1. With ``--serve``
instead of ``--event`` it serves invocations from the region until killed.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

from nexus_runtime.invoke import (
    Context,
    HandlerTimeout,
    error_result,
    invoke,
    load_handler,
    timeout_result,
)
from nexus_runtime.serve import serve


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m nexus_runtime", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--handler", required=True, help="path/to/handler.py:function_name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--event", help="event JSON file, or - for stdin")
    source.add_argument("--serve", action="store_true", help="serve invocations from the region")
    parser.add_argument("--function-name", help="context.function_name (default: the module name)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the handler may run")
    args = parser.parse_args(argv)
    function_name = args.function_name or Path(args.handler.rpartition(":")[0]).stem
    if args.serve:
        serve(args.handler, function_name, args.timeout)
        return 0

    event_text = sys.stdin.read() if args.event == "-" else Path(args.event).read_text()
    event = json.loads(event_text)
    with contextlib.redirect_stdout(sys.stderr):
        try:
            handler = load_handler(args.handler)
        except Exception as error:
            ok, result = False, json.dumps(error_result(error, "Runtime.ImportModuleError"))
        else:
            context = Context(function_name, args.timeout)
            try:
                ok, result = invoke(handler, event, context, args.timeout)
            except HandlerTimeout:
                ok, result = False, json.dumps(timeout_result(args.timeout))
    print(result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
