#!/usr/bin/env bash
# CI smoke run of the chaos soak (`make chaos` for 40 s), run by .ci/run after the Rust tests,
# or alone from the repository root: `bash .ci/steps/60-chaos-smoke.sh`.
#
# A fixed seed and every fault kind (redis-restart, redis-wipe, redis-pause, pubsub-kill,
# node-kill, burst) at least once: the schedule deals each kind once before any repeats, and
# with gaps of 1-2 s and outages of at most 2 s all six fit in 40 s. It checks that the tool
# runs and prints its accounting line, and it fails when that line reports a lost message, a
# duplicate or an order violation: that is the point of the soak.
# Exit status: non-zero if the build fails, the run cannot be set up, the accounting line is
# missing, or the accounting is not clean.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
CHAOS_SEED=${CHAOS_SEED:-20261203} CHAOS_DURATION=${CHAOS_DURATION:-40} CHAOS_FAULTS=all \
  scripts/chaos.sh --gap-min 1s --gap-max 2s --outage-max 2s --warmup 2 --settle-timeout 30s \
  | tee "$out" || status=$?
line=$(grep '^chaos: seed=' "$out" || true)
if [[ -z $line ]]; then
  echo "chaos smoke: no accounting line (exit status $status)" >&2
  exit 1
fi
for kind in redis-restart redis-wipe redis-pause pubsub-kill node-kill burst; do
  grep -q "^faults: .*$kind" "$out" || { echo "chaos smoke: no $kind fault ran" >&2; exit 1; }
done
if [[ $line != *" lost=0 "* ]]; then
  echo "chaos smoke: messages were lost: $line" >&2
  exit 1
fi
exit "$status"
