#!/usr/bin/env bash
# The Pusher protocol 7 compatibility tests (crates/switchboard/tests/pusher/), run by .ci/run
# after the Rust tests, or alone from the repository root: `bash .ci/steps/45-pusher.sh`.
#
# The real libraries against a private redis-server and two release nodes: pusher-js 8 in Node
# and in headless Chromium (Debian's chromium, driven by playwright-core), Laravel Echo 2, the
# npm server SDK `pusher` 5 and the PyPI server SDK `pusher` (in a venv). Installs what is
# missing with apt, the npm packages with `npm ci`, the Python ones from requirements.txt,
# builds the release node, then runs the five suites (about two minutes after the build).
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
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "--- pusher: installing ${missing[*]}"
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
node --version
python3 --version

dir=crates/switchboard/tests/pusher
echo "--- pusher: npm ci"
(cd "$dir" && npm ci --no-audit --no-fund)
echo "--- pusher: python venv"
(cd "$dir" && { [ -x .venv/bin/python ] || python3 -m venv .venv; } && .venv/bin/pip install --quiet -r requirements.txt)

echo "--- pusher: cargo build --release -p switchboard"
cargo build --release -p switchboard

cd "$dir"
status=0
for suite in pusher-js echo server-sdk python browser; do
  echo "--- pusher: node --test $suite.test.js"
  node --test "$suite.test.js" || status=1
done
exit "$status"
