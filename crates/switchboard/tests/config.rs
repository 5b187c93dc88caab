//! Configuration: flags over environment over TOML over defaults, every bad setting
//! reported at once with exit code 64, and `--help`.

use std::path::PathBuf;

use serde_json::json;
use switchboard_testkit::{CliOutput, Node, RedisServer, TempDir, WsClient, run_switchboard};

/// Writes `text` to `name` in a fresh temp dir; keep the dir alive while it is used.
fn toml_file(name: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("config");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write toml");
    (dir, path)
}

/// The `error: ...` lines of stderr.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

/// Asserts exit 64, nothing on stdout, and an `error:` line naming each of `settings`
/// (any of the spellings given for each).
fn assert_config_error(out: &CliOutput, settings: &[&[&str]], what: &str) {
    assert_eq!(
        out.status.code(),
        Some(64),
        "{what}: exit status {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(
        out.stdout.trim().is_empty(),
        "{what}: nothing is bound, so no listening line; stdout: {:?}",
        out.stdout
    );
    let errors = error_lines(&out.stderr);
    for spellings in settings {
        assert!(
            errors
                .iter()
                .any(|l| spellings.iter().any(|s| l.to_ascii_lowercase().contains(s))),
            "{what}: no `error: <setting>: ...` line names {spellings:?}; stderr:\n{}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_setting_is_reported_and_exits_64() {
    let out = run_switchboard(
        &[
            "--listen",
            "nonsense",
            "--heartbeat",
            "-1",
            "--log-format",
            "xml",
            "--internal-listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;
    assert_config_error(
        &out,
        &[&["listen"], &["heartbeat"], &["log-format", "log_format"]],
        "three bad flags",
    );
    assert!(
        error_lines(&out.stderr).len() >= 3,
        "one line per bad setting; stderr:\n{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_value_is_named() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("--redis-url", "not a url", &["redis-url", "redis_url"]),
        (
            "--redis-url",
            "http://127.0.0.1:6379",
            &["redis-url", "redis_url"],
        ),
        (
            "--max-message-size",
            "big",
            &["max-message-size", "max_message_size"],
        ),
        (
            "--drain-timeout",
            "soon",
            &["drain-timeout", "drain_timeout"],
        ),
        (
            "--registry-interval",
            "-2",
            &["registry-interval", "registry_interval"],
        ),
        (
            "--outbound-queue",
            "many",
            &["outbound-queue", "outbound_queue"],
        ),
        (
            "--internal-listen",
            "nowhere",
            &["internal-listen", "internal_listen"],
        ),
        ("--heartbeat", "fast", &["heartbeat"]),
    ];
    for (flag, value, names) in cases {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        if *flag != "--internal-listen" {
            args.extend(["--internal-listen", "127.0.0.1:0"]);
        }
        args.extend([*flag, *value]);
        let out = run_switchboard(&args, &[]).await;
        assert_config_error(&out, &[names], &format!("{flag} {value:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_environment_values_exit_64() {
    let out = run_switchboard(
        &[
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
        ],
        &[
            ("SWITCHBOARD_HEARTBEAT", "often"),
            ("SWITCHBOARD_LOG_FORMAT", "yaml"),
        ],
    )
    .await;
    assert_config_error(
        &out,
        &[&["heartbeat"], &["log-format", "log_format"]],
        "bad env values",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_files_exit_64() {
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "127.0.0.1:0",
    ];

    let (_dir, path) = toml_file("unknown.toml", "node_id = \"n\"\nheartbeet = 5\n");
    let mut args = base.to_vec();
    let path_text = path.to_string_lossy().into_owned();
    args.extend(["--config", &path_text]);
    let out = run_switchboard(&args, &[]).await;
    assert_config_error(&out, &[&["heartbeet"]], "unknown TOML key");

    let (_dir2, path2) = toml_file("typed.toml", "heartbeat = \"fast\"\n");
    let path2_text = path2.to_string_lossy().into_owned();
    let mut args = base.to_vec();
    args.extend(["--config", &path2_text]);
    let out = run_switchboard(&args, &[]).await;
    assert_config_error(&out, &[&["heartbeat"]], "mistyped TOML value");

    let (_dir3, path3) = toml_file("broken.toml", "listen = \"127.0.0.1:0\n[[[\n");
    let path3_text = path3.to_string_lossy().into_owned();
    let mut args = base.to_vec();
    args.extend(["--config", &path3_text]);
    let out = run_switchboard(&args, &[]).await;
    assert_config_error(&out, &[&["config"]], "unparsable TOML");

    let mut args = base.to_vec();
    args.extend(["--config", "/nonexistent/switchboard.toml"]);
    let out = run_switchboard(&args, &[]).await;
    assert_config_error(&out, &[&["config"]], "missing config file");

    // The same, named by the environment.
    let out = run_switchboard(
        &base,
        &[("SWITCHBOARD_CONFIG", "/nonexistent/switchboard.toml")],
    )
    .await;
    assert_config_error(&out, &[&["config"]], "missing config file from env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_environment_beat_toml() {
    let (_dir, path) = toml_file(
        "precedence.toml",
        "node_id = \"from-toml\"\nheartbeat = 3\n",
    );
    let path_text = path.to_string_lossy().into_owned();

    // TOML alone.
    let node = Node::builder("unused")
        .without_node_id_flag()
        .args(["--config", &path_text])
        .start()
        .await;
    let client = WsClient::connect_json(&node.ws_url()).await;
    assert_eq!(client.welcome["node"], "from-toml");
    assert_eq!(client.welcome["heartbeat"], 3);
    let cluster_ids = node.cluster_ids().await;
    assert_eq!(cluster_ids, ["from-toml"]);
    drop((client, node));

    // Environment over TOML; the file named by SWITCHBOARD_CONFIG.
    let node = Node::builder("unused")
        .without_node_id_flag()
        .env("SWITCHBOARD_CONFIG", &path_text)
        .env("SWITCHBOARD_NODE_ID", "from-env")
        .env("SWITCHBOARD_HEARTBEAT", "4")
        .start()
        .await;
    let client = WsClient::connect_json(&node.ws_url()).await;
    assert_eq!(client.welcome["node"], "from-env");
    assert_eq!(client.welcome["heartbeat"], 4);
    drop((client, node));

    // Flags over both.
    let node = Node::builder("from-flag")
        .args(["--config", &path_text, "--heartbeat", "5"])
        .env("SWITCHBOARD_NODE_ID", "from-env")
        .env("SWITCHBOARD_HEARTBEAT", "4")
        .start()
        .await;
    let client = WsClient::connect_json(&node.ws_url()).await;
    assert_eq!(client.welcome["node"], "from-flag");
    assert_eq!(client.welcome["heartbeat"], 5);
}

/// Each source is read, and the first that has a setting wins. Every source
/// names a different loopback address, so the listening line the node prints
/// shows which one it took: the public listener from the environment (over the
/// file's), the internal listener from the file (no flag or variable sets it;
/// the default is 127.0.0.1), and the heartbeat from a flag over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_from_environment_and_toml() {
    let (_dir, path) = toml_file(
        "listen.toml",
        "listen = \"127.0.0.4:0\"\ninternal_listen = \"127.0.0.3:0\"\nheartbeat = 3\n",
    );
    let path_text = path.to_string_lossy().into_owned();
    let node = Node::builder("sources")
        .without_listen_flags()
        .args(["--config", &path_text, "--heartbeat", "5"])
        .env("SWITCHBOARD_LISTEN", "127.0.0.2:0")
        .env("SWITCHBOARD_HEARTBEAT", "4")
        .start()
        .await;
    assert_eq!(
        node.public_addr().ip().to_string(),
        "127.0.0.2",
        "public listener from SWITCHBOARD_LISTEN, over the file's listen"
    );
    assert_eq!(
        node.internal_addr().ip().to_string(),
        "127.0.0.3",
        "internal listener from the file's internal_listen"
    );
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    assert_eq!(
        client.welcome["heartbeat"], 5,
        "--heartbeat 5 over SWITCHBOARD_HEARTBEAT=4 and the file's 3"
    );
    client.ping_pong().await;
    let r = node.internal_raw("GET", "/readyz", &[], None).await;
    assert_eq!(r.status, 200, "the internal listener on 127.0.0.3 serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_settings_from_environment_and_toml() {
    let redis = RedisServer::start().await;

    // redis_url and redis_prefix from the environment.
    let node = Node::builder("env-redis")
        .env("SWITCHBOARD_REDIS_URL", &redis.url())
        .env("SWITCHBOARD_REDIS_PREFIX", "envpfx")
        .start()
        .await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    client.subscribe("c").await;
    let channels = redis.pubsub_channels("*").await;
    assert!(
        channels.iter().any(|c| c == "envpfx:ch:{c}"),
        "SWITCHBOARD_REDIS_URL/PREFIX honoured: Redis channels {channels:?}"
    );
    assert!(
        !channels.iter().any(|c| c.starts_with("switchboard:")),
        "no default-prefixed channel: {channels:?}"
    );
    drop((client, node));

    // From TOML, with the flag beating the TOML prefix.
    let (_dir, path) = toml_file(
        "redis.toml",
        &format!(
            "redis_url = \"{}\"\nredis_prefix = \"tomlpfx\"\n",
            redis.url()
        ),
    );
    let path_text = path.to_string_lossy().into_owned();
    let node = Node::builder("toml-redis")
        .args(["--config", &path_text, "--redis-prefix", "flagpfx"])
        .start()
        .await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    client.subscribe("d").await;
    let channels = redis.pubsub_channels("*").await;
    assert!(
        channels.iter().any(|c| c == "flagpfx:ch:{d}"),
        "TOML redis_url and flag --redis-prefix honoured: Redis channels {channels:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_from_environment() {
    let node = Node::builder("env-key")
        .env("SWITCHBOARD_API_KEY", "from-env")
        .start()
        .await;
    let body = serde_json::to_vec(&json!({"channel": "k", "data": 1})).expect("json");
    let r = node
        .internal_raw("POST", "/api/v1/publish", &[], Some(&body))
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = node
        .internal_raw(
            "POST",
            "/api/v1/publish",
            &[("Authorization", "apikey from-env")],
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// One Pusher app from the environment: the three variables start the node,
/// beside the file's apps too; some of them only, or an id a file's app has
/// too, is a configuration error that names what is wrong and never a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_app_from_the_environment() {
    let env = [
        ("SWITCHBOARD_PUSHER_APP_ID", "env-app"),
        ("SWITCHBOARD_PUSHER_KEY", "env-key"),
        ("SWITCHBOARD_PUSHER_SECRET", "env-secret-5f2c"),
    ];
    let mut node = Node::builder("pusher-env").config_toml(
        "[[pusher.apps]]\nid = \"file-app\"\nkey = \"file-key\"\nsecret = \"file-secret-77d1\"\n",
    );
    for (key, value) in env {
        node = node.env(key, value);
    }
    let node = node.start().await;
    let r = node.internal_raw("GET", "/readyz", &[], None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(node);

    let base = [
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "127.0.0.1:0",
    ];
    let out = run_switchboard(&base, &env[..2]).await;
    assert_config_error(
        &out,
        &[&["--pusher-secret"]],
        "app id and key without a secret",
    );
    let out = run_switchboard(&base, &env[2..]).await;
    assert_config_error(
        &out,
        &[&["--pusher-app-id"], &["--pusher-key"]],
        "a secret without an app id and key",
    );
    assert!(!out.stderr.contains("env-secret-5f2c"), "{}", out.stderr);

    let (_dir, path) = toml_file(
        "pusher.toml",
        "[[pusher.apps]]\nid = \"env-app\"\nkey = \"other-key\"\nsecret = \"file-secret-77d1\"\n",
    );
    let path_text = path.to_string_lossy().into_owned();
    let mut args = base.to_vec();
    args.extend(["--config", &path_text]);
    let out = run_switchboard(&args, &env).await;
    assert_config_error(&out, &[&["pusher.apps[1].id"]], "an id used twice");
    for secret in ["env-secret-5f2c", "file-secret-77d1"] {
        assert!(!out.stderr.contains(secret), "{}", out.stderr);
    }
}

/// The flag and variable of each row of the settings table in
/// `docs/CONFIGURATION.md` (the binary's unit tests check that table against
/// the one the binary is built from).
fn documented_settings() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIGURATION.md");
    let docs = std::fs::read_to_string(path).expect("read docs/CONFIGURATION.md");
    let cell = |c: &str| c.trim().trim_matches('`').to_owned();
    docs.lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
            (cell(cells[0]), cell(cells[1]))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_every_setting_and_no_other() {
    let out = run_switchboard(&["--help"], &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "--help: {:?}\n{}",
        out.status,
        out.stderr
    );
    // Help lines wrap at the terminal's width; words do not.
    let help = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    let documented = documented_settings();
    assert_eq!(documented.len(), 31, "the settings table has 31 rows");
    for (flag, env) in &documented {
        assert!(
            help.contains(&format!("{flag} <")),
            "--help does not list {flag}:\n{}",
            out.stdout
        );
        assert!(
            help.contains(&format!("[env: {env}=]")) || help.contains(&format!("[env: {env}]")),
            "--help does not name {env} for {flag}:\n{}",
            out.stdout
        );
    }
    // And nothing the table does not have: the option lines (`  --listen <ADDR>`,
    // `  -h, --help`) and the `[env: ...]` notes.
    let listed_flags: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| w.trim_end_matches(','))
        .filter(|f| !matches!(*f, "--help" | "--version"))
        .collect();
    let listed_envs: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .collect();
    let flags: Vec<&str> = documented.iter().map(|(f, _)| f.as_str()).collect();
    let envs: Vec<&str> = documented.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(
        listed_flags, flags,
        "the flags of --help, in the table's order"
    );
    assert_eq!(
        listed_envs, envs,
        "the variables of --help, in the table's order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_json_lines() {
    let mut node = Node::start(
        "node-json-logs",
        &["--log-format", "json", "--drain-timeout", "1"],
    )
    .await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    client.ping_pong().await;
    node.sigterm();
    node.wait_exit(std::time::Duration::from_secs(5)).await;
    let stderr = node.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !lines.is_empty(),
        "a node that started and drained logged nothing"
    );
    for line in lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "--log-format json: stderr line is not a JSON object: {line}"
        );
    }
}
