# The verbs a Switchboard user types. `make help` lists them.
#
# Every verb is a thin wrapper around cargo (or docker), so the README's plain
# cargo commands and these verbs never disagree.

CARGO ?= cargo
REDIS_SERVER ?= redis-server
REDIS_CLI ?= redis-cli

# Where cargo puts the release binary that `make cluster` starts.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
SWITCHBOARD_BIN ?= $(TARGET_DIR)/release/switchboard

# The local three-node cluster: one Redis, three nodes as id:public:internal.
CLUSTER_DIR := .cluster
CLUSTER_REDIS_PORT ?= 6380
CLUSTER_NODES := node-a:8081:9091 node-b:8082:9092 node-c:8083:9093
# Seconds `cluster-stop` waits for the nodes to drain (the default drain timeout is 30).
CLUSTER_STOP_WAIT ?= 35

# Each recipe runs as one bash script that stops at the first failing command.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

.PHONY: help run build test lint fmt cluster cluster-stop bench bench-fanout loadtest chaos autobahn image

help:
	@cat <<'TEXT'
	make run           run one node (in-process backplane): ws://localhost:8080/ws, API on 127.0.0.1:9090
	make test          run every test (starts its own redis-server)
	make lint          rustfmt check, clippy with warnings as errors, rustdoc with warnings as errors
	make fmt           format the code
	make build         build every crate in release mode
	make cluster       start Redis on :$(CLUSTER_REDIS_PORT) and three nodes on :8081-8083 (API :9091-9093)
	make cluster-stop  stop that cluster
	make bench         the standard benchmark set (fanout, ramp, rooms, connect, idle); writes its table into BENCHMARKS.md
	make bench-fanout  one fan-out benchmark: Redis + 2 nodes + 1,000 subscribers (BENCH_ARGS=...)
	make autobahn      the Autobahn TestSuite (sections 1-10) against the node's WebSocket layer
	make loadtest      the k6 load tests: Redis + 2 nodes, loadtest/*.js at this machine's size (LOADTEST_ARGS=--smoke)
	make chaos         fault soak: Redis + 3 nodes killed and paused on a seeded schedule, one accounting line, fails on loss (CHAOS_DURATION=180 CHAOS_SEED=N CHAOS_FAULTS=none)
	make image         build the container image from deploy/Dockerfile (IMAGE=switchboard, needs docker)
	TEXT

# ARGS passes flags to the node: make run ARGS="--redis-url redis://127.0.0.1:6379"
run:
	$(CARGO) run --release -p switchboard -- $(ARGS)

build:
	$(CARGO) build --release --workspace

test:
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

fmt:
	$(CARGO) fmt --all

# Shell functions shared by `cluster` (to undo a half-started cluster) and `cluster-stop`.
# Nodes stop first (they drain on SIGTERM), Redis last, so no node sees Redis vanish mid-drain.
define CLUSTER_STOP_FUNCS
stop_pidfile() {  # stop_pidfile FILE WORD: SIGTERM the pid in FILE if its command line has WORD
  local pidfile=$$1 pid args
  [ -f "$$pidfile" ] || return 0
  pid=$$(cat "$$pidfile")
  rm -f "$$pidfile"
  kill -0 "$$pid" 2>/dev/null || return 0
  # A stale pidfile may name a reused pid: only signal the process this Makefile started.
  args=$$(ps -o args= -p "$$pid" 2>/dev/null || tr '\0' ' ' <"/proc/$$pid/cmdline" 2>/dev/null || true)
  case "$$args" in *"$$2"*) ;; *) return 0 ;; esac
  echo "stopping $$(basename "$$pidfile" .pid) (pid $$pid)"
  kill -TERM "$$pid"
  pids+=("$$pid")
}
wait_gone() {  # wait for every pid in $$pids to exit; SIGKILL what outlives CLUSTER_STOP_WAIT
  local alive pid
  for _ in $$(seq $$(( $(CLUSTER_STOP_WAIT) * 10 ))); do
    alive=0
    for pid in "$${pids[@]}"; do kill -0 "$$pid" 2>/dev/null && alive=1; done
    [ "$$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "$${pids[@]}"; do
    if kill -0 "$$pid" 2>/dev/null; then
      echo "pid $$pid still running after $(CLUSTER_STOP_WAIT) s; killing it" >&2
      kill -KILL "$$pid"
    fi
  done
}
stop_cluster() {
  local spec
  pids=()
  for spec in $(CLUSTER_NODES); do stop_pidfile "$(CLUSTER_DIR)/$${spec%%:*}.pid" "--node-id $${spec%%:*}"; done
  wait_gone
  pids=()
  stop_pidfile "$(CLUSTER_DIR)/redis.pid" redis-server
  wait_gone
}
endef

# Logs and pidfiles go under .cluster/; `make cluster-stop` undoes all of it.
cluster:
	@$(CLUSTER_STOP_FUNCS)
	fail() {  # fail MESSAGE [LOG]: say what went wrong, show the log, stop what was started
	  echo "$$1" >&2
	  if [ -n "$${2:-}" ] && [ -f "$$2" ]; then tail -n 20 "$$2" >&2; fi
	  stop_cluster >&2
	  exit 1
	}
	$(CARGO) build --release -p switchboard
	mkdir -p $(CLUSTER_DIR)
	for f in $(CLUSTER_DIR)/*.pid; do
	  if [ -f "$$f" ] && kill -0 "$$(cat "$$f")" 2>/dev/null; then
	    echo "a cluster is already running ($$f); run 'make cluster-stop' first" >&2
	    exit 1
	  fi
	done
	rm -f $(CLUSTER_DIR)/*.pid
	if ! command -v $(REDIS_SERVER) >/dev/null; then
	  echo "$(REDIS_SERVER) not found; install it with: apt-get install -y redis-server" >&2
	  exit 1
	fi
	echo "starting redis-server on 127.0.0.1:$(CLUSTER_REDIS_PORT)"
	: >$(CLUSTER_DIR)/redis.log
	$(REDIS_SERVER) --port $(CLUSTER_REDIS_PORT) --bind 127.0.0.1 --save "" --appendonly no \
	  --daemonize yes --dir "$(CURDIR)/$(CLUSTER_DIR)" \
	  --pidfile "$(CURDIR)/$(CLUSTER_DIR)/redis.pid" --logfile "$(CURDIR)/$(CLUSTER_DIR)/redis.log"
	# Redis writes its pidfile only once it holds the port.
	for _ in $$(seq 50); do
	  if [ -f $(CLUSTER_DIR)/redis.pid ] && $(REDIS_CLI) -p $(CLUSTER_REDIS_PORT) ping >/dev/null 2>&1; then break; fi
	  sleep 0.1
	done
	[ -f $(CLUSTER_DIR)/redis.pid ] || fail "redis-server did not start on port $(CLUSTER_REDIS_PORT):" $(CLUSTER_DIR)/redis.log
	for spec in $(CLUSTER_NODES); do
	  IFS=: read -r id public internal <<<"$$spec"
	  echo "starting $$id on 127.0.0.1:$$public (internal 127.0.0.1:$$internal)"
	  : >"$(CLUSTER_DIR)/$$id.log"
	  nohup "$(SWITCHBOARD_BIN)" --redis-url redis://127.0.0.1:$(CLUSTER_REDIS_PORT) --node-id "$$id" \
	    --listen "127.0.0.1:$$public" --internal-listen "127.0.0.1:$$internal" \
	    </dev/null >>"$(CLUSTER_DIR)/$$id.log" 2>&1 &
	  echo $$! >"$(CLUSTER_DIR)/$$id.pid"
	done
	# A node prints "switchboard listening ..." to stdout once both listeners are bound.
	for spec in $(CLUSTER_NODES); do
	  id=$${spec%%:*}
	  log="$(CLUSTER_DIR)/$$id.log"
	  for _ in $$(seq 200); do
	    if grep -q '^switchboard listening' "$$log"; then break; fi
	    kill -0 "$$(cat "$(CLUSTER_DIR)/$$id.pid")" 2>/dev/null || fail "$$id exited:" "$$log"
	    sleep 0.1
	  done
	  grep -q '^switchboard listening' "$$log" || fail "$$id did not start listening within 20 s:" "$$log"
	done
	echo
	echo "cluster up (logs and pidfiles in $(CLUSTER_DIR)/):"
	echo "  redis   redis://127.0.0.1:$(CLUSTER_REDIS_PORT)"
	for spec in $(CLUSTER_NODES); do
	  IFS=: read -r id public internal <<<"$$spec"
	  echo "  $$id  ws://localhost:$$public/ws  http://127.0.0.1:$$internal/metrics  http://127.0.0.1:$$internal/api/v1/cluster"
	done
	echo "stop it with: make cluster-stop"

cluster-stop:
	@$(CLUSTER_STOP_FUNCS)
	stop_cluster
	echo "cluster stopped"

# The standard benchmark set (scripts/bench.sh): each scenario on its own private
# redis-server and release nodes, then the results table written into BENCHMARKS.md between
# the bench:standard markers. BENCH_SET_ARGS: --no-write (print the table only), --smoke.
BENCH_SET_ARGS ?=
bench:
	scripts/bench.sh $(BENCH_SET_ARGS)

# One fan-out benchmark: a private redis-server, two release nodes, 1,000 subscribers.
# BENCH_ARGS overrides the scenario (see crates/switchboard-bench/README.md).
BENCH_ARGS ?= --subscribers 1000 --rate 100 --duration 20 --warmup 3 --payload 64
bench-fanout:
	scripts/bench-fanout.sh $(BENCH_ARGS)

# The Autobahn TestSuite (kosoku) against the gateway's autobahn_echo example.
autobahn:
	bash .ci/steps/15-autobahn.sh

# The k6 load tests (loadtest/README.md): a private redis-server and two release nodes on free
# ports, then connect, fanout, chat and reconnect; fails if any threshold fails.
# LOADTEST_ARGS: --smoke (a few seconds each), script names (fanout chat), --no-build.
LOADTEST_ARGS ?=
loadtest:
	scripts/loadtest.sh $(LOADTEST_ARGS)

# The chaos soak (scripts/chaos.sh, crates/switchboard-bench/README.md "chaos"): a private
# redis-server and three release nodes, killed, paused and restarted on a seeded schedule while
# publishers and recovering subscribers run; prints one accounting line and fails when an
# acknowledged message was lost (neither delivered, repaired nor signalled). The seed is printed
# first: CHAOS_SEED=<it> replays the schedule. CHAOS_ARGS passes more options to the generator.
CHAOS_ARGS ?=
chaos:
	scripts/chaos.sh $(CHAOS_ARGS)

# The container image (docs/DEPLOYMENT.md, "The image"): IMAGE names and tags it,
# IMAGE_ARGS passes more to docker build, e.g.
#   make image IMAGE=registry.example.com/switchboard:0.1.0 \
#     IMAGE_ARGS="--build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot"
DOCKER ?= docker
IMAGE ?= switchboard
IMAGE_ARGS ?=
image:
	@if ! command -v $(DOCKER) >/dev/null 2>&1; then
	  echo "make image: $(DOCKER) not found; install Docker (with BuildKit, the default since 23.0)." >&2
	  exit 1
	fi
	if ! $(DOCKER) info >/dev/null 2>&1; then
	  echo "make image: no Docker engine answers ($(DOCKER) info failed); start one and retry." >&2
	  exit 1
	fi
	$(DOCKER) build -f deploy/Dockerfile -t $(IMAGE) $(IMAGE_ARGS) .
