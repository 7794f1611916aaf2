"""``python3 -m nexus_runtime --handler path/to/handler.py:function --event event.json``

Prints the handler's JSON result on stdout (the handler's own prints go to stderr); on a handler
error prints ``{"errorType", "errorMessage", "stackTrace"}`` and exits 1.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

from nexus_runtime.invoke import Context, error_result, invoke, load_handler


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m nexus_runtime", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--handler", required=True, help="path/to/handler.py:function_name")
    parser.add_argument("--event", required=True, help="event JSON file, or - for stdin")
    parser.add_argument("--function-name", help="context.function_name (default: the module name)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the handler may run")
    args = parser.parse_args(argv)

    event_text = sys.stdin.read() if args.event == "-" else Path(args.event).read_text()
    event = json.loads(event_text)
    function_name = args.function_name or Path(args.handler.rpartition(":")[0]).stem
    with contextlib.redirect_stdout(sys.stderr):
        try:
            handler = load_handler(args.handler)
        except Exception as error:
            ok, result = False, json.dumps(error_result(error, "Runtime.ImportModuleError"))
        else:
            ok, result = invoke(handler, event, Context(function_name, args.timeout))
    print(result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
