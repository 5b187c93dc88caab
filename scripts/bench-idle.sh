#!/usr/bin/env bash
# Idle connections on one node: a private redis-server and one release node on free ports, then
# `switchboard-bench idle`: N subscribed connections opened and held, the node's RSS per
# connection and CPU per accepted connection. The node gets --max-connections
# $MAX_CONNECTIONS (default 100000: its own default, 10,000, would refuse the last ones of a
# larger run); the fd limit (about 20,000 per process here) still bounds N. Everything started
# here is stopped on exit.
#
# PROTOCOLS="json pusher" runs the scenario once per protocol (scripts/bench-lib.sh), each on a
# node of its own started for it on the same Redis: RSS per connection is the growth of the
# node's RSS, and a node that already held and closed the other protocol's connections would
# reuse that freed memory and show less growth.
#
#   scripts/bench-idle.sh [switchboard-bench idle options...]
#   e.g. scripts/bench-idle.sh --connections 10000 --channels 100 --hold 30
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/bench-lib.sh"

bench_init
start_redis

all_protocols=$PROTOCOLS status=0 i=0
for protocol in $all_protocols; do
  i=$(( i + 1 ))
  start_node "a$i" --max-connections "${MAX_CONNECTIONS:-100000}"
  machine_line
  echo "# open files: soft limit $(ulimit -n) (generator and node)"
  rc=0
  PROTOCOLS=$protocol run_protocols idle --ws "$NODE_WS" --node-pid "$NODE_PID" "$@" || rc=$?
  (( rc > status )) && status=$rc
  stop_node "$NODE_PID"
done
exit "$status"
