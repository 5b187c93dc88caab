#!/usr/bin/env bash
# Idle connections on one node: a private redis-server and one release node on free ports, then
# `switchboard-bench idle`: N subscribed connections opened and held, the node's RSS per
# connection and CPU per accepted connection. The node gets --max-connections
# $MAX_CONNECTIONS (default 100000: its own default, 10,000, would refuse the last ones of a
# larger run); the fd limit (about 20,000 per process here) still bounds N. Everything started
# here is stopped on exit.
#
#   scripts/bench-idle.sh [switchboard-bench idle options...]
#   e.g. scripts/bench-idle.sh --connections 10000 --channels 100 --hold 30
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/bench-lib.sh"

bench_init
start_redis
start_node a --max-connections "${MAX_CONNECTIONS:-100000}"

machine_line
echo "# open files: soft limit $(ulimit -n) (generator and node)"
"$BENCH_BIN" idle --ws "$NODE_WS" --node-pid "$NODE_PID" "$@"
