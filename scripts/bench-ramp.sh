#!/usr/bin/env bash
# Ramp benchmark: a private redis-server and two release nodes on free ports, then
# `switchboard-bench ramp`: the fan-out scenario (subscribers on one channel over both nodes)
# at rising publish rates until a step loses messages or its p99 passes --p99-bound-ms.
# Everything started here is stopped on exit.
#
#   scripts/bench-ramp.sh [switchboard-bench ramp options...]
#   e.g. scripts/bench-ramp.sh --subscribers 1000 --start 50 --factor 2 --step-duration 10
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/bench-lib.sh"

bench_init
start_redis
start_nodes a b

machine_line
"$BENCH_BIN" ramp "${WS_ARGS[@]}" "${API_ARGS[@]}" "${PID_ARGS[@]}" "$@"
