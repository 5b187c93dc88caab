#!/usr/bin/env bash
# The standard benchmark set (`make bench`): each scenario on its own private
# redis-server and release nodes (scripts/bench-*.sh), then the results table written into
# BENCHMARKS.md between the `bench:standard` markers (scripts/bench_table.py).
#
#   scripts/bench.sh               # the standard sizes; writes BENCHMARKS.md
#   scripts/bench.sh --no-write    # the same, prints the table only
#   scripts/bench.sh --smoke       # tiny sizes, a few seconds each, to check the machinery;
#                                  # prints the table, never writes it
#
# The set: fanout at 50 publishes/s to 1,000 subscribers over 2 nodes (50,000 deliveries/s),
# 64-byte payloads; the ramp of that fanout (×2 per step from 50/s until loss or p99 > 100 ms);
# rooms, 1,000 channels × 5 subscribers at 2,000 publishes/s; new connections per second on one
# node; 10,000 idle subscribed connections on one node. Fanout, rooms and idle run twice: with
# subscribers on the node's own JSON protocol, then on the Pusher protocol (PROTOCOLS="json
# pusher", scripts/bench-lib.sh), on the same nodes (idle: a fresh node each, the same Redis),
# and the table shows both. Before each scenario it waits (up to
# IDLE_WAIT, 300 s) for the shared machine to be idle. Reports, JSON lines and commands are
# kept in BENCH_RESULTS (default $CARGO_TARGET_DIR/bench-standard/<time>, target/ by default).
# SWITCHBOARD_BIN, SWITCHBOARD_COMMIT, BENCH_BIN, NODE_PREFIX and IP_CONNECT_RATE work as in
# scripts/bench-lib.sh.
#
# Exit status: 0 when every scenario ran clean, 1 when one found a problem, 2 when one could
# not run (the table is written either way, saying so).
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/bench-lib.sh"

smoke=0 write=1
for arg in "$@"; do
  case $arg in
    --smoke) smoke=1 write=0 ;;
    --no-write) write=0 ;;
    *) echo "usage: scripts/bench.sh [--smoke] [--no-write]" >&2; exit 2 ;;
  esac
done

if (( smoke )); then
  : "${IDLE_WAIT:=0}"
  FANOUT=(scripts/bench-fanout.sh --subscribers 100 --rate 20 --duration 4 --warmup 1 --payload 64)
  RAMP=(scripts/bench-ramp.sh --subscribers 100 --payload 64 --start 50 --factor 4 --max-rate 200 --step-duration 3 --step-warmup 1)
  ROOMS=(scripts/bench-rooms.sh --channels 50 --per-channel 5 --rate 200 --duration 4 --warmup 1 --payload 64)
  CONNECT=(scripts/bench-connect.sh --connections 2000 --concurrency 128)
  IDLE=(scripts/bench-idle.sh --connections 500 --channels 100 --hold 3)
else
  FANOUT=(scripts/bench-fanout.sh --subscribers 1000 --rate 50 --duration 20 --warmup 3 --payload 64)
  RAMP=(scripts/bench-ramp.sh --subscribers 1000 --payload 64 --start 50 --factor 2 --step-duration 10 --step-warmup 2 --p99-bound-ms 100)
  ROOMS=(scripts/bench-rooms.sh --channels 1000 --per-channel 5 --rate 2000 --duration 20 --warmup 3 --payload 64)
  CONNECT=(scripts/bench-connect.sh --connections 20000 --concurrency 128)
  IDLE=(scripts/bench-idle.sh --connections 10000 --channels 100 --hold 30)
fi
export IDLE_WAIT

bench_init   # builds once; the scenario scripts reuse these binaries
export SWITCHBOARD_BIN BENCH_BIN
SWITCHBOARD_COMMIT=$(node_commit)
export SWITCHBOARD_COMMIT
results=${BENCH_RESULTS:-$BENCH_TARGET_DIR/bench-standard/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
python3 - "$results/meta.json" <<PY
import json, sys
json.dump({
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
    "nproc": $(nproc),
    "kernel": "$(uname -r)",
    "redis": "$(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)",
    "node_commit": "$SWITCHBOARD_COMMIT",
    "node_binary": "$SWITCHBOARD_BIN",
    "smoke": bool($smoke),
}, open(sys.argv[1], "w"))
PY
machine_line

status=0
# run NAME PROTOCOLS COMMAND...: runs one scenario with --json, once per protocol of PROTOCOLS
# (scripts/bench-lib.sh); keeps its output, JSON lines (one per protocol run, each naming its
# protocol), command and exit status in $results.
run() {
  local name=$1 protocols=$2 rc=0 cmd
  shift 2
  cmd="$*"
  [[ $protocols != json ]] && cmd="PROTOCOLS=\"$protocols\" $cmd"
  echo
  echo "## $name: $cmd"
  wait_idle
  PROTOCOLS=$protocols "$@" --json 2> >(tee "$results/$name.err" >&2) | tee "$results/$name.out" || rc=$?
  echo "$cmd" >"$results/$name.cmd"
  echo "$rc" >"$results/$name.rc"
  if grep -q '^{' "$results/$name.out"; then
    grep '^{' "$results/$name.out" >"$results/$name.json"
  else
    rm -f "$results/$name.json"
    tail -n 5 "$results/$name.err" >&2
  fi
  (( rc > status )) && status=$rc
  return 0
}

run fanout "json pusher" "${FANOUT[@]}"
run ramp json "${RAMP[@]}"
run rooms "json pusher" "${ROOMS[@]}"
run connect json "${CONNECT[@]}"
run idle "json pusher" "${IDLE[@]}"

echo
if (( write )); then
  python3 scripts/bench_table.py "$results" --write BENCHMARKS.md
else
  python3 scripts/bench_table.py "$results"
fi
echo "reports in $results"
exit "$status"
