"""Runs one call of the PyPI `pusher` server SDK against a node, for python.test.js.

Usage: sdk.py '<json>' where the JSON names the app and node
({"app_id", "key", "secret", "host", "port"}), the SDK method ("method") and its
arguments ("args", "kwargs"). Prints {"result": ...} on success, or
{"error": <exception class>, "message": ...} on a failure, and exits 0 either way:
the Node test asserts on what it prints.
"""
import json
import sys

import pusher


def main():
    call = json.loads(sys.argv[1])
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
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
        return
    print(json.dumps({"result": result}))


if __name__ == "__main__":
    main()
