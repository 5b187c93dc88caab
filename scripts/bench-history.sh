#!/usr/bin/env bash
# The cost of history: the fan-out benchmark (a private redis-server, two release nodes,
# 1,000 subscribers, API publishers) run on a channel without history and on a channel with
# history, at each rate, against the same nodes, in one invocation. The nodes read a config
# file with a `hist` namespace; `plain:` channels get the defaults (no history). With history
# every subscriber also checks that its offsets increase by exactly one.
#
#   scripts/bench-history.sh [switchboard-bench fanout options...]
#   RATES="100 200" HISTORY_SIZE=100 HISTORY_TTL=300 scripts/bench-history.sh --duration 20
#
# Prints each run's report, then one Markdown table of all runs. Exit status 1 if any run
# failed its checks (loss, duplicates, order, offset gaps or repeats, publish errors).
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

RATES=${RATES:-"100 200"}
HISTORY_SIZE=${HISTORY_SIZE:-100}
HISTORY_TTL=${HISTORY_TTL:-300}

bench_init
cat >"$BENCH_WORK/switchboard.toml" <<TOML
[namespaces.hist]
history_size = $HISTORY_SIZE
history_ttl = $HISTORY_TTL
TOML

start_redis
ws=() api=() node_pids=()
for name in a b; do
  start_node "$name" --config "$BENCH_WORK/switchboard.toml"
  ws+=(--ws "$NODE_WS"); api+=(--api "$NODE_API"); node_pids+=(--node-pid "$NODE_PID")
done

machine_line
echo "# history: [namespaces.hist] history_size = $HISTORY_SIZE, history_ttl = $HISTORY_TTL; rates: $RATES"
status=0
results=()
for rate in $RATES; do
  for channel in plain:bench hist:bench; do
    out="$BENCH_WORK/run-$rate-${channel%%:*}.out"
    echo
    echo "## $channel at $rate publishes/s (load $(cut -d' ' -f1-3 /proc/loadavg))"
    rc=0
    target/release/switchboard-bench fanout "${ws[@]}" "${api[@]}" "${node_pids[@]}" \
      --redis-pid "$REDIS_PID" --subscribers 1000 --payload 64 --duration 20 --warmup 3 \
      --rate "$rate" --channel "$channel" --json "$@" >"$out" || rc=$?
    sed '$d' "$out"
    if [[ $rc -ne 0 ]]; then status=1; fi
    if [[ $rc -le 1 ]]; then results+=("$(tail -n 1 "$out")"); fi
  done
done

echo
echo "| publishes/s | channel | deliveries/s | lost / dup / out of order | offsets checked / gaps / repeats | p50 | p99 | p99.9 | max | node CPU per delivery (both nodes) | Redis CPU per publish | generator CPU per delivery | machine busy / other processes (cores) | result |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in "${results[@]}"; do
  jq -r '
    def f(n): (n * 100 | round) / 100;
    def ms(n): "\(f(n)) ms";
    [ (.target_rate|tostring),
      "`\(.channel)`",
      (.deliveries_per_sec|round|tostring),
      "\(.lost) / \(.duplicated) / \(.out_of_order)",
      (if .offsets then "\(.offsets.checked) / \(.offsets.gaps) / \(.offsets.repeats)" else "-" end),
      ms(.latency_ms.p50), ms(.latency_ms.p99), ms(.latency_ms.p99_9), ms(.latency_ms.max),
      (if .deliveries > 0 then "\(f(([.nodes[].cpu_secs] | add) * 1e6 / .deliveries)) µs" else "-" end),
      (if .redis.cpu_us_per_publish then "\(f(.redis.cpu_us_per_publish)) µs" else "-" end),
      (if .generator.cpu_us_per_delivery then "\(f(.generator.cpu_us_per_delivery)) µs" else "-" end),
      (if .machine then "\(f(.machine.busy_cores)) / \(f(.machine.other_cores))" else "-" end),
      (if .ok then "OK" else "FAILED: " + (.failures | join("; ")) end)
    ] | "| " + join(" | ") + " |"' <<<"$r"
done
exit $status
