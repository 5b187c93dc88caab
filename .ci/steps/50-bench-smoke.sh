#!/usr/bin/env bash
# CI smoke run of the benchmark set (`make bench` at tiny sizes), run by .ci/run after the
# Rust tests, or alone from the repository root: `bash .ci/steps/50-bench-smoke.sh`.
#
# `scripts/bench.sh --smoke` runs every scenario of the standard set (fanout, ramp, rooms,
# connect, idle) for a few seconds each on a private redis-server and release nodes, and
# prints the table it would write (it never writes BENCHMARKS.md in smoke mode); then the
# table writer checks itself. About half a minute once the release build exists. The point is
# that the benchmark machinery cannot rot; the figures of a smoke run mean nothing.
# Exit status: non-zero if a scenario fails (loss, disconnects, a node that does not start)
# or the table writer's self-test fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

python3 scripts/bench_table.py --self-test
scripts/bench.sh --smoke
