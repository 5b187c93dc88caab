"""Runs calls of the PyPI `pusher` server SDK for python.test.js, one per input line.

Each line on stdin is a JSON call: the app and node ({"app_id", "key", "secret", "host",
"port"}), the SDK method ("method") and its arguments ("args", "kwargs"). For each, one line
on stdout: {"result": ...} on success, or {"error": <exception class>, "message": ...}. One
process serves the whole suite, so the SDK is imported once. Ends at end of input.
"""
import json
import sys

import pusher


def run(call):
    client = pusher.Pusher(
        app_id=call["app_id"],
        key=call["key"],
        secret=call["secret"],
        host=call["host"],
        port=call["port"],
        ssl=False,
        timeout=10,
    )
    try:
        result = getattr(client, call["method"])(*call.get("args", []), **call.get("kwargs", {}))
    except Exception as e:  # the test reads which error the SDK raised
        return {"error": type(e).__name__, "message": str(e)}
    return {"result": result}


def main():
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
