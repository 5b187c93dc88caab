#!/usr/bin/env bash
# Rooms benchmark (the chat pattern): a private redis-server and two release nodes on free
# ports, then `switchboard-bench rooms`: C channels × k subscribers spread over both nodes, a
# total publish rate spread over the channels through both nodes' APIs. Everything started
# here is stopped on exit. PROTOCOLS="json pusher" runs the scenario once per protocol on the
# same nodes (scripts/bench-lib.sh).
#
#   scripts/bench-rooms.sh [switchboard-bench rooms options...]
#   e.g. scripts/bench-rooms.sh --channels 1000 --per-channel 5 --rate 2000 --duration 20
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/bench-lib.sh"

bench_init
start_redis
start_nodes a b

machine_line
run_protocols rooms "${WS_ARGS[@]}" "${API_ARGS[@]}" "${PID_ARGS[@]}" "$@"
