# shellcheck shell=bash
# Shared by the scripts/bench-*.sh benchmarks (sourced, not run): a private redis-server and
# release nodes on free ports, all stopped when the calling script exits.
#
#   source "$(dirname "$0")/bench-lib.sh"
#   bench_init                      # build, temp dir, cleanup trap, fd limit raised
#   start_redis                     # REDIS_PORT, REDIS_PID
#   start_node a [node flags...]    # NODE_WS, NODE_API, NODE_PID of the node just started
#   start_nodes a b                 # WS_ARGS, API_ARGS, PID_ARGS: --ws/--api/--node-pid of each
#   "$BENCH_BIN" fanout ...         # the load generator
#
# NODE_PREFIX (optional) is put before the node's command line, e.g. `taskset -c 1`, or `env`
# with an LD_PRELOAD for an experiment. SWITCHBOARD_BIN (optional) is the node binary to run
# instead of building $CARGO_TARGET_DIR/release/switchboard (default target/) from this
# checkout (e.g. one built from a clean export of a commit, when the working tree has
# somebody's uncommitted changes); SWITCHBOARD_COMMIT (optional) says which commit it was built
# from, for the reports. BENCH_BIN (optional) is the load generator to run instead of building
# $CARGO_TARGET_DIR/release/switchboard-bench.
#
# The soft limit on open files is raised to the hard limit (the idle scenario holds 10,000
# connections; this machine allows about 20,000 per process); nodes inherit it.
#
# PROTOCOLS (default "json"): the subscribers' wire protocols of the fanout, rooms and idle
# scripts, run in turn against the same nodes, one generator run each (see run_protocols);
# e.g. "json pusher", or "json pusher json pusher" to alternate. When it names `pusher`, the
# nodes get one Pusher app: --pusher-app-id $PUSHER_APP_ID (bench), --pusher-key $PUSHER_KEY
# (bench-key), --pusher-secret $PUSHER_SECRET (bench-secret), and the generator the same id and
# key.
#
# Nodes get --ip-connect-rate 100000 (IP_CONNECT_RATE overrides it): every benchmark client
# connects from 127.0.0.1, and the default of 50 new connections per second per IP
# (docs/CONFIGURATION.md, `--max-pending-per-ip`) would refuse most of a 1,000-client setup (HTTP 429).

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

BENCH_PIDS=()
BENCH_WORK=

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [[ -n $BENCH_WORK ]] && rm -rf "$BENCH_WORK"
}

PROTOCOLS=${PROTOCOLS:-json}
PUSHER_APP_ID=${PUSHER_APP_ID:-bench}
PUSHER_KEY=${PUSHER_KEY:-bench-key}
PUSHER_SECRET=${PUSHER_SECRET:-bench-secret}
PUSHER_FLAGS=()
if [[ " $PROTOCOLS " == *" pusher "* ]]; then
  PUSHER_FLAGS=(--pusher-app-id "$PUSHER_APP_ID" --pusher-key "$PUSHER_KEY" --pusher-secret "$PUSHER_SECRET")
fi

SWITCHBOARD_BIN=${SWITCHBOARD_BIN:-}
BENCH_BIN=${BENCH_BIN:-}
BENCH_TARGET_DIR=${CARGO_TARGET_DIR:-target}

bench_init() {
  local packages=()
  [[ -z $SWITCHBOARD_BIN ]] && packages+=(-p switchboard)
  [[ -z $BENCH_BIN ]] && packages+=(-p switchboard-bench)
  if (( ${#packages[@]} > 0 )); then cargo build --release -q "${packages[@]}"; fi
  SWITCHBOARD_BIN=${SWITCHBOARD_BIN:-$BENCH_TARGET_DIR/release/switchboard}
  BENCH_BIN=${BENCH_BIN:-$BENCH_TARGET_DIR/release/switchboard-bench}
  [[ -x $SWITCHBOARD_BIN ]] || { echo "SWITCHBOARD_BIN=$SWITCHBOARD_BIN is not executable" >&2; exit 2; }
  [[ -x $BENCH_BIN ]] || { echo "BENCH_BIN=$BENCH_BIN is not executable" >&2; exit 2; }
  command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server" >&2; exit 2; }
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  BENCH_WORK=$(mktemp -d)
  trap bench_cleanup EXIT
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$BENCH_WORK" \
    >"$BENCH_WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  BENCH_PIDS+=("$REDIS_PID")
  local _
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "redis-server did not start:" >&2; cat "$BENCH_WORK/redis.log" >&2; exit 2
}

# start_node NAME [extra switchboard flags...]
start_node() {
  local name=$1; shift
  # shellcheck disable=SC2086 # NODE_PREFIX is a command prefix: split on purpose
  ${NODE_PREFIX:-} "$SWITCHBOARD_BIN" --redis-url "redis://127.0.0.1:$REDIS_PORT" --node-id "bench-$name" \
    --listen 127.0.0.1:0 --internal-listen 127.0.0.1:0 --log-level warn \
    --ip-connect-rate "${IP_CONNECT_RATE:-100000}" "${PUSHER_FLAGS[@]}" "$@" \
    >"$BENCH_WORK/$name.out" 2>"$BENCH_WORK/$name.err" &
  NODE_PID=$!
  BENCH_PIDS+=("$NODE_PID")
  local _ line public internal
  for _ in $(seq 200); do grep -qs '^switchboard listening' "$BENCH_WORK/$name.out" && break; sleep 0.05; done
  line=$(grep -s '^switchboard listening' "$BENCH_WORK/$name.out") || { cat "$BENCH_WORK/$name.err" >&2; exit 2; }
  public=${line#*public=}; public=${public%% *}
  internal=${line#*internal=}
  # shellcheck disable=SC2034 # NODE_WS, NODE_API, NODE_PID are for the calling script
  NODE_WS="ws://$public/ws"
  NODE_API="http://$internal"
  for _ in $(seq 200); do curl -sf "$NODE_API/readyz" >/dev/null && return 0; sleep 0.05; done
  echo "node $name is not ready:" >&2; cat "$BENCH_WORK/$name.err" >&2; exit 2
}

# start_nodes NAME... [-- node flags...]: starts each node; WS_ARGS, API_ARGS and PID_ARGS hold
# the generator's --ws, --api and --node-pid options for all of them, in order.
start_nodes() {
  local names=() name
  while (( $# > 0 )) && [[ $1 != -- ]]; do names+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  WS_ARGS=() API_ARGS=() PID_ARGS=()
  for name in "${names[@]}"; do
    start_node "$name" "$@"
    WS_ARGS+=(--ws "$NODE_WS"); API_ARGS+=(--api "$NODE_API"); PID_ARGS+=(--node-pid "$NODE_PID")
  done
}

# stop_node PID: stops a node started here (SIGTERM, then waits for it).
stop_node() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# run_protocols SCENARIO [generator options...]: runs `$BENCH_BIN SCENARIO` once per protocol of
# PROTOCOLS, in order, each run preceded by a `# protocol: P` line; a pusher run gets
# `--protocol pusher --pusher-app $PUSHER_APP_ID --pusher-key $PUSHER_KEY` before the options
# (the generator derives the endpoint URL from --ws). Returns the worst exit status.
run_protocols() {
  local scenario=$1 p rc status=0 flags
  shift
  for p in $PROTOCOLS; do
    case $p in
      json) flags=() ;;
      pusher) flags=(--protocol pusher --pusher-app "$PUSHER_APP_ID" --pusher-key "$PUSHER_KEY") ;;
      *) echo "PROTOCOLS: unknown protocol $p (json, pusher)" >&2; return 2 ;;
    esac
    echo "# protocol: $p"
    rc=0
    "$BENCH_BIN" "$scenario" "${flags[@]}" "$@" || rc=$?
    (( rc > status )) && status=$rc
  done
  return "$status"
}

# Which commit the node binary was built from, as far as this script can tell.
node_commit() {
  if [[ -n ${SWITCHBOARD_COMMIT:-} ]]; then
    echo "$SWITCHBOARD_COMMIT"
  elif [[ $SWITCHBOARD_BIN == "$BENCH_TARGET_DIR/release/switchboard" ]]; then
    local dirty
    dirty=$(git status --porcelain -- Cargo.lock crates/switchboard crates/switchboard-gateway \
      crates/switchboard-backplane crates/switchboard-proto proto 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
    echo "$(git rev-parse --short HEAD 2>/dev/null)${dirty:+ plus uncommitted changes to: $dirty}"
  else
    echo "unknown (set SWITCHBOARD_COMMIT)"
  fi
}

# Lines describing the machine, the moment and the node binary, for BENCHMARKS.md.
machine_line() {
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(uname -r), redis $(redis-server --version | grep -o 'v=[0-9.]*'), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# node: $SWITCHBOARD_BIN built from $(node_commit)"
}

# Busy cores over the last $1 seconds (default 2), from /proc/stat.
busy_cores() {
  local secs=${1:-2} a b
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep "$secs"
  read -r -a b < <(grep '^cpu ' /proc/stat)
  local busy=0 total=0 i d
  for i in 1 2 3 4 5 6 7 8; do
    d=$(( b[i] - a[i] ))
    total=$(( total + d ))
    [[ $i -ne 4 && $i -ne 5 ]] && busy=$(( busy + d ))
  done
  awk -v b="$busy" -v t="$total" -v n="$(nproc)" 'BEGIN { printf "%.2f", (t > 0 ? b / t * n : 0) }'
}

# Waits (up to IDLE_WAIT seconds, default 300; 0 = do not wait) until the machine is idle:
# under IDLE_CORES (default 0.3) cores busy over 2 s. The machine is shared: a benchmark that
# runs next to somebody's build measures the build too.
wait_idle() {
  local limit=${IDLE_WAIT:-300} waited=0 busy
  while (( waited < limit )); do
    busy=$(busy_cores 2)
    if awk -v b="$busy" -v m="${IDLE_CORES:-0.3}" 'BEGIN { exit !(b < m) }'; then
      echo "# machine idle ($busy cores busy) after ${waited} s of waiting"
      return 0
    fi
    waited=$(( waited + 2 ))
  done
  (( limit > 0 )) && echo "# machine still busy ($busy cores) after ${limit} s: measuring anyway"
  return 0
}
