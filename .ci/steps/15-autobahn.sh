#!/usr/bin/env bash
# The Autobahn TestSuite against the node's WebSocket layer, run by .ci/run after the Rust
# tests, or alone from the repository root: `bash .ci/steps/15-autobahn.sh`.
#
# Installs kosoku (the PyPI package that runs Autobahn's own case files with Python 3) into
# a venv kept between runs when it is missing, builds the `autobahn_echo` example of the
# gateway crate (an echo server on the node's real frame parser, outbox and closing
# handshake, see crates/switchboard-gateway/examples/autobahn_echo.rs), starts it on a free
# port and runs every case but sections 12 and 13 (permessage-deflate, which the node does
# not negotiate). About 20 s once the example is built. Reports go to
# target/autobahn (AUTOBAHN_REPORTS overrides it): index.html, index.json, one file per case.
#
# Exit status: non-zero if any case is FAILED (or UNIMPLEMENTED, or missing from the
# report), or if kosoku or the echo server cannot run. NON-STRICT (the node closed later
# than it could have, e.g. at the end of a frame rather than mid-frame) and INFORMATIONAL
# (nothing to judge) are passes, as in Autobahn's own reports. The verdict and the summary
# by behavior come from the report's index.json, not from kosoku's exit status alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${SWITCHBOARD_AUTOBAHN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-ci/autobahn-venv}"
if [ -n "${KOSOKU:-}" ]; then
  kosoku=$KOSOKU
elif command -v kosoku >/dev/null 2>&1; then
  kosoku=$(command -v kosoku)
else
  kosoku=$venv/bin/kosoku
  if [ ! -x "$kosoku" ]; then
    echo "--- autobahn: installing the PyPI package kosoku into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kosoku
  fi
fi

echo "--- autobahn: cargo build --release -p switchboard-gateway --example autobahn_echo"
cargo build --release -p switchboard-gateway --example autobahn_echo
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
echo_bin=$target_dir/release/examples/autobahn_echo
reports=${AUTOBAHN_REPORTS:-$target_dir/autobahn}
rm -rf "$reports"
mkdir -p "$reports"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
"$echo_bin" "127.0.0.1:$port" 2>"$reports/echo-server.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
# Wait for the listener (an event, not a fixed sleep): at most 10 s.
for _ in $(seq 1 100); do
  if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$server" 2>/dev/null; then
    echo "autobahn: the echo server exited:" >&2
    cat "$reports/echo-server.log" >&2
    exit 1
  fi
  sleep 0.1
done

echo "--- autobahn: kosoku -x '12.*' -x '13.*' -o $reports 127.0.0.1:$port"
set +e
"$kosoku" -x '12.*' -x '13.*' -o "$reports" "127.0.0.1:$port" >"$reports/kosoku.log" 2>&1
kosoku_status=$?
set -e
echo "kosoku exited $kosoku_status; the verdict below is taken from the report"

python3 - "$reports" <<'PY'
import collections, json, pathlib, sys

reports = pathlib.Path(sys.argv[1])
index_files = sorted(reports.rglob("index.json"))
if not index_files:
    sys.exit(f"autobahn: no index.json under {reports}; kosoku said:\n"
             + (reports / "kosoku.log").read_text(errors="replace")[-4000:])
index = json.loads(index_files[0].read_text())
cases = {}
for agent, results in index.items():
    cases.update(results)
if not cases:
    sys.exit("autobahn: the report holds no cases")

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
by_behavior = collections.Counter(r["behavior"] for r in cases.values())
by_close = collections.Counter(r.get("behaviorClose", "?") for r in cases.values())

def key(case):
    return [int(p) for p in case.split(".")]

sections = collections.defaultdict(collections.Counter)
for case, r in cases.items():
    sections[case.split(".")[0]][r["behavior"]] += 1

print(f"autobahn: {len(cases)} cases")
print("  by behavior:       " + ", ".join(f"{b} {n}" for b, n in sorted(by_behavior.items())))
print("  by close behavior: " + ", ".join(f"{b} {n}" for b, n in sorted(by_close.items())))
for section in sorted(sections, key=int):
    print(f"  section {section:>2}: " + ", ".join(f"{b} {n}" for b, n in sorted(sections[section].items())))
expected = ["1", "2", "3", "4", "5", "6", "7", "9", "10"]  # Autobahn has no section 8 or 11
missing = [s for s in expected if s not in sections]
if missing:
    print(f"autobahn: no cases of section(s) {', '.join(missing)} in the report")
bad = sorted((c for c, r in cases.items() if r["behavior"] not in PASSING), key=key)
for case in bad:
    r = cases[case]
    print(f"  {r['behavior']}: case {case} (close: {r.get('behaviorClose')}, "
          f"remote close code: {r.get('remoteCloseCode')}; report {r.get('reportfile')})")
if bad or missing:
    sys.exit(f"autobahn: {len(bad)} case(s) not passed; reports in {reports}")
print(f"autobahn: every case passed (OK, NON-STRICT or INFORMATIONAL); reports in {reports}")
PY
