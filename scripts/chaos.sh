#!/usr/bin/env bash
# The chaos soak (`make chaos`): builds the release node and load generator, then runs
# `switchboard-bench chaos`, which starts its own redis-server (append-only, in a temp dir) and
# three nodes on free ports, injects faults on a seeded schedule while publishers and
# recovering subscribers run, and prints one line of accounting:
#
#   chaos: seed=42 duration=180s faults=37 acknowledged=... expected=... delivered=...
#          repaired=... signalled=... lost=0 duplicates=0 order_violations=0
#
# Exit status: 0 when nothing was lost (and no duplicate, no order violation), 1 when
# something was, 2 when the run could not be set up.
#
# Settings (environment; extra arguments go to `switchboard-bench chaos`, after these):
#   CHAOS_DURATION  seconds of publishing under faults (default 180)
#   CHAOS_SEED      seed of the fault schedule (default: from the clock; always printed)
#   CHAOS_FAULTS    all (default), none, or a comma list of redis-restart, redis-wipe,
#                   redis-pause, pubsub-kill, node-kill, burst
#   CHAOS_RATE      server-API publishes per second, all publishers together (default 200)
#   CHAOS_KEEP      1: keep the work directory (logs, Redis data) even after a clean run;
#                   it is always kept after a failed one
#   SWITCHBOARD_BIN, BENCH_BIN: binaries to run instead of building them
#
#   scripts/chaos.sh
#   CHAOS_SEED=42 CHAOS_DURATION=60 scripts/chaos.sh
#   CHAOS_FAULTS=none CHAOS_DURATION=20 scripts/chaos.sh      # must report lost=0
#   scripts/chaos.sh --subscribers 60 --gap-max 3s
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET_DIR=${CARGO_TARGET_DIR:-target}
SWITCHBOARD_BIN=${SWITCHBOARD_BIN:-}
BENCH_BIN=${BENCH_BIN:-}
packages=()
[[ -z $SWITCHBOARD_BIN ]] && packages+=(-p switchboard)
[[ -z $BENCH_BIN ]] && packages+=(-p switchboard-bench)
if (( ${#packages[@]} > 0 )); then cargo build --release -q "${packages[@]}"; fi
SWITCHBOARD_BIN=${SWITCHBOARD_BIN:-$TARGET_DIR/release/switchboard}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/switchboard-bench}
[[ -x $SWITCHBOARD_BIN ]] || { echo "SWITCHBOARD_BIN=$SWITCHBOARD_BIN is not executable" >&2; exit 2; }
[[ -x $BENCH_BIN ]] || { echo "BENCH_BIN=$BENCH_BIN is not executable" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-chaos.XXXXXX")
status=2

# The generator stops every process it started, also on SIGINT and SIGTERM. This is the net
# for the case it cannot (it was SIGKILLed): every pid it started is in $WORK/pids; a pid is
# only signalled while its command line still names redis-server or this run's directory (a
# pid reused by an unrelated process is left alone). SIGCONT first: Redis may be paused.
cleanup() {
  local pid args
  if [[ -f $WORK/pids ]]; then
    while read -r pid; do
      [[ $pid =~ ^[0-9]+$ ]] || continue
      args=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || continue
      case $args in
        *redis-server*|*"$WORK"*)
          kill -CONT "$pid" 2>/dev/null || true
          kill -KILL "$pid" 2>/dev/null || true
          ;;
      esac
    done <"$WORK/pids"
  fi
  if [[ $status == 0 && ${CHAOS_KEEP:-0} != 1 ]]; then
    rm -rf "$WORK"
  else
    echo "chaos: logs, pids and Redis data kept in $WORK" >&2
  fi
}
trap cleanup EXIT

args=(chaos --switchboard-bin "$SWITCHBOARD_BIN" --work-dir "$WORK"
  --duration "${CHAOS_DURATION:-180}" --faults "${CHAOS_FAULTS:-all}" --rate "${CHAOS_RATE:-200}")
[[ -n ${CHAOS_SEED:-} ]] && args+=(--seed "$CHAOS_SEED")
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

set +e
"$BENCH_BIN" "${args[@]}" "$@"
status=$?
set -e
exit "$status"
