#!/usr/bin/env bash
# The browser client's tests (crates/switchboard/tests/browser/), run by .ci/run after the Rust
# tests, or alone from the repository root: `bash .ci/steps/40-browser.sh`.
#
# Installs Debian's chromium when it is missing (playwright-core drives it; nothing downloads a
# browser of its own) and the npm dependencies with `npm ci`, builds the release node, then runs
# the client's logic tests in Node (a fake WebSocket, about a second) and the end-to-end tests in
# headless Chromium against a private redis-server and two nodes (about half a minute).
# Exit status: non-zero when an install, the build or any test fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "--- browser: installing ${missing[*]}"
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
node --version
"${CHROMIUM:-/usr/bin/chromium}" --version 2>/dev/null || true

echo "--- browser: npm ci"
(cd crates/switchboard/tests/browser && npm ci --no-audit --no-fund)

echo "--- browser: cargo build --release -p switchboard"
cargo build --release -p switchboard

cd crates/switchboard/tests/browser
echo "--- browser: client logic (node --test client.test.js)"
node --test client.test.js
echo "--- browser: end to end in headless Chromium (node --test e2e.test.js)"
node --test e2e.test.js
