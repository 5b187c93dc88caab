//! Resolving whole configurations: precedence, defaults, every error reported.

use std::io::Write;
use std::time::Duration;

use switchboard_gateway::{BackplaneConfig, PusherApp};

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

/// The three flags of the Pusher app, the secret last.
const PUSHER_FLAGS: [&str; 6] = [
    "--pusher-app-id",
    "app1",
    "--pusher-key",
    "app1-key",
    "--pusher-secret",
    "flag-secret-1e4b",
];

/// The errors' lines, sorted.
fn error_lines(errors: &[ConfigError]) -> Vec<String> {
    let mut lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.sort_unstable();
    lines
}

#[test]
fn no_pusher_app_leaves_the_endpoint_off() {
    assert!(resolve_args(&[]).unwrap().node.pusher.is_empty());
}

#[test]
fn one_pusher_app_from_flags() {
    let c = resolve_args(&PUSHER_FLAGS).unwrap();
    assert_eq!(
        c.node.pusher,
        [PusherApp {
            id: "app1".into(),
            key: "app1-key".into(),
            secret: "flag-secret-1e4b".into(),
            client_events: true,
            webhook_url: None,
            webhook_events: Vec::new(),
            limits: Default::default(),
        }]
    );
}

#[test]
fn a_partial_pusher_app_names_what_is_missing() {
    let errors = resolve_args(&PUSHER_FLAGS[..2]).unwrap_err();
    let needed = "one Pusher app by flags or environment takes --pusher-app-id, --pusher-key and --pusher-secret together (or none of them)";
    assert_eq!(
        error_lines(&errors),
        [
            format!("--pusher-key (not set): needed because --pusher-app-id is set: {needed}"),
            format!("--pusher-secret (not set): needed because --pusher-app-id is set: {needed}"),
        ]
    );
    let errors = resolve_args(&PUSHER_FLAGS[2..]).unwrap_err();
    assert_eq!(
        error_lines(&errors),
        [format!(
            "--pusher-app-id (not set): needed because --pusher-key and --pusher-secret are set: {needed}"
        )]
    );
    // A bad value counts as given: the error is about the value, not a missing one.
    let mut args = PUSHER_FLAGS.to_vec();
    args[1] = "a:b";
    let errors = resolve_args(&args).unwrap_err();
    assert_eq!(
        error_lines(&errors),
        [
            "--pusher-app-id (command line): \"a:b\": use 1 to 64 characters of A-Z a-z 0-9 - _ . (the id names the app's channel namespace)"
        ]
    );
    args[1] = "app1";
    args[3] = "a/b";
    let errors = resolve_args(&args).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].setting, "--pusher-key");
}

#[test]
fn pusher_apps_from_the_file() {
    let file = TempToml::new(
        r#"
[[pusher.apps]]
id = "a"
key = "a-key"
secret = "a-secret"

[[pusher.apps]]
id = "b"
key = "b-key"
secret = "b-secret"
client_events = false
webhook_url = "http://hooks.internal:8000/pusher"

[[pusher.apps]]
id = "c"
key = "c-key"
secret = "c-secret"
webhook_url = "http://hooks.internal/c"
webhook_events = ["member_added", "cache_miss"]
max_connections = 500
client_event_rate = 2.5
max_presence_members = 20
"#,
    );
    let c = resolve_args(&["--config", file.path()]).unwrap();
    let apps = &c.node.pusher;
    let ids: Vec<&str> = apps.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"], "in file order");
    assert_eq!(
        (apps[0].key.as_str(), apps[0].secret.as_str()),
        ("a-key", "a-secret")
    );
    assert!(apps[0].client_events, "client events are on by default");
    assert!(apps[0].webhook_url.is_none() && apps[0].webhook_events.is_empty());
    assert!(!apps[1].client_events);
    assert_eq!(
        apps[1].webhook_url.as_deref(),
        Some("http://hooks.internal:8000/pusher")
    );
    assert_eq!(
        apps[1].webhook_events,
        pusher::WEBHOOK_EVENTS,
        "a webhook URL without a list gets every event"
    );
    assert_eq!(apps[2].webhook_events, ["member_added", "cache_miss"]);
    assert_eq!(
        apps[0].limits,
        switchboard_gateway::PusherLimits::default(),
        "Pusher's own limits by default"
    );
    assert_eq!(apps[2].limits.max_connections, Some(500));
    assert_eq!(apps[2].limits.client_event_rate, 2.5);
    assert_eq!(apps[2].limits.max_presence_members, 20);
}

#[test]
fn the_flags_app_and_the_files_apps_combine() {
    let file = TempToml::new("[[pusher.apps]]\nid = \"b\"\nkey = \"b-key\"\nsecret = \"b\"\n");
    let mut args = vec!["--config", file.path()];
    args.extend(PUSHER_FLAGS);
    let c = resolve_args(&args).unwrap();
    let ids: Vec<&str> = c.node.pusher.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["app1", "b"], "the flags' app first");
}

#[test]
fn pusher_ids_and_keys_are_unique() {
    let file = TempToml::new(
        r#"
[[pusher.apps]]
id = "app1"
key = "other-key"
secret = "s1"

[[pusher.apps]]
id = "b"
key = "app1-key"
secret = "s2"

[[pusher.apps]]
id = "b"
key = "b2-key"
secret = "s3"
"#,
    );
    let mut args = vec!["--config", file.path()];
    args.extend(PUSHER_FLAGS);
    let errors = resolve_args(&args).unwrap_err();
    assert_eq!(
        error_lines(&errors),
        [
            "pusher.apps.b.key (config file): key \"app1-key\" is also the key of the app of --pusher-app-id; keys must be unique",
            "pusher.apps[1].id (config file): id \"app1\" is also the id of the app of --pusher-app-id; ids must be unique",
            "pusher.apps[3].id (config file): id \"b\" is also the id of pusher.apps[2]; ids must be unique",
        ]
    );
}

#[test]
fn bad_pusher_apps_are_each_named() {
    let file = TempToml::new(
        r#"
[[pusher.apps]]
id = "a:b"
key = "k/1"
secret = ""
client_events = "yes"

[[pusher.apps]]
id = "two"
key = "k2"
secret = "never-shown-83c1"
webhook_url = "https://user:never-shown-83c1@hooks.example"
webhook_events = ["channel_occupied", "member_joined"]
colour = "blue"

[[pusher.apps]]
key = "k3"
webhook_events = ["client_event"]

[[pusher.apps]]
id = "four"
key = "k4"
secret = "s"
webhook_url = "http://hooks"
webhook_events = ["cache_miss", "cache_miss"]
max_connections = 0
client_event_rate = -1
max_presence_members = "many"
"#,
    );
    let errors = resolve_args(&["--config", file.path()]).unwrap_err();
    let known_keys = "id, key, secret, client_events, webhook_url, webhook_events, max_connections, client_event_rate, max_presence_members";
    let known_events =
        "channel_occupied, channel_vacated, member_added, member_removed, client_event, cache_miss";
    assert_eq!(
        error_lines(&errors),
        [
            "pusher.apps.four.client_event_rate (config file): must be a number of events per second above 0".to_owned(),
            "pusher.apps.four.max_connections (config file): must be a whole number from 1 to 4294967295".to_owned(),
            "pusher.apps.four.max_presence_members (config file): must be a whole number from 1 to 100000".to_owned(),
            "pusher.apps.four.webhook_events (config file): \"cache_miss\" is listed twice".to_owned(),
            format!("pusher.apps.two.colour (config file): unknown key; known: {known_keys}"),
            "pusher.apps.two.webhook_events (config file): \"member_joined\" is no webhook event; known: ".to_owned() + known_events,
            "pusher.apps.two.webhook_url (config file): must start with http://: the node is built without a TLS stack, so it cannot post webhooks over https://".to_owned(),
            "pusher.apps[1].client_events (config file): must be true or false".to_owned(),
            "pusher.apps[1].id (config file): \"a:b\": use 1 to 64 characters of A-Z a-z 0-9 - _ . (the id names the app's channel namespace)".to_owned(),
            "pusher.apps[1].key (config file): \"k/1\": a key has no / ? # spaces or control characters (it is part of the URL path /app/KEY)".to_owned(),
            "pusher.apps[1].secret (config file): must not be empty".to_owned(),
            "pusher.apps[3].id (config file): missing: every app needs id, key and secret".to_owned(),
            "pusher.apps[3].secret (config file): missing: every app needs id, key and secret".to_owned(),
            "pusher.apps[3].webhook_events (config file): given without a webhook_url: the app sends no webhooks".to_owned(),
        ]
    );
    let all = format!("{errors:?}");
    assert!(!all.contains("never-shown"), "{all}");
}

#[test]
fn the_pusher_table_has_only_apps() {
    let file = TempToml::new("[pusher]\napp = 1\n");
    let errors = resolve_args(&["--config", file.path()]).unwrap_err();
    assert_eq!(
        error_lines(&errors),
        ["pusher.app (config file): unknown key; known: apps"]
    );
    let file = TempToml::new("pusher = 1\n");
    let errors = resolve_args(&["--config", file.path()]).unwrap_err();
    assert_eq!(
        error_lines(&errors),
        ["pusher (config file): must be a table: give apps as [[pusher.apps]] tables"]
    );
    let file = TempToml::new("[pusher]\napps = 1\n");
    let errors = resolve_args(&["--config", file.path()]).unwrap_err();
    assert_eq!(
        error_lines(&errors),
        ["pusher.apps (config file): must be [[pusher.apps]] tables"]
    );
    let file = TempToml::new("[pusher]\napps = [1]\n");
    let errors = resolve_args(&["--config", file.path()]).unwrap_err();
    assert_eq!(
        error_lines(&errors),
        ["pusher.apps[1] (config file): must be a table"]
    );
}

#[test]
fn the_config_shows_no_secret() {
    let file = TempToml::new(
        "api_key = \"api-secret-1\"\nredis_url = \"redis://:redis-secret-2@127.0.0.1:6399\"\n[auth]\njwt_secret = \"jwt-secret-3\"\n[[pusher.apps]]\nid = \"b\"\nkey = \"b-key\"\nsecret = \"pusher-secret-4\"\nwebhook_url = \"http://user:hook-secret-5@hooks\"\n",
    );
    let mut args = vec!["--config", file.path()];
    args.extend(PUSHER_FLAGS);
    let c = resolve_args(&args).unwrap();
    let shown = format!("{c:?} {c:#?}");
    for secret in [
        "api-secret-1",
        "redis-secret-2",
        "jwt-secret-3",
        "pusher-secret-4",
        "hook-secret-5",
        "flag-secret-1e4b",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains("b-key") && shown.contains("<redacted>"),
        "{shown}"
    );
    assert_eq!(
        c.node.pusher[1].secret, "pusher-secret-4",
        "the value itself is whole"
    );
}

/// The docs' example of `[[pusher.apps]]` is a good configuration.
#[test]
fn the_docs_pusher_example_is_read() {
    let docs = include_str!("../../../../docs/CONFIGURATION.md");
    let section = docs
        .split("\n### Pusher apps\n")
        .nth(1)
        .expect("docs/CONFIGURATION.md has a `### Pusher apps` section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a TOML example in the Pusher apps section");
    let file = TempToml::new(example);
    let c = resolve_args(&["--config", file.path()]).unwrap();
    let ids: Vec<&str> = c.node.pusher.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["app1", "app2"]);
    assert_eq!(c.node.pusher[0].webhook_events.len(), 5);
}

/// The compose cluster's file resolves, and so does the Pusher app it keeps
/// commented out, once uncommented.
#[test]
fn the_deploy_files_pusher_example_is_read() {
    let text = include_str!("../../../../deploy/switchboard.toml");
    let file = TempToml::new(text);
    assert!(
        resolve_args(&["--config", file.path()])
            .unwrap()
            .node
            .pusher
            .is_empty()
    );
    let uncommented: String = text
        .lines()
        .skip_while(|l| *l != "# [[pusher.apps]]")
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    assert!(
        !uncommented.is_empty(),
        "deploy/switchboard.toml has the example"
    );
    let file = TempToml::new(&format!("{text}\n{uncommented}"));
    let c = resolve_args(&["--config", file.path()]).unwrap();
    let ids: Vec<&str> = c.node.pusher.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["app1"]);
}
