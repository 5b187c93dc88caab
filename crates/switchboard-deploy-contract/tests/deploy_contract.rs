//! The deployment files agree with the binary they deploy.
//!
//! The Helm chart, the plain manifests, the compose cluster and the Dockerfile
//! each name settings, ports and probe paths of the node. These tests read them
//! and hold each against what `switchboard` really reads and serves: every
//! `SWITCHBOARD_*` variable they set is one the binary lists in `--help`, the
//! ports they wire up are the ones the node listens on, the probe paths answer
//! 200 on a node started the way the manifests start it, the image's health
//! check works against it, and every metric a dashboard or alert uses exists.
//! So the deployment and the node cannot drift apart unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_norway::Value;
use switchboard_deploy_contract::files::{
    at, env_names, files_under, port_of, read, root, text, yaml, yaml_docs,
};
use switchboard_deploy_contract::node::{RunningNode, binary_env_names, get, get_ok, on_free_port};

// --- the Helm chart and the plain manifests --------------------------------------------

#[test]
fn every_switchboard_variable_in_the_deployment_files_is_read_by_the_binary() {
    let known = binary_env_names();
    let mut files = vec![
        "deploy/Dockerfile".to_owned(),
        "deploy/docker-compose.yml".to_owned(),
        "deploy/healthcheck.rs".to_owned(),
        "docs/DEPLOYMENT.md".to_owned(),
    ];
    for dir in ["k8s/helm/switchboard", "k8s/base", "k8s/overlays"] {
        files.extend(files_under(dir));
    }
    let mut used = BTreeSet::new();
    for file in &files {
        for name in env_names(&read(file)) {
            assert!(
                known.contains(&name),
                "{file} names {name}, which `switchboard --help` does not list; known: {known:?}"
            );
            used.insert(name);
        }
    }
    // Guard against a scan that finds nothing: the names the deployments rely on.
    for name in [
        "SWITCHBOARD_CONFIG",
        "SWITCHBOARD_NODE_ID",
        "SWITCHBOARD_LISTEN",
        "SWITCHBOARD_INTERNAL_LISTEN",
        "SWITCHBOARD_REDIS_URL",
        "SWITCHBOARD_API_KEY",
        "SWITCHBOARD_JWT_SECRET",
        "SWITCHBOARD_JWT_PUBLIC_KEY",
        "SWITCHBOARD_IP_CONNECT_RATE",
    ] {
        assert!(used.contains(name), "no deployment file sets {name}");
    }
}

#[test]
fn the_chart_wires_its_ports_and_probes_to_the_node() {
    let values = yaml("k8s/helm/switchboard/values.yaml");
    let public = at(&values, "ports.public").as_u64().unwrap();
    let internal = at(&values, "ports.internal").as_u64().unwrap();
    assert_eq!(
        (public, internal),
        (8080, 9090),
        "the chart's ports are the node's defaults"
    );

    let deployment = read("k8s/helm/switchboard/templates/deployment.yaml");
    for needle in [
        "containerPort: {{ .Values.ports.public }}",
        "containerPort: {{ .Values.ports.internal }}",
        "- name: SWITCHBOARD_LISTEN\n              value: {{ printf \"%s:%d\" .Values.bindAddress (int .Values.ports.public) | quote }}",
        "- name: SWITCHBOARD_INTERNAL_LISTEN\n              value: {{ printf \"%s:%d\" .Values.bindAddress (int .Values.ports.internal) | quote }}",
        "livenessProbe:\n            httpGet:\n              path: /healthz\n              port: internal",
        "readinessProbe:\n            httpGet:\n              path: /readyz\n              port: internal",
        "fieldPath: metadata.name",
    ] {
        assert!(
            deployment.contains(needle),
            "templates/deployment.yaml lacks {needle:?}"
        );
    }
    let internal_service = read("k8s/helm/switchboard/templates/service-internal.yaml");
    assert!(
        internal_service.contains("targetPort: internal")
            && internal_service.contains("type: ClusterIP")
    );
    let service = read("k8s/helm/switchboard/templates/service.yaml");
    assert!(service.contains("targetPort: public") && !service.contains("targetPort: internal"));
    let ingress = read("k8s/helm/switchboard/templates/ingress.yaml");
    assert!(
        !ingress.contains("internal"),
        "the Ingress must only ever reach the public Service"
    );
}

/// The Deployment of the plain manifests (generated from the chart): its container.
fn base_container() -> (Value, Value) {
    let docs = yaml_docs("k8s/base/deployment.yaml");
    let deployment = docs
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment in k8s/base/deployment.yaml");
    let pod = at(&deployment, "spec.template.spec").clone();
    let container = at(&pod, "containers.0").clone();
    (pod, container)
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    at(container, "env")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (text(&e["name"]), e.clone()))
        .collect()
}

#[test]
fn the_plain_manifests_start_a_node_that_answers_its_probes() {
    let (pod, container) = base_container();
    let env = env_of(&container);
    let ports: BTreeMap<String, u64> = at(&container, "ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (text(&p["name"]), p["containerPort"].as_u64().unwrap()))
        .collect();
    let listen = text(&env["SWITCHBOARD_LISTEN"]["value"]);
    let internal_listen = text(&env["SWITCHBOARD_INTERNAL_LISTEN"]["value"]);
    assert_eq!(u64::from(port_of(&listen)), ports["public"]);
    assert_eq!(u64::from(port_of(&internal_listen)), ports["internal"]);
    assert_eq!(
        text(at(
            &env["SWITCHBOARD_NODE_ID"],
            "valueFrom.fieldRef.fieldPath"
        )),
        "metadata.name",
        "the node id is the pod name"
    );

    let liveness = at(&container, "livenessProbe.httpGet");
    let readiness = at(&container, "readinessProbe.httpGet");
    assert_eq!(text(&liveness["port"]), "internal");
    assert_eq!(text(&readiness["port"]), "internal");
    let live_path = text(&liveness["path"]);
    let ready_path = text(&readiness["path"]);
    assert_ne!(
        live_path, ready_path,
        "liveness must not be readiness: a Redis outage would restart every pod"
    );

    // The grace period covers the preStop sleep and the whole drain.
    let toml_text = read("k8s/base/switchboard.toml");
    let settings: toml::Table = toml_text.parse().expect("k8s/base/switchboard.toml");
    let drain = settings
        .get("drain_timeout")
        .and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)))
        .unwrap_or(30.0);
    let sleep = container
        .get("lifecycle")
        .map(|l| at(l, "preStop.sleep.seconds").as_f64().unwrap())
        .unwrap_or(0.0);
    let grace = at(&pod, "terminationGracePeriodSeconds").as_f64().unwrap();
    assert!(
        grace > sleep + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {sleep} + drain_timeout {drain}"
    );
    let security = at(&container, "securityContext");
    assert_eq!(security["readOnlyRootFilesystem"], Value::from(true));
    assert_eq!(security["allowPrivilegeEscalation"], Value::from(false));

    // Start the binary as the pod would: the mounted TOML, the listen variables on free
    // loopback ports, a pod-like name as node id (no Redis: its URL is a Secret).
    let pod_name = "switchboard-6d5f7b9c8d-x2k4q";
    let node = RunningNode::start(&BTreeMap::from([
        (
            "SWITCHBOARD_CONFIG".to_owned(),
            root()
                .join("k8s/base/switchboard.toml")
                .display()
                .to_string(),
        ),
        ("SWITCHBOARD_NODE_ID".to_owned(), pod_name.to_owned()),
        ("SWITCHBOARD_LISTEN".to_owned(), on_free_port(&listen)),
        (
            "SWITCHBOARD_INTERNAL_LISTEN".to_owned(),
            on_free_port(&internal_listen),
        ),
    ]));
    assert_eq!(get_ok(&node.internal, &live_path).trim(), "ok");
    assert_eq!(get_ok(&node.internal, &ready_path).trim(), "ready");
    assert_eq!(get_ok(&node.public, "/healthz").trim(), "ok");
    let (status, _) = get(&node.public, "/metrics");
    assert_eq!(status, 404, "metrics are never served on the public port");
    assert!(get_ok(&node.internal, "/metrics").contains("switchboard_connections"));
    assert!(
        get_ok(&node.internal, "/api/v1/cluster").contains(pod_name),
        "the node id from SWITCHBOARD_NODE_ID is the pod name"
    );
    node.terminate();
}

#[test]
fn every_chart_value_is_documented_in_the_chart_readme() {
    // Maps whose keys are the user's (or Kubernetes objects): documented as a whole.
    const WHOLE: &[&str] = &[
        "resources",
        "podSecurityContext",
        "securityContext",
        "updateStrategy",
        "autoscaling.behavior",
        "redis.bundled.resources",
        "networkPolicy.internal.clientLabel",
        "metrics.grafanaDashboard.labels",
        "ingress.defaultAnnotations",
        "ingress.hosts",
    ];
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Mapping(m) if !m.is_empty() && !WHOLE.contains(&prefix) => {
                for (k, v) in m {
                    let key = text(k);
                    let path = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut paths = Vec::new();
    leaves("", &yaml("k8s/helm/switchboard/values.yaml"), &mut paths);
    let readme = read("k8s/helm/switchboard/README.md");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !readme.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from k8s/helm/switchboard/README.md: {missing:?}"
    );
}

// --- compose and the image -------------------------------------------------------------

#[test]
fn the_compose_cluster_wires_the_nodes_ports_and_names() {
    let known = binary_env_names();
    let compose = yaml("deploy/docker-compose.yml");
    let haproxy = read("deploy/haproxy/haproxy.cfg");
    let prometheus = read("deploy/prometheus/prometheus.yml");
    let drain: f64 = read("deploy/switchboard.toml")
        .parse::<toml::Table>()
        .expect("deploy/switchboard.toml")
        .get("drain_timeout")
        .and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)))
        .unwrap_or(30.0);
    let mut ids = BTreeSet::new();
    for name in ["node-a", "node-b", "node-c"] {
        let service = at(&compose, &format!("services.{name}"));
        let env: BTreeMap<String, String> = service["environment"]
            .as_mapping()
            .expect("environment as a map")
            .iter()
            .map(|(k, v)| (text(k), text(v)))
            .collect();
        for key in env.keys() {
            assert!(
                known.contains(key),
                "{name} sets {key}, unknown to the node"
            );
        }
        ids.insert(env["SWITCHBOARD_NODE_ID"].clone());
        let public = port_of(&env["SWITCHBOARD_LISTEN"]);
        let internal = port_of(&env["SWITCHBOARD_INTERNAL_LISTEN"]);
        assert!(
            haproxy.contains(&format!(
                "server {name} {name}:{public} check port {internal}"
            )),
            "haproxy.cfg sends clients to {name}:{public} and checks {internal}"
        );
        assert!(haproxy.contains(&format!("server {name} {name}:{internal} check")));
        assert!(prometheus.contains(&format!("\"{name}:{internal}\"")));
        assert!(prometheus.contains(&format!("http://{name}:{internal}/readyz")));
        assert!(
            service.get("ports").is_none(),
            "{name} publishes ports; only HAProxy should"
        );
        assert_eq!(service["read_only"], Value::from(true));
        let grace = text(&service["stop_grace_period"]);
        let grace: f64 = grace.trim_end_matches('s').parse().expect("seconds");
        assert!(
            grace > drain,
            "stop_grace_period {grace} s <= drain {drain} s"
        );
    }
    assert_eq!(ids.len(), 3, "node ids differ");
    assert!(haproxy.contains("http-check send meth GET uri /readyz"));
}

#[test]
fn the_image_health_check_probes_a_real_node() {
    let dockerfile = read("deploy/Dockerfile");
    let toolchain = read("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .expect("channel in rust-toolchain.toml")
        .trim_matches('"');
    assert!(
        dockerfile.contains(&format!("ARG RUST_VERSION={channel}\n")),
        "the Dockerfile builds with Rust {channel}, like rust-toolchain.toml"
    );
    for needle in [
        "USER 65532:65532",
        "EXPOSE 8080 9090",
        "CMD [\"/usr/local/bin/switchboard-healthcheck\", \"/healthz\"]",
        "ENTRYPOINT [\"/usr/local/bin/switchboard\"]",
        "cargo build --release --locked -p switchboard",
        "deploy/healthcheck.rs",
    ] {
        assert!(
            dockerfile.contains(needle),
            "deploy/Dockerfile lacks {needle:?}"
        );
    }
    let values = yaml("k8s/helm/switchboard/values.yaml");
    assert_eq!(
        at(&values, "podSecurityContext.runAsUser").as_u64(),
        Some(65532),
        "the chart runs the image's user"
    );

    // Build the health check the way the Dockerfile does, and point it at a node.
    let dir = std::env::temp_dir().join(format!("switchboard-healthcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("switchboard-healthcheck");
    let built = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--edition", "2021", "-C", "opt-level=s", "-o"])
        .arg(&program)
        .arg(root().join("deploy/healthcheck.rs"))
        .current_dir(root())
        .status()
        .expect("run rustc");
    assert!(built.success(), "rustc deploy/healthcheck.rs");

    let node = RunningNode::start(&BTreeMap::from([
        ("SWITCHBOARD_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "SWITCHBOARD_INTERNAL_LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
    ]));
    let check = |args: &[&str], internal_listen: &str| {
        Command::new(&program)
            .args(args)
            .env_clear()
            .env("SWITCHBOARD_INTERNAL_LISTEN", internal_listen)
            .output()
            .expect("run the health check")
    };
    // As in the image: no arguments but the path, the address from the environment,
    // here in its wildcard form as the chart and compose set it.
    let wildcard = format!("0.0.0.0:{}", port_of(&node.internal));
    let healthy = check(&["/healthz"], &wildcard);
    assert!(healthy.status.success(), "{healthy:?}");
    assert!(check(&["/readyz"], &node.internal).status.success());
    let not_found = check(&["/nowhere"], &node.internal);
    assert_eq!(not_found.status.code(), Some(1), "a 404 is unhealthy");
    let internal = node.internal.clone();
    node.terminate();
    let down = check(&["/healthz"], &internal);
    assert_eq!(down.status.code(), Some(1), "a stopped node is unhealthy");
    let _ = std::fs::remove_dir_all(&dir);
}

// --- monitoring ------------------------------------------------------------------------

/// Metric names (`switchboard_...`) in a text, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("switchboard_") {
        let start = i + found;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |e| start + e);
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let word_start =
            !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let name = &text[start..end];
        if word_start && name.len() > "switchboard_".len() {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn every_metric_in_the_dashboard_and_alerts_is_exported_by_the_node() {
    let mut source = String::new();
    for crate_dir in [
        "crates/switchboard-gateway/src",
        "crates/switchboard-backplane/src",
    ] {
        for file in files_under(crate_dir) {
            source.push_str(&read(&file));
        }
    }
    let exported: BTreeSet<String> = metric_names(&source)
        .into_iter()
        .filter(|n| source.contains(&format!("\"{n}\"")))
        .collect();
    assert!(exported.contains("switchboard_connections"));
    for file in [
        "deploy/grafana/dashboards/switchboard.json",
        "deploy/prometheus/alerts.yml",
        "k8s/helm/switchboard/templates/prometheusrule.yaml",
    ] {
        let used = metric_names(&read(file));
        assert!(!used.is_empty(), "{file} uses no switchboard metric");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics no node exports: {unknown:?}"
        );
    }
    assert_eq!(
        read("deploy/grafana/dashboards/switchboard.json"),
        read("k8s/helm/switchboard/files/switchboard-dashboard.json"),
        "the chart's dashboard is a copy of deploy/grafana/dashboards/switchboard.json"
    );
}

#[test]
fn compose_and_chart_raise_the_same_alerts() {
    let alert_names = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
            .map(|n| n.trim().to_owned())
            .collect()
    };
    let compose = alert_names(&read("deploy/prometheus/alerts.yml"));
    let chart = alert_names(&read("k8s/helm/switchboard/templates/prometheusrule.yaml"));
    assert!(compose.len() >= 4, "{compose:?}");
    assert_eq!(compose, chart);
    for required in [
        "SwitchboardBackplaneDown",
        "SwitchboardSlowConsumerDisconnects",
        "SwitchboardDeliveryLatencyHigh",
        "SwitchboardNodeNotReady",
    ] {
        assert!(compose.contains(required), "no {required} alert");
    }
}

// --- safe defaults -----------------------------------------------------------------------

/// The value compose gives `${NAME:-default}` when NAME is not set; other text as is.
fn compose_default(value: &str) -> String {
    value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once(":-"))
        .map_or_else(|| value.to_owned(), |(_, default)| default.to_owned())
}

#[test]
fn deployments_keep_the_demo_off_unless_asked() {
    // The chart: a value, off, rendered into the Deployment's environment.
    let values = yaml("k8s/helm/switchboard/values.yaml");
    assert_eq!(
        at(&values, "config.demo"),
        &Value::from(false),
        "the chart's config.demo is false"
    );
    let template = read("k8s/helm/switchboard/templates/deployment.yaml");
    let wiring = "- name: SWITCHBOARD_DEMO\n              value: {{ .Values.config.demo | toString | quote }}";
    assert!(
        template.contains(wiring),
        "templates/deployment.yaml lacks {wiring:?}"
    );

    // The plain manifests and the compose cluster say false.
    let (_, container) = base_container();
    let manifest_env: BTreeMap<String, String> = env_of(&container)
        .into_iter()
        .filter_map(|(k, v)| v.get("value").map(|v| (k, text(v))))
        .collect();
    assert_eq!(
        manifest_env.get("SWITCHBOARD_DEMO").map(String::as_str),
        Some("false"),
        "k8s/base/deployment.yaml sets SWITCHBOARD_DEMO=false"
    );
    let compose = yaml("deploy/docker-compose.yml");
    let mut compose_env = BTreeMap::new();
    for name in ["node-a", "node-b", "node-c"] {
        let env = at(&compose, &format!("services.{name}.environment"));
        let demo = env
            .get("SWITCHBOARD_DEMO")
            .map(|v| compose_default(&text(v)))
            .unwrap_or_else(|| panic!("{name} does not set SWITCHBOARD_DEMO"));
        assert_eq!(demo, "false", "{name}: SWITCHBOARD_DEMO defaults to false");
        compose_env = env
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (text(k), compose_default(&text(v))))
            .collect();
    }

    // A node started as each deployment starts it serves neither the demo page nor
    // its public /status; the browser client stays.
    for (what, env, config) in [
        ("k8s/base", &manifest_env, "k8s/base/switchboard.toml"),
        (
            "deploy/docker-compose.yml",
            &compose_env,
            "deploy/switchboard.toml",
        ),
    ] {
        let mut env: BTreeMap<String, String> = env
            .iter()
            .filter(|(k, _)| *k == "SWITCHBOARD_DEMO")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.insert(
            "SWITCHBOARD_CONFIG".to_owned(),
            root().join(config).display().to_string(),
        );
        env.insert("SWITCHBOARD_LISTEN".to_owned(), "127.0.0.1:0".to_owned());
        env.insert(
            "SWITCHBOARD_INTERNAL_LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        );
        let node = RunningNode::start(&env);
        let (status, body) = get(&node.public, "/");
        assert_eq!(status, 200, "{what}: GET /");
        assert!(
            !body.contains("<script") && body.contains("/ws"),
            "{what}: GET / is the demo page, not the plain pointer to /ws: {body:.200}"
        );
        for path in ["/status", "/demo.js"] {
            assert_eq!(get(&node.public, path).0, 404, "{what}: GET {path}");
        }
        assert_eq!(get(&node.public, "/client.js").0, 200, "{what}: /client.js");
        node.terminate();
    }

    // `make run` and the README's first command start a node by hand: demo on.
    let makefile = read("Makefile");
    let run = makefile
        .split("\nrun:")
        .nth(1)
        .and_then(|r| r.split("\n\n").next())
        .expect("a run target in the Makefile");
    assert!(!run.contains("demo"), "make run keeps the demo on: {run}");
    let readme = read("README.md");
    assert!(readme.contains("cargo run --release -p switchboard    # run one node"));
    assert!(readme.contains("open `http://localhost:8080/` for the demo chat"));
}
