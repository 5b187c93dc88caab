#!/usr/bin/env bash
# Recovery after a node is killed: a private redis-server and two release nodes (A and B)
# with a history namespace; `switchboard-bench recover` subscribes the clients to node A,
# publishes through node B's API, kills node A with SIGKILL and measures how long the clients
# take to reconnect to node B and recover every missed message. Everything started here is
# stopped on exit (node A is already gone).
#
#   scripts/bench-recover.sh [switchboard-bench recover options...]
#   e.g. HISTORY_SIZE=100 scripts/bench-recover.sh --clients 1000 --rate 50 --before 5 --after 5
#   IP_CONNECT_RATE=50 scripts/bench-recover.sh      # node B with the default per-IP limit
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/bench-lib.sh"

HISTORY_SIZE=${HISTORY_SIZE:-100}
HISTORY_TTL=${HISTORY_TTL:-300}

bench_init
cat >"$BENCH_WORK/switchboard.toml" <<TOML
[namespaces.hist]
history_size = $HISTORY_SIZE
history_ttl = $HISTORY_TTL
TOML

start_redis
# Node A always admits the setup quickly; node B gets IP_CONNECT_RATE (default 100000), so
# IP_CONNECT_RATE=50 measures the reconnect storm under the node's default per-IP limit, as
# when every client comes through one proxy.
IP_CONNECT_RATE=100000 start_node a --config "$BENCH_WORK/switchboard.toml"
ws_a=$NODE_WS pid_a=$NODE_PID
# The generator kills node A: no "Killed" job notice from bash (cleanup still kills it if the
# run ends before that).
disown "$pid_a"
start_node b --config "$BENCH_WORK/switchboard.toml"
ws_b=$NODE_WS api_b=$NODE_API pid_b=$NODE_PID

wait_idle
machine_line
echo "# history: [namespaces.hist] history_size = $HISTORY_SIZE, history_ttl = $HISTORY_TTL; node A pid $pid_a (killed), node B pid $pid_b"
"$BENCH_BIN" recover --ws "$ws_a" --ws "$ws_b" --api "$api_b" \
  --kill-pid "$pid_a" --node-pid "$pid_b" --channel hist:recover "$@"
