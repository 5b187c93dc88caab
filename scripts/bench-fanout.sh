#!/usr/bin/env bash
# Fan-out benchmark on this machine: a private redis-server and two release nodes
# on free ports, then `switchboard-bench fanout` against both. Everything started
# here is stopped on exit. PROTOCOLS="json pusher" runs the scenario once per protocol on the
# same nodes (scripts/bench-lib.sh).
#
#   scripts/bench-fanout.sh [switchboard-bench fanout options...]
#   e.g. scripts/bench-fanout.sh --subscribers 1000 --rate 100 --duration 20 --warmup 3
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/bench-lib.sh"

bench_init
start_redis
start_nodes a b

machine_line
run_protocols fanout "${WS_ARGS[@]}" "${API_ARGS[@]}" "${PID_ARGS[@]}" "$@"
