#!/usr/bin/env bash
# Fan-out benchmark on this machine: a private redis-server and two release nodes
# on free ports, then `switchboard-bench fanout` against both. Everything started
# here is stopped on exit.
#
#   scripts/bench-fanout.sh [switchboard-bench fanout options...]
#   e.g. scripts/bench-fanout.sh --subscribers 1000 --rate 100 --duration 20 --warmup 3
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/bench-lib.sh"

bench_init
start_redis
ws=() api=() node_pids=()
for name in a b; do
  start_node "$name"
  ws+=(--ws "$NODE_WS"); api+=(--api "$NODE_API"); node_pids+=(--node-pid "$NODE_PID")
done

machine_line
target/release/switchboard-bench fanout "${ws[@]}" "${api[@]}" "${node_pids[@]}" "$@"
