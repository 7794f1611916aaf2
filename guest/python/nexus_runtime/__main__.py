"""``python3 -m nexus_runtime --handler path/to/handler.py:function --event event.json``

Prints the handler's JSON result on stdout (the handler's own prints go to stderr); on a handler
error prints ``{"errorType", "errorMessage", "stackTrace"}`` and exits 1. With ``--serve``
instead of ``--event`` it serves invocations from the region until killed; with
``--serve-http PORT`` it serves them over HTTP (``serve_http.py``).
"""

import argparse
import json
import sys
from pathlib import Path

from nexus_runtime.invoke import (
    Context,
    HandlerTimeout,
    answer,
    export_lambda_environment,
    load_or_error,
    timeout_result,
)
from nexus_runtime.serve import serve
from nexus_runtime.serve_http import serve_http


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m nexus_runtime", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--handler", required=True, help="path/to/handler.py:function_name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--event", help="event JSON file, or - for stdin")
    source.add_argument("--serve", action="store_true", help="serve invocations from the region")
    source.add_argument(
        "--serve-http", type=int, metavar="PORT", help="serve invocations over HTTP on PORT"
    )
    parser.add_argument("--function-name", help="context.function_name (default: the module name)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the handler may run")
    parser.add_argument(
        "--memory-mib",
        type=int,
        help="context.memory_limit_in_mb, unless AWS_LAMBDA_FUNCTION_MEMORY_SIZE is set "
        "(default: 128, Lambda's)",
    )
    args = parser.parse_args(argv)
    function_name = args.function_name or Path(args.handler.rpartition(":")[0]).stem
    export_lambda_environment(function_name, args.memory_mib)
    if args.serve:
        serve(args.handler, function_name, args.timeout)
        return 0
    if args.serve_http is not None:
        serve_http(args.handler, function_name, args.timeout, args.serve_http)
        return 0

    event_text = sys.stdin.read() if args.event == "-" else Path(args.event).read_text()
    handler, init_error = load_or_error(args.handler)
    context = Context(function_name, args.timeout)
    try:
        ok, result = answer(handler, init_error, event_text, context, args.timeout)
    except HandlerTimeout:
        ok, result = False, json.dumps(timeout_result(args.timeout))
    print(result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
