#!/usr/bin/env bash
# Fan-out benchmark on this machine: a private redis-server and two release nodes
# on free ports, then `switchboard-bench fanout` against both. Everything started
# here is stopped on exit.
#
#   scripts/bench-fanout.sh [switchboard-bench fanout options...]
#   e.g. scripts/bench-fanout.sh --subscribers 1000 --rate 100 --duration 20 --warmup 3
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p switchboard -p switchboard-bench
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

ws=() api=() node_pids=()
for name in a b; do
  target/release/switchboard --redis-url "redis://127.0.0.1:$redis_port" --node-id "bench-$name" \
    --listen 127.0.0.1:0 --internal-listen 127.0.0.1:0 --log-level warn \
    >"$work/$name.out" 2>"$work/$name.err" &
  pid=$!
  pids+=("$pid")
  node_pids+=("$pid")
  for _ in $(seq 200); do grep -q '^switchboard listening' "$work/$name.out" && break; sleep 0.05; done
  line=$(grep '^switchboard listening' "$work/$name.out") || { cat "$work/$name.err" >&2; exit 2; }
  public=${line#*public=}; public=${public%% *}
  internal=${line#*internal=}
  ws+=(--ws "ws://$public/ws")
  api+=(--api "http://$internal")
  for _ in $(seq 200); do curl -sf "http://$internal/readyz" >/dev/null && break; sleep 0.05; done
done

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(uname -r), redis $(redis-server --version | grep -o 'v=[0-9.]*')"
target/release/switchboard-bench fanout "${ws[@]}" "${api[@]}" \
  --node-pid "${node_pids[0]}" --node-pid "${node_pids[1]}" "$@"
