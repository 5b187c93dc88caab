#!/usr/bin/env python3
"""Lint and render the Switchboard chart the way CI wants it (.ci/steps/30-deploy.sh).

1. `helm lint` with the real Helm library (helm-sdkpy): the chart with its own
   values, then with each values file of its ci/ folder, as chart-testing does.
   The library lints a chart with its values.yaml only, so each ci/ file is merged
   over the defaults (Helm's rules: maps merge, null deletes) into the values.yaml
   of a copy of the chart.
2. A value that breaks values.schema.json must fail the lint (the schema works).
3. Rendering (render.py): the defaults alone must refuse to install (no Redis for
   three nodes); the documented install (`--set redis.url=...`) and each ci/ file
   must render. Each rendering is written to OUT/NAME.yaml for kubernetes-validate,
   its node TOML to OUT/NAME.toml and its alert rules to OUT/NAME.rules.yml, and
   its Deployment is checked against what the node reads (--binary), and the
   documented install keeps the demo page and its public /status off.

Exit status 0 when all of that holds, 1 otherwise (every problem is printed).
"""

import argparse
import asyncio
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402  (k8s/tools/render.py)

CHART = render.CHART
SEVERITY = {1: "INFO", 2: "WARNING", 3: "ERROR"}
problems = []


def problem(msg):
    problems.append(msg)
    print(f"FAIL {msg}")


def merge(base, over):
    """Helm's coalescing of a values file over the chart's values."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def lint(values=None):
    """Lint messages of the chart, with `values` as its values.yaml when given."""
    import helm_sdkpy

    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / CHART.name
        shutil.copytree(CHART, chart)
        if values is not None:
            (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        config = helm_sdkpy.Configuration(namespace="default")
        result = asyncio.run(helm_sdkpy.Lint(config).run(str(chart)))
    return [(m.get("Severity", 3), m.get("Path", "?")) for m in result.get("Messages") or []]


def check_lint(name, values=None, expect_failure=False):
    messages = lint(values)
    bad = [(s, p) for s, p in messages if s >= 2]
    for severity, path in messages:
        print(f"  lint {name}: {SEVERITY.get(severity, severity)} {path}")
    if expect_failure:
        if not bad:
            problem(f"lint {name}: expected a schema error, the chart linted clean")
        else:
            print(f"ok   lint {name}: refused, as it should be")
    elif bad:
        problem(f"lint {name}: {len(bad)} warning(s)/error(s) (the Helm log above names them)")
    else:
        print(f"ok   lint {name}")


def env_names_of_binary(binary):
    text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"}).stdout
    return set(re.findall(r"SWITCHBOARD_[A-Z0-9_]+", text))


def check_deployment(name, objs, known_env):
    """What the node reads must match what the chart gives it."""
    deployments = [o for o in objs if o["kind"] == "Deployment"
                   and o["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"]
    if len(deployments) != 1:
        return problem(f"{name}: expected one gateway Deployment, found {len(deployments)}")
    pod = deployments[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    for var in env:
        if var.startswith("SWITCHBOARD_") and known_env is not None and var not in known_env:
            problem(f"{name}: env {var} is not a setting of the node (switchboard --help)")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for var, port_name in (("SWITCHBOARD_LISTEN", "public"), ("SWITCHBOARD_INTERNAL_LISTEN", "internal")):
        value = env.get(var, {}).get("value", "")
        if not value.endswith(f":{ports.get(port_name)}"):
            problem(f"{name}: {var}={value!r} does not listen on the {port_name} port {ports.get(port_name)}")
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    if (live["path"], live["port"]) != ("/healthz", "internal"):
        problem(f"{name}: liveness probe is {live}, want /healthz on the internal port")
    if (ready["path"], ready["port"]) != ("/readyz", "internal"):
        problem(f"{name}: readiness probe is {ready}, want /readyz on the internal port")
    demo = env.get("SWITCHBOARD_DEMO", {}).get("value")
    if demo not in ("true", "false"):
        problem(f"{name}: SWITCHBOARD_DEMO is {demo!r}; the chart must say whether the demo is on")
    node_id = env.get("SWITCHBOARD_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {})
    if node_id.get("fieldPath") != "metadata.name":
        problem(f"{name}: SWITCHBOARD_NODE_ID does not come from the pod name")
    config = next((o for o in objs if o["kind"] == "ConfigMap"
                   and "switchboard.toml" in o.get("data", {})), None)
    drain = tomllib.loads(config["data"]["switchboard.toml"]).get("drain_timeout", 30)
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod["terminationGracePeriodSeconds"]
    if grace <= sleep + drain:
        problem(f"{name}: terminationGracePeriodSeconds {grace} <= preStop {sleep} + drain {drain}")
    sc = c["securityContext"]
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and "ALL" in sc.get("capabilities", {}).get("drop", [])
            and pod["securityContext"].get("runAsNonRoot")):
        problem(f"{name}: the container is not locked down (non-root, read-only, no privileges)")


def check_demo_off(name, objs):
    """The documented install keeps the demo page and its public /status off."""
    for o in objs:
        if o["kind"] == "Deployment":
            for c in o["spec"]["template"]["spec"]["containers"]:
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                if "SWITCHBOARD_DEMO" in env and env["SWITCHBOARD_DEMO"] != "false":
                    problem(f"{name}: the demo is on by default (SWITCHBOARD_DEMO={env['SWITCHBOARD_DEMO']!r})")


def write_outputs(name, objs, out):
    (out / f"{name}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
    for o in objs:
        if o["kind"] == "ConfigMap" and "switchboard.toml" in o.get("data", {}):
            (out / f"{name}.toml").write_text(o["data"]["switchboard.toml"])
        if o["kind"] == "PrometheusRule":
            (out / f"{name}.rules.yml").write_text(yaml.safe_dump({"groups": o["spec"]["groups"]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the renderings")
    parser.add_argument("--binary", help="the switchboard binary, to check env names against")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    known_env = env_names_of_binary(args.binary) if args.binary else None

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    ci_files = sorted((CHART / "ci").glob("*.yaml"))
    if not ci_files:
        problem("no values files in the chart's ci/ folder")

    check_lint("defaults")
    for f in ci_files:
        check_lint(f"ci/{f.name}", merge(defaults, yaml.safe_load(f.read_text())))
    check_lint("a port given as text (must fail)", merge(defaults, {"ports": {"public": "http"}}),
               expect_failure=True)
    check_lint("config.demo given as text (must fail)",
               merge(defaults, {"config": {"demo": "yes"}}), expect_failure=True)
    check_lint("networkPolicy off without consent (must fail)",
               merge(defaults, {"networkPolicy": {"enabled": False}}), expect_failure=True)

    try:
        render.render(None)
        problem("render defaults: three nodes without Redis rendered; the chart should refuse")
    except Exception as e:  # the Helm library's InstallError
        if "shared Redis" in str(e):
            print("ok   render defaults: refused without a Redis, as it should be")
        else:
            problem(f"render defaults: failed for another reason: {e}")

    cases = [("install", {"redis": {"url": "redis://redis.example:6379/0"}})]
    cases += [(f.stem, yaml.safe_load(f.read_text())) for f in ci_files]
    for name, values in cases:
        try:
            objs = render.render(values)
        except Exception as e:
            problem(f"render {name}: {e}")
            continue
        write_outputs(name, objs, out)
        check_deployment(name, objs, known_env)
        if name == "install":
            check_demo_off(name, objs)
        print(f"ok   render {name}: {len(objs)} objects -> {out / name}.yaml")

    if problems:
        print(f"\n{len(problems)} problem(s) with the chart:")
        for p in problems:
            print(f"  - {p}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
