//! Resolving whole configurations: precedence, defaults, every error reported.

use std::io::Write;
use std::time::Duration;

use switchboard_gateway::BackplaneConfig;

use super::source::Reader;
use super::*;

fn matches(args: &[&str]) -> ArgMatches {
    table::command()
        .try_get_matches_from(std::iter::once("switchboard").chain(args.iter().copied()))
        .expect("arguments parse")
}

fn resolve_args(args: &[&str]) -> Result<Config, Vec<ConfigError>> {
    resolve(&matches(args))
}

/// A TOML file that is removed when dropped.
struct TempToml(std::path::PathBuf);

impl TempToml {
    fn new(text: &str) -> TempToml {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "switchboard-config-{}-{n}.toml",
            std::process::id()
        ));
        let mut file = std::fs::File::create(&path).expect("create temp toml");
        file.write_all(text.as_bytes()).expect("write temp toml");
        TempToml(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempToml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn every_row_is_read_exactly_once() {
    let file = TempToml::new("heartbeat = 3\n");
    let m = matches(&["--config", file.path(), "--listen", "127.0.0.1:1"]);
    let mut r = Reader::new(&m);
    let config = read(&mut r);
    assert!(config.is_ok() && r.errors.is_empty(), "{:?}", r.errors);
    let mut read = r.read.clone();
    read.sort_unstable();
    let mut rows: Vec<&str> = table::ALL.iter().map(|row| row.flag).collect();
    rows.sort_unstable();
    assert_eq!(
        read, rows,
        "a row that is never read is a flag that does nothing; a setting read without a row has no flag"
    );
}

#[test]
fn defaults_give_a_lone_node() {
    let c = resolve_args(&[]).unwrap();
    assert_eq!(c.node.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.node.internal_listen, "127.0.0.1:9090".parse().unwrap());
    assert!(matches!(c.node.backplane, BackplaneConfig::Memory));
    assert_eq!(c.node.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.node.heartbeat, Duration::from_secs(25));
    assert_eq!(c.node.max_message_size, 65536);
    assert_eq!(c.node.outbound_queue, 1024);
    assert_eq!(c.node.listen_backlog, 4096);
    assert_eq!(c.node.fanout_lane_capacity, 4096);
    assert!(c.node.api_key.is_none() && c.node.allowed_origins.is_empty());
    assert!(
        c.node.auth.allow_anonymous,
        "no JWT key: anonymous access on"
    );
    let l = &c.node.limits;
    assert_eq!(
        (l.max_connections, l.max_subscriptions, l.client_burst),
        (10_000, 128, 200)
    );
    assert_eq!((l.client_rate, l.ip_connect_rate), (100.0, 50.0));
    assert_eq!((l.max_channel_length, l.max_pending_per_ip), (255, 1024));
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_level, "info");
    assert!(!c.node.node_id.is_empty(), "the hostname, or `switchboard`");
}

#[test]
fn every_bad_setting_is_reported() {
    let errors = resolve_args(&[
        "--listen",
        "nonsense",
        "--heartbeat",
        "-1",
        "--log-format",
        "xml",
        "--redis-url",
        "http://x",
        "--outbound-queue",
        "0",
    ])
    .unwrap_err();
    let names: Vec<&str> = errors.iter().map(|e| e.setting.as_str()).collect();
    assert_eq!(
        names,
        [
            "--listen",
            "--redis-url",
            "--log-format",
            "--heartbeat",
            "--outbound-queue"
        ]
    );
    assert!(errors.iter().all(|e| e.source == "command line"));
    assert_eq!(
        errors[4].to_string(),
        "--outbound-queue (command line): 0 is out of range 1..=1048576"
    );
}

#[test]
fn a_bad_prefix_is_reported_without_redis_too() {
    let errors = resolve_args(&["--redis-prefix", "a b"]).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].setting, "--redis-prefix");
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let file = TempToml::new(
        "listen = \"127.0.0.1:1000\"\ninternal_listen = \"127.0.0.1:1001\"\nheartbeat = 5\nallowed_origins = [\"https://a\", \"http://localhost:*\"]\nredis_url = \"redis://127.0.0.1:6399\"\n",
    );
    let c = resolve_args(&["--config", file.path(), "--listen", "127.0.0.1:2000"]).unwrap();
    assert_eq!(c.node.listen, "127.0.0.1:2000".parse().unwrap());
    assert_eq!(c.node.internal_listen, "127.0.0.1:1001".parse().unwrap());
    assert_eq!(c.node.heartbeat, Duration::from_secs(5));
    assert_eq!(c.node.allowed_origins, ["https://a", "http://localhost:*"]);
    assert!(matches!(c.node.backplane, BackplaneConfig::Redis { .. }));
    assert_eq!(c.node.drain_timeout, Duration::from_secs(30), "the default");
}

#[test]
fn an_empty_flag_is_the_same_as_none() {
    let file = TempToml::new("heartbeat = 5\n");
    let c = resolve_args(&["--config", file.path(), "--heartbeat", " "]).unwrap();
    assert_eq!(c.node.heartbeat, Duration::from_secs(5));
}

#[test]
fn unknown_and_mistyped_file_keys_are_errors() {
    let file = TempToml::new("lisen = \"x\"\nheartbeat = [1]\nallowed_origins = [1]\n");
    let errors = resolve_args(&["--config", file.path()]).unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "--allowed-origins (config file): must be a list of strings",
            "--heartbeat (config file): unexpected array value",
            "lisen (config file): unknown key",
        ]
    );
}

#[test]
fn namespaces_and_auth_come_from_their_tables() {
    let file = TempToml::new(
        "[auth]\njwt_secret = \"s3cret\"\n\n[namespaces.chat]\nhistory_size = 100\nhistory_ttl = 60\npresence = true\njoin_leave = true\nclient_publish = false\n",
    );
    let c = resolve_args(&["--config", file.path()]).unwrap();
    assert_eq!(c.node.auth.jwt_secret.as_deref(), Some("s3cret"));
    assert!(
        !c.node.auth.allow_anonymous,
        "a JWT key turns anonymous access off by default"
    );
    let chat = c.node.namespaces.of("chat:lobby");
    assert_eq!(chat.history_size, 100);
    assert_eq!(chat.history_ttl, Duration::from_secs(60));
    assert!(chat.presence && chat.join_leave && !chat.client_publish);
    assert!(!c.node.namespaces.of("news:x").has_history());
    let c = resolve_args(&["--config", file.path(), "--allow-anonymous", "yes"]).unwrap();
    assert!(c.node.auth.allow_anonymous);
}

#[test]
fn bad_namespace_and_auth_keys_are_each_reported() {
    let file = TempToml::new(
        "[auth]\nsecret = \"x\"\n\n[namespaces.chat]\nhistory_size = -1\npresense = true\nhistory_ttl = \"long\"\n",
    );
    let errors = resolve_args(&[
        "--config",
        file.path(),
        "--jwt-public-key",
        "/nonexistent.pem",
        "--client-rate",
        "0",
    ])
    .unwrap_err();
    let settings: Vec<&str> = errors.iter().map(|e| e.setting.as_str()).collect();
    for expected in [
        "auth.secret",
        "namespaces.chat.history_size",
        "namespaces.chat.presense",
        "namespaces.chat.history_ttl",
        "--jwt-public-key",
        "--client-rate",
    ] {
        assert!(
            settings.contains(&expected),
            "{expected} missing from {settings:?}"
        );
    }
    assert_eq!(errors.len(), 6, "{errors:?}");
    let file = TempToml::new("auth = 1\njwt_secret = \"top level\"\n");
    let text: Vec<String> = resolve_args(&["--config", file.path()])
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        text,
        [
            "auth (config file): must be a table",
            "jwt_secret (config file): unknown key"
        ]
    );
}

#[test]
fn the_demo_is_on_by_default_with_its_namespace() {
    let c = resolve_args(&[]).unwrap();
    assert!(c.node.demo);
    let demo = c.node.namespaces.of("demo:lobby");
    assert_eq!(demo.history_size, 100);
    assert!(demo.presence && demo.join_leave && demo.client_publish);
    let c = resolve_args(&["--demo", "false"]).unwrap();
    assert!(!c.node.demo);
    assert!(!c.node.namespaces.of("demo:lobby").has_history());
    let file = TempToml::new(
        "demo = true\n[namespaces.demo]\nhistory_size = 7\n[namespaces.chat]\npresence = true\n",
    );
    let c = resolve_args(&["--config", file.path()]).unwrap();
    assert!(c.node.demo);
    let demo = c.node.namespaces.of("demo:lobby");
    assert_eq!(demo.history_size, 7, "a configured demo namespace wins");
    assert!(!demo.presence);
    assert!(c.node.namespaces.of("chat:x").presence);
}

#[test]
fn a_missing_or_broken_file_is_an_error() {
    let errors = resolve_args(&["--config", "/nonexistent/switchboard.toml"]).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].setting, "--config");
    assert_eq!(errors[0].source, "/nonexistent/switchboard.toml");
    assert!(errors[0].message.starts_with("cannot read: "), "{errors:?}");
    let file = TempToml::new("listen = \"127.0.0.1:0\n[[[\n");
    let errors = resolve_args(&["--config", file.path()]).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.starts_with("not valid TOML: "),
        "{errors:?}"
    );
}
