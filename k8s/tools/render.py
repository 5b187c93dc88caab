#!/usr/bin/env python3
"""Render the Switchboard Helm chart with the real Helm library, without a cluster.

There is no `helm` binary on the project's machines, and the Python bindings of
the Helm library (the PyPI package helm-sdkpy) have no "template" call. Their
`Install` does render the chart exactly as `helm install` would, then sends the
objects to the Kubernetes API. So this script starts a small stub of that API on
127.0.0.1 (just enough discovery for Helm to map kinds to URLs), installs the
chart into it, and keeps every object Helm sends. Nothing leaves the machine.

    render.py render [-f VALUES] [-o OUT]   print (or write) the chart's objects
    render.py plain [--check]               regenerate k8s/base and k8s/overlays/*
                                            from the chart, or check they are current

Needs: pip install --ignore-requires-python helm-sdkpy cffi pyyaml
"""

import argparse
import asyncio
import copy
import difflib
import json
import os
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "helm" / "switchboard"
TOOLS = ROOT / "k8s" / "tools"

# The kinds the chart may send, by API group/version: (plural, kind).
RESOURCES = {
    "v1": [("secrets", "Secret"), ("configmaps", "ConfigMap"), ("services", "Service"),
           ("serviceaccounts", "ServiceAccount"), ("pods", "Pod")],
    "apps/v1": [("deployments", "Deployment")],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy"), ("ingresses", "Ingress")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor"),
                                 ("prometheusrules", "PrometheusRule")],
}
PLURALS = {plural for kinds in RESOURCES.values() for plural, _ in kinds}


class StubApi(BaseHTTPRequestHandler):
    """Answers Helm as an empty cluster would and records what it creates."""

    created = []  # replaced per server

    def log_message(self, fmt, *args):
        if os.environ.get("RENDER_DEBUG"):
            sys.stderr.write("stub api: " + fmt % args + "\n")

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            # Helm's own release record is sent as protobuf: acknowledge, do not keep.
            return None

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0",
                                    "platform": "linux/amd64"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = []
            for gv in RESOURCES:
                if "/" in gv:
                    group, version = gv.split("/")
                    entry = {"groupVersion": gv, "version": version}
                    groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        gv = path.removeprefix("/api/").removeprefix("/apis/")
        if gv in RESOURCES:
            resources = [{"name": plural, "singularName": "", "namespaced": True, "kind": kind,
                          "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                         for plural, kind in RESOURCES[gv]]
            return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                    "groupVersion": gv, "resources": resources})
        if path.split("/")[-1] in PLURALS:  # a list: the cluster is empty
            return self.reply(200, {"kind": "List", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": "1"}, "items": []})
        return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"})

    def do_POST(self):
        obj = self.read_body()
        if obj is None:
            return self.reply(201, {"kind": "Secret", "apiVersion": "v1",
                                    "metadata": {"name": "release", "namespace": "default"}})
        self.created.append(copy.deepcopy(obj))
        obj.setdefault("metadata", {}).update({"uid": "0", "resourceVersion": "1"})
        return self.reply(201, obj)

    def do_PUT(self):
        obj = self.read_body() or {"kind": "Secret", "apiVersion": "v1",
                                    "metadata": {"name": "release", "namespace": "default"}}
        return self.reply(200, obj)

    do_PATCH = do_PUT

    def do_DELETE(self):
        return self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def render(values=None, release="switchboard", namespace="default", chart=CHART):
    """The objects `helm install RELEASE CHART -f VALUES` would create, in Helm's order."""
    import helm_sdkpy  # imported late so `--help` works without it

    handler = type("Handler", (StubApi,), {"created": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "stub",
                "clusters": [{"name": "stub", "cluster": {
                    "server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": "stub", "user": {"token": "stub"}}],
                "contexts": [{"name": "stub", "context": {
                    "cluster": "stub", "user": "stub", "namespace": namespace}}],
            }))
            config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=str(kubeconfig))
            asyncio.run(helm_sdkpy.Install(config).run(
                release, str(chart), values=values or None, wait=False, timeout=60))
    finally:
        server.shutdown()
    return handler.created


# --- plain manifests -----------------------------------------------------------------

HEADER = """\
# GENERATED from the Helm chart (k8s/helm/switchboard) by k8s/tools/render.py
# with the values in k8s/tools/{values}; do not edit by hand: change the chart or
# those values, then run `python3 k8s/tools/render.py plain`. The chart's
# templates explain each choice.
"""

FILE_OF_KIND = {
    "ServiceAccount": "serviceaccount.yaml", "Deployment": "deployment.yaml",
    "Service": "service.yaml", "NetworkPolicy": "networkpolicy.yaml",
    "PodDisruptionBudget": "poddisruptionbudget.yaml",
    "HorizontalPodAutoscaler": "hpa.yaml", "ServiceMonitor": "servicemonitor.yaml",
    "PrometheusRule": "prometheusrule.yaml",
}


def plain(obj):
    """Drops what only Helm needs (release annotations, chart labels, namespace)."""
    obj = copy.deepcopy(obj)

    def clean(meta):
        labels = meta.get("labels", {})
        for key in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
            labels.pop(key, None)
        annotations = meta.get("annotations", {})
        for key in list(annotations):
            if key.startswith("meta.helm.sh/") or key.startswith("checksum/"):
                del annotations[key]
        if not annotations:
            meta.pop("annotations", None)
        meta.pop("namespace", None)

    clean(obj["metadata"])
    template = obj.get("spec", {}).get("template", {})
    if "metadata" in template:
        clean(template["metadata"])
    return obj


def dump(objs, values_name):
    return HEADER.format(values=values_name) + "\n" + yaml.safe_dump_all(
        objs, sort_keys=False, default_flow_style=False, width=100)


def plain_files():
    """Every generated file under k8s/: path -> text."""
    files = {}

    def load(name):
        return yaml.safe_load((TOOLS / name).read_text())

    # Base: the nodes, reading the Redis URL from the Secret "switchboard-redis".
    base_values = "plain-values.yaml"
    objs = [plain(o) for o in render(load(base_values))]
    by_file = {}
    for o in objs:
        if o["kind"] == "ConfigMap":
            # Kept as a file for kustomize's configMapGenerator, so editing it rolls the pods.
            files["k8s/base/switchboard.toml"] = (
                HEADER.format(values=base_values) + "\n" + o["data"]["switchboard.toml"])
            continue
        by_file.setdefault(FILE_OF_KIND[o["kind"]], []).append(o)
    for name, group in by_file.items():
        files[f"k8s/base/{name}"] = dump(group, base_values)

    # The bundled Redis of the chart, as an overlay for trying things out.
    redis_values = "plain-redis-values.yaml"
    redis = [plain(o) for o in render(load(redis_values))
             if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "redis"]
    files["k8s/overlays/bundled-redis/redis.yaml"] = dump(redis, redis_values)

    # ServiceMonitor and PrometheusRule for the Prometheus Operator. The rule's selectors
    # name the namespace, so this overlay fixes it to "switchboard".
    monitoring_values = "plain-monitoring-values.yaml"
    monitoring = [plain(o) for o in render(load(monitoring_values), namespace="switchboard")
                  if o["kind"] in ("ServiceMonitor", "PrometheusRule")]
    for o in monitoring:
        files[f"k8s/overlays/monitoring/{FILE_OF_KIND[o['kind']]}"] = dump([o], monitoring_values)
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render the chart")
    r.add_argument("-f", "--values", help="values file (over the chart's values.yaml)")
    r.add_argument("-o", "--output", help="write here instead of stdout")
    r.add_argument("--namespace", default="default")
    r.add_argument("--release", default="switchboard")
    r.add_argument("--chart", default=str(CHART))
    p = sub.add_parser("plain", help="regenerate the plain manifests")
    p.add_argument("--check", action="store_true",
                   help="only check that the committed files are current; exit 1 if not")
    args = parser.parse_args()

    if args.command == "render":
        values = yaml.safe_load(Path(args.values).read_text()) if args.values else None
        try:
            objs = render(values, args.release, args.namespace, Path(args.chart))
        except Exception as e:  # the Helm library's message names the template and value
            print(f"render.py: {e}", file=sys.stderr)
            return 1
        text = yaml.safe_dump_all(objs, sort_keys=False)
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
        return 0

    files = plain_files()
    stale = []
    for rel, text in files.items():
        path = ROOT / rel
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(rel)
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(True), text.splitlines(True), f"{rel} (committed)",
                f"{rel} (from the chart)"))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {rel}")
    if stale:
        print(f"render.py: {len(stale)} plain manifest(s) differ from the chart; run "
              "`python3 k8s/tools/render.py plain` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
