#!/usr/bin/env bash
# New connections per second on one node: a private redis-server and one release node on free
# ports, then `switchboard-bench connect`: connections opened as fast as --concurrency allows,
# each upgraded, welcomed and closed. Every connection comes from 127.0.0.1, so the node's
# per-IP connect limit is raised (IP_CONNECT_RATE, default 100000/s). Everything started here
# is stopped on exit.
#
#   scripts/bench-connect.sh [switchboard-bench connect options...]
#   e.g. scripts/bench-connect.sh --connections 20000 --concurrency 128
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/bench-lib.sh"

bench_init
start_redis
start_node a --max-connections "${MAX_CONNECTIONS:-100000}"

machine_line
"$BENCH_BIN" connect --ws "$NODE_WS" --node-pid "$NODE_PID" "$@"
