//! The node's configuration: flags, then `SWITCHBOARD_*` environment
//! variables, then the TOML file named by `--config`, then defaults.
//!
//! Every value is read as text from whichever source has it and parsed by one
//! function per setting, so a value means the same from every source. Every
//! bad setting is reported (with where it came from), and the node refuses to
//! start on any of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use std::collections::HashMap;

use switchboard_gateway::{AuthConfig, BackplaneConfig, Limits, Namespace, Namespaces, NodeConfig};

/// Command-line interface. Every setting is also an environment variable and a TOML key.
#[derive(Parser, Debug, Default)]
#[command(
    name = "switchboard",
    version,
    allow_negative_numbers = true,
    about = "A real-time WebSocket gateway node. Runs alone on an in-process backplane, or as one node of a cluster on Redis.",
    after_help = "Every setting can also be given as an environment variable (shown) or as a key of the TOML file named by --config; flags win over the environment, which wins over the file.\nExit codes: 0 after a drain, 64 on a bad configuration (every bad setting is named), 1 when the node cannot start."
)]
pub struct Cli {
    /// TOML file with settings (keys as in the table of docs/CONFIGURATION.md).
    #[arg(long, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<String>,
    /// Public listener: /ws, /healthz. [default: 0.0.0.0:8080]
    #[arg(long, env = "SWITCHBOARD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Internal listener: /metrics, /healthz, /readyz, /api/v1/*. Keep it private. [default: 127.0.0.1:9090]
    #[arg(long, env = "SWITCHBOARD_INTERNAL_LISTEN", value_name = "ADDR")]
    pub internal_listen: Option<String>,
    /// Redis URL of the cluster backplane; without it the node runs alone on an in-process backplane.
    #[arg(
        long,
        env = "SWITCHBOARD_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Node id, unique in the cluster. [default: the hostname]
    #[arg(long, env = "SWITCHBOARD_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Key the server API requires (`Authorization: apikey KEY`); without it the API is open.
    #[arg(
        long,
        env = "SWITCHBOARD_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Browser origins allowed to connect, comma-separated; `*` as a suffix is a wildcard. [default: any]
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_name = "LIST")]
    pub allowed_origins: Option<String>,
    /// Seconds a drain (SIGTERM/SIGINT) may take before the process exits. [default: 30]
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT", value_name = "SECONDS")]
    pub drain_timeout: Option<String>,
    /// Log format on stderr: text or json. [default: text]
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `info,switchboard_gateway=debug`. [default: info]
    #[arg(long, env = "SWITCHBOARD_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Seconds between server pings; two intervals without a sign of life close a connection. [default: 25]
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT", value_name = "SECONDS")]
    pub heartbeat: Option<String>,
    /// Largest client message and API body, in bytes; larger messages close the connection with 1009. [default: 65536]
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<String>,
    /// Frames queued per connection; a connection whose queue overflows is closed with 4008. [default: 1024]
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE", value_name = "FRAMES")]
    pub outbound_queue: Option<String>,
    /// Prefix of every Redis key and pub/sub channel. [default: switchboard]
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,
    /// Seconds between node-registry heartbeats in Redis; a node silent for 3 drops out of the cluster list. [default: 2]
    #[arg(long, env = "SWITCHBOARD_REGISTRY_INTERVAL", value_name = "SECONDS")]
    pub registry_interval: Option<String>,
    /// Shared secret for HS256 tokens (TOML: auth.jwt_secret).
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256 or ES256 tokens (TOML: auth.jwt_public_key).
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<String>,
    /// Let connections without a token in as anonymous (TOML: auth.allow_anonymous). [default: true without a JWT key, false with one]
    #[arg(long, env = "SWITCHBOARD_ALLOW_ANONYMOUS", value_name = "BOOL")]
    pub allow_anonymous: Option<String>,
    /// Open connections per node; beyond, upgrades get 503 and /readyz is 503. [default: 10000]
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// Subscriptions per connection; beyond, `limit_exceeded`. [default: 128]
    #[arg(long, env = "SWITCHBOARD_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<String>,
    /// Commands per second per connection; beyond, `rate_limited`, and close 4029 on sustained abuse. [default: 100]
    #[arg(long, env = "SWITCHBOARD_CLIENT_RATE", value_name = "PER_SECOND")]
    pub client_rate: Option<String>,
    /// Burst of commands per connection above the rate. [default: 200]
    #[arg(long, env = "SWITCHBOARD_CLIENT_BURST", value_name = "N")]
    pub client_burst: Option<String>,
    /// New connections per second per client IP; beyond, HTTP 429. [default: 50]
    #[arg(long, env = "SWITCHBOARD_IP_CONNECT_RATE", value_name = "PER_SECOND")]
    pub ip_connect_rate: Option<String>,
    /// Connections per client IP on the public listener still in their HTTP phase (request head not yet read, or upgrade not yet done); beyond, HTTP 429 at once. [default: 1024]
    #[arg(long, env = "SWITCHBOARD_MAX_PENDING_PER_IP", value_name = "N")]
    pub max_pending_per_ip: Option<String>,
    /// Listen backlog of both listeners: connections waiting to be accepted, e.g. during a reconnect storm (capped by the kernel's net.core.somaxconn). [default: 4096]
    #[arg(long, env = "SWITCHBOARD_LISTEN_BACKLOG", value_name = "N")]
    pub listen_backlog: Option<String>,
    /// Longest channel name in bytes, at most 255. [default: 255]
    #[arg(long, env = "SWITCHBOARD_MAX_CHANNEL_LENGTH", value_name = "BYTES")]
    pub max_channel_length: Option<String>,
    /// Serve the demo page at / (with its /status); /client.js is served either way. [default: true]
    #[arg(long, env = "SWITCHBOARD_DEMO", value_name = "BOOL")]
    pub demo: Option<String>,
    /// Envelopes waiting per fan-out lane; when a lane is full the node stops reading Redis until it has room (the backlog waits in Redis). [default: 4096]
    #[arg(long, env = "SWITCHBOARD_FANOUT_LANE_CAPACITY", value_name = "N")]
    pub fanout_lane_capacity: Option<String>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole, validated configuration.
#[derive(Debug)]
pub struct Config {
    /// What the node runs with.
    pub node: NodeConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directives.
    pub log_level: String,
}

/// One bad setting: which, from where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting, named as a flag (`--listen`).
    pub setting: String,
    /// Where the value came from.
    pub source: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.setting, self.source, self.message)
    }
}

/// TOML keys this version reads.
const TOML_KEYS: &[&str] = &[
    "listen",
    "internal_listen",
    "redis_url",
    "node_id",
    "api_key",
    "allowed_origins",
    "drain_timeout",
    "log_format",
    "log_level",
    "heartbeat",
    "max_message_size",
    "outbound_queue",
    "redis_prefix",
    "registry_interval",
    "auth",
    "namespaces",
    "max_connections",
    "max_subscriptions",
    "client_rate",
    "client_burst",
    "ip_connect_rate",
    "max_pending_per_ip",
    "max_channel_length",
    "demo",
    "fanout_lane_capacity",
    "listen_backlog",
];

/// Keys of the `[auth]` table.
const AUTH_KEYS: &[&str] = &["jwt_secret", "jwt_public_key", "allow_anonymous"];

/// Keys of a `[namespaces.NAME]` table.
const NAMESPACE_KEYS: &[&str] = &[
    "history_size",
    "history_ttl",
    "presence",
    "join_leave",
    "client_publish",
];

/// Parses the process's arguments and environment (clap handles `--help`).
pub fn load_from_process() -> Result<Config, Vec<ConfigError>> {
    let matches = Cli::command().get_matches();
    resolve(&matches)
}

/// Resolves parsed arguments (flags and environment) plus the TOML file into a config.
pub fn resolve(matches: &ArgMatches) -> Result<Config, Vec<ConfigError>> {
    let cli = Cli::from_arg_matches(matches).map_err(|e| {
        vec![ConfigError {
            setting: "arguments".into(),
            source: "command line".into(),
            message: e.to_string(),
        }]
    })?;
    let mut errors = Vec::new();
    let file = match non_empty(&cli.config) {
        None => toml::Table::new(),
        Some(path) => read_toml(&PathBuf::from(path), &mut errors),
    };
    let mut r = Reader {
        matches,
        file: &file,
        errors,
    };
    let flag_value = |v: &Option<String>| non_empty(v).map(str::to_owned);

    let listen = r.get(
        "listen",
        flag_value(&cli.listen),
        "0.0.0.0:8080",
        parse_addr,
    );
    let internal_listen = r.get(
        "internal_listen",
        flag_value(&cli.internal_listen),
        "127.0.0.1:9090",
        parse_addr,
    );
    let redis_url = r.optional("redis_url", flag_value(&cli.redis_url), parse_redis_url);
    let node_id = r
        .optional("node_id", flag_value(&cli.node_id), parse_node_id)
        .flatten()
        .unwrap_or_else(default_node_id);
    let api_key = r
        .optional("api_key", flag_value(&cli.api_key), |s| Ok(s.to_owned()))
        .flatten();
    let allowed_origins = r
        .optional(
            "allowed_origins",
            flag_value(&cli.allowed_origins),
            parse_origins,
        )
        .flatten()
        .unwrap_or_default();
    let drain_timeout = r.get(
        "drain_timeout",
        flag_value(&cli.drain_timeout),
        "30",
        parse_seconds,
    );
    let log_format = r.get(
        "log_format",
        flag_value(&cli.log_format),
        "text",
        parse_log_format,
    );
    let log_level = r.get(
        "log_level",
        flag_value(&cli.log_level),
        "info",
        parse_log_level,
    );
    let heartbeat = r.get("heartbeat", flag_value(&cli.heartbeat), "25", parse_seconds);
    let max_message_size = r.get(
        "max_message_size",
        flag_value(&cli.max_message_size),
        "65536",
        |s| parse_count(s, 128, 64 << 20),
    );
    let outbound_queue = r.get(
        "outbound_queue",
        flag_value(&cli.outbound_queue),
        "1024",
        |s| parse_count(s, 1, 1 << 20),
    );
    let redis_prefix = r.get(
        "redis_prefix",
        flag_value(&cli.redis_prefix),
        "switchboard",
        parse_prefix,
    );
    let registry_interval = r.get(
        "registry_interval",
        flag_value(&cli.registry_interval),
        "2",
        parse_seconds,
    );
    let jwt_secret = r
        .optional("jwt_secret", flag_value(&cli.jwt_secret), |s| {
            Ok(s.to_owned())
        })
        .flatten();
    let jwt_public_key = r
        .optional(
            "jwt_public_key",
            flag_value(&cli.jwt_public_key),
            read_key_file,
        )
        .flatten();
    let has_key = jwt_secret.is_some() || jwt_public_key.is_some();
    let allow_anonymous = r.get(
        "allow_anonymous",
        flag_value(&cli.allow_anonymous),
        if has_key { "false" } else { "true" },
        parse_bool,
    );
    let max_connections = r.get(
        "max_connections",
        flag_value(&cli.max_connections),
        "10000",
        |s| parse_count(s, 1, 10_000_000),
    );
    let max_subscriptions = r.get(
        "max_subscriptions",
        flag_value(&cli.max_subscriptions),
        "128",
        |s| parse_count(s, 1, 1_000_000),
    );
    let client_rate = r.get(
        "client_rate",
        flag_value(&cli.client_rate),
        "100",
        parse_rate,
    );
    let client_burst = r.get("client_burst", flag_value(&cli.client_burst), "200", |s| {
        parse_count(s, 1, 1_000_000).map(|n| n as u32)
    });
    let ip_connect_rate = r.get(
        "ip_connect_rate",
        flag_value(&cli.ip_connect_rate),
        "50",
        parse_rate,
    );
    let max_pending_per_ip = r.get(
        "max_pending_per_ip",
        flag_value(&cli.max_pending_per_ip),
        "1024",
        |s| parse_count(s, 1, 1_000_000),
    );
    let max_channel_length = r.get(
        "max_channel_length",
        flag_value(&cli.max_channel_length),
        "255",
        |s| parse_count(s, 1, 255),
    );
    let listen_backlog = r.get(
        "listen_backlog",
        flag_value(&cli.listen_backlog),
        "4096",
        |s| parse_count(s, 1, 1 << 20).map(|n| n as u32),
    );
    let demo = r.get("demo", flag_value(&cli.demo), "true", parse_bool);
    let fanout_lane_capacity = r.get(
        "fanout_lane_capacity",
        flag_value(&cli.fanout_lane_capacity),
        "4096",
        |s| parse_count(s, 1, 1 << 20),
    );
    let namespaces = parse_namespaces(
        &with_demo_namespace(&file, demo == Some(true)),
        &mut r.errors,
    );
    check_table_keys(&file, "auth", AUTH_KEYS, &mut r.errors);

    for key in file.keys() {
        if !TOML_KEYS.contains(&key.as_str()) {
            r.errors.push(ConfigError {
                setting: key.clone(),
                source: "config file".into(),
                message: "unknown key".into(),
            });
        }
    }
    if !r.errors.is_empty() {
        return Err(r.errors);
    }
    // Every `None` below was reported as an error above.
    let Some(fanout_lane_capacity) = fanout_lane_capacity else {
        unreachable!("a setting failed without an error")
    };
    let (
        Some(listen),
        Some(internal_listen),
        Some(redis_url),
        Some(drain_timeout),
        Some(log_format),
        Some(log_level),
        Some(heartbeat),
        Some(max_message_size),
        Some(outbound_queue),
        Some(redis_prefix),
        Some(registry_interval),
    ) = (
        listen,
        internal_listen,
        redis_url,
        drain_timeout,
        log_format,
        log_level,
        heartbeat,
        max_message_size,
        outbound_queue,
        redis_prefix,
        registry_interval,
    )
    else {
        unreachable!("a setting failed without an error")
    };
    let (
        Some(allow_anonymous),
        Some(max_connections),
        Some(max_subscriptions),
        Some(client_rate),
        Some(client_burst),
        Some(ip_connect_rate),
        Some(max_pending_per_ip),
        Some(max_channel_length),
        Some(demo),
        Some(listen_backlog),
    ) = (
        allow_anonymous,
        max_connections,
        max_subscriptions,
        client_rate,
        client_burst,
        ip_connect_rate,
        max_pending_per_ip,
        max_channel_length,
        demo,
        listen_backlog,
    )
    else {
        unreachable!("a setting failed without an error")
    };
    let backplane = match redis_url {
        None => BackplaneConfig::Memory,
        Some(url) => BackplaneConfig::Redis {
            url,
            prefix: redis_prefix,
            registry_interval,
        },
    };
    Ok(Config {
        node: NodeConfig {
            node_id,
            listen,
            internal_listen,
            backplane,
            api_key,
            allowed_origins,
            drain_timeout,
            heartbeat,
            max_message_size,
            outbound_queue,
            listen_backlog,
            namespaces,
            auth: AuthConfig {
                jwt_secret,
                jwt_public_key,
                allow_anonymous,
            },
            limits: Limits {
                max_connections,
                max_subscriptions,
                client_rate,
                client_burst,
                ip_connect_rate,
                max_channel_length,
                max_pending_per_ip,
            },
            demo,
            fanout_lane_capacity,
        },
        log_format,
        log_level,
    })
}

/// Finds each setting's value in the first source that has it.
struct Reader<'a> {
    matches: &'a ArgMatches,
    file: &'a toml::Table,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    /// A setting with a default; `None` when its value is bad (and recorded).
    fn get<T>(
        &mut self,
        key: &str,
        flag_or_env: Option<String>,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (value, source) = self
            .lookup(key, flag_or_env)
            .unwrap_or((default.to_owned(), "default".into()));
        self.parse(key, &value, source, parse)
    }

    /// A setting without a default: `Some(None)` when unset, `None` when bad.
    fn optional<T>(
        &mut self,
        key: &str,
        flag_or_env: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match self.lookup(key, flag_or_env) {
            None => Some(None),
            Some((value, source)) => self.parse(key, &value, source, parse).map(Some),
        }
    }

    fn lookup(&mut self, key: &str, flag_or_env: Option<String>) -> Option<(String, String)> {
        if let Some(v) = flag_or_env {
            let source = match self.matches.value_source(key) {
                Some(ValueSource::EnvVariable) => {
                    format!("environment SWITCHBOARD_{}", key.to_ascii_uppercase())
                }
                _ => "command line".to_owned(),
            };
            return Some((v, source));
        }
        let value = match toml_path(key) {
            (Some(table), name) => self.file.get(table)?.as_table()?.get(name)?,
            (None, name) => self.file.get(name)?,
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) if key == "allowed_origins" => {
                let mut out = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) => out.push(s.to_owned()),
                        None => {
                            self.error(key, "config file", "must be a list of strings".into());
                            return None;
                        }
                    }
                }
                out.join(",")
            }
            other => {
                self.error(
                    key,
                    "config file",
                    format!("unexpected {} value", other.type_str()),
                );
                return None;
            }
        };
        Some((text, "config file".into()))
    }

    fn parse<T>(
        &mut self,
        key: &str,
        value: &str,
        source: String,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(key, &source, message);
                None
            }
        }
    }

    fn error(&mut self, key: &str, source: &str, message: String) {
        self.errors.push(ConfigError {
            setting: format!("--{}", key.replace('_', "-")),
            source: source.to_owned(),
            message,
        });
    }
}

/// Where a setting lives in the TOML file: the auth settings in `[auth]`.
fn toml_path(key: &str) -> (Option<&'static str>, &str) {
    if AUTH_KEYS.contains(&key) {
        (Some("auth"), key)
    } else {
        (None, key)
    }
}

/// Reports keys of a TOML table that this version does not know.
fn check_table_keys(
    file: &toml::Table,
    table: &str,
    known: &[&str],
    errors: &mut Vec<ConfigError>,
) {
    match file.get(table) {
        None => {}
        Some(toml::Value::Table(t)) => {
            for key in t.keys().filter(|k| !known.contains(&k.as_str())) {
                errors.push(ConfigError {
                    setting: format!("{table}.{key}"),
                    source: "config file".into(),
                    message: "unknown key".into(),
                });
            }
        }
        Some(_) => errors.push(ConfigError {
            setting: table.to_owned(),
            source: "config file".into(),
            message: "must be a table".into(),
        }),
    }
}

/// Reads the `[namespaces.NAME]` tables, reporting every bad key or value.
fn parse_namespaces(file: &toml::Table, errors: &mut Vec<ConfigError>) -> Namespaces {
    let mut by_name = HashMap::new();
    let Some(value) = file.get("namespaces") else {
        return Namespaces::default();
    };
    let mut fail = |setting: String, message: String| {
        errors.push(ConfigError {
            setting,
            source: "config file".into(),
            message,
        })
    };
    let Some(tables) = value.as_table() else {
        fail(
            "namespaces".into(),
            "must be a table of [namespaces.NAME] tables".into(),
        );
        return Namespaces::default();
    };
    for (name, table) in tables {
        let here = format!("namespaces.{name}");
        if name.is_empty()
            || name.len() > 255
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.@/=".contains(c))
        {
            fail(
                here.clone(),
                "a namespace name uses the channel alphabet without ':'".into(),
            );
        }
        let Some(table) = table.as_table() else {
            fail(here, "must be a table".into());
            continue;
        };
        let mut ns = Namespace::default();
        for (key, value) in table {
            let setting = format!("{here}.{key}");
            match key.as_str() {
                "history_size" => match value.as_integer() {
                    Some(n @ 0..=10_000) => ns.history_size = n as usize,
                    _ => fail(setting, "must be a whole number in 0..=10000".into()),
                },
                "history_ttl" => match value.as_integer() {
                    Some(n @ 1..=2_592_000) => ns.history_ttl = Duration::from_secs(n as u64),
                    _ => fail(setting, "must be whole seconds in 1..=2592000".into()),
                },
                "presence" | "join_leave" | "client_publish" => match value.as_bool() {
                    Some(b) => match key.as_str() {
                        "presence" => ns.presence = b,
                        "join_leave" => ns.join_leave = b,
                        _ => ns.client_publish = b,
                    },
                    None => fail(setting, "must be true or false".into()),
                },
                _ => fail(
                    setting,
                    format!("unknown key; known: {}", NAMESPACE_KEYS.join(", ")),
                ),
            }
        }
        by_name.insert(name.clone(), ns);
    }
    Namespaces::new(by_name)
}

/// With the demo on, the `demo` namespace its chat room uses keeps history and
/// presence, unless the file configures that namespace itself.
fn with_demo_namespace(file: &toml::Table, demo: bool) -> std::borrow::Cow<'_, toml::Table> {
    use toml::Value;
    let configured = match file.get("namespaces") {
        None => false,
        Some(Value::Table(t)) => t.contains_key("demo"),
        Some(_) => true, // not a table: parse_namespaces reports it
    };
    if !demo || configured {
        return std::borrow::Cow::Borrowed(file);
    }
    let mut file = file.clone();
    let namespaces = file
        .entry("namespaces")
        .or_insert_with(|| Value::Table(toml::Table::new()));
    if let Value::Table(namespaces) = namespaces {
        let demo = toml::Table::from_iter([
            ("history_size".to_owned(), Value::Integer(100)),
            ("history_ttl".to_owned(), Value::Integer(3600)),
            ("presence".to_owned(), Value::Boolean(true)),
            ("join_leave".to_owned(), Value::Boolean(true)),
        ]);
        namespaces.insert("demo".to_owned(), Value::Table(demo));
    }
    std::borrow::Cow::Owned(file)
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?}: use true or false")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number per second"))?;
    if !rate.is_finite() || rate <= 0.0 || rate > 1e9 {
        return Err(format!("{s} is out of range: give a rate above 0"));
    }
    Ok(rate)
}

/// Reads a PEM key file at start-up, so a missing file stops the node before it listens.
fn read_key_file(path: &str) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    if !pem.starts_with(b"-----BEGIN") {
        return Err(format!("{path:?} is not a PEM file"));
    }
    Ok(pem)
}

/// Unset and empty are the same (an empty variable in a manifest means "not set").
fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.trim().is_empty())
}

fn read_toml(path: &PathBuf, errors: &mut Vec<ConfigError>) -> toml::Table {
    let mut fail = |message: String| {
        errors.push(ConfigError {
            setting: "--config".into(),
            source: path.display().to_string(),
            message,
        })
    };
    match std::fs::read_to_string(path) {
        Err(e) => {
            fail(format!("cannot read: {e}"));
            toml::Table::new()
        }
        Ok(text) => text.parse::<toml::Table>().unwrap_or_else(|e| {
            fail(format!("not valid TOML: {}", e.to_string().trim()));
            toml::Table::new()
        }),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:8080 or [::]:8080"))
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!(
            "{s} is out of range: give seconds above 0 and at most 86400"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_count(s: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{n} is out of range {min}..={max}"));
    }
    Ok(n)
}

fn parse_redis_url(s: &str) -> Result<String, String> {
    if !(s.starts_with("redis://")
        || s.starts_with("rediss://")
        || s.starts_with("redis+unix://")
        || s.starts_with("unix://"))
    {
        return Err(format!("{s:?} is not a Redis URL (redis://host:port/db)"));
    }
    redis::Client::open(s).map_err(|e| format!("{s:?} is not a usable Redis URL: {e}"))?;
    Ok(s.to_owned())
}

fn parse_node_id(s: &str) -> Result<String, String> {
    if s.len() > 128
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{s:?}: use at most 128 characters of A-Z a-z 0-9 - _ ."
        ));
    }
    Ok(s.to_owned())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || s.contains(['{', '}', ' ']) {
        return Err(format!(
            "{s:?}: use 1 to 64 characters, without braces or spaces"
        ));
    }
    Ok(s.to_owned())
}

fn parse_origins(s: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = list
        .iter()
        .find(|o| o.find('*').is_some_and(|i| i != o.len() - 1))
    {
        return Err(format!(
            "{bad:?}: `*` is allowed only at the end of an origin"
        ));
    }
    Ok(list)
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?}: use text or json")),
    }
}

fn parse_log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a log filter: {e}"))
}

/// The machine's hostname, which is the pod name on Kubernetes.
fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "switchboard".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn resolve_args(args: &[&str]) -> Result<Config, Vec<ConfigError>> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("switchboard").chain(args.iter().copied()))
            .expect("arguments parse");
        resolve(&matches)
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
        assert_eq!(c.log_format, LogFormat::Text);
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
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let mut file = tempfile();
        writeln!(
            file.1,
            "listen = \"127.0.0.1:1000\"\ninternal_listen = \"127.0.0.1:1001\"\nheartbeat = 5\nallowed_origins = [\"https://a\", \"http://localhost:*\"]\nredis_url = \"redis://127.0.0.1:6399\""
        )
        .unwrap();
        let c = resolve_args(&["--config", &file.0, "--listen", "127.0.0.1:2000"]).unwrap();
        assert_eq!(c.node.listen, "127.0.0.1:2000".parse().unwrap());
        assert_eq!(c.node.internal_listen, "127.0.0.1:1001".parse().unwrap());
        assert_eq!(c.node.heartbeat, Duration::from_secs(5));
        assert_eq!(c.node.allowed_origins, ["https://a", "http://localhost:*"]);
        assert!(matches!(c.node.backplane, BackplaneConfig::Redis { .. }));
        let _ = std::fs::remove_file(&file.0);
    }

    #[test]
    fn unknown_and_mistyped_file_keys_are_errors() {
        let mut file = tempfile();
        writeln!(file.1, "lisen = \"x\"\nheartbeat = [1]\n").unwrap();
        let errors = resolve_args(&["--config", &file.0]).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{text:?}");
        assert!(
            text.iter()
                .any(|e| e.contains("lisen") && e.contains("unknown key"))
        );
        assert!(text.iter().any(|e| e.contains("--heartbeat")));
        let _ = std::fs::remove_file(&file.0);
    }

    #[test]
    fn namespaces_and_auth_come_from_their_tables() {
        let mut file = tempfile();
        writeln!(
            file.1,
            "[auth]\njwt_secret = \"s3cret\"\n\n[namespaces.chat]\nhistory_size = 100\nhistory_ttl = 60\npresence = true\njoin_leave = true\nclient_publish = false\n"
        )
        .unwrap();
        let c = resolve_args(&["--config", &file.0]).unwrap();
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
        let c = resolve_args(&["--config", &file.0, "--allow-anonymous", "yes"]).unwrap();
        assert!(c.node.auth.allow_anonymous);
        let _ = std::fs::remove_file(&file.0);
    }

    #[test]
    fn bad_namespace_and_auth_keys_are_each_reported() {
        let mut file = tempfile();
        writeln!(
            file.1,
            "[auth]\nsecret = \"x\"\n\n[namespaces.chat]\nhistory_size = -1\npresense = true\nhistory_ttl = \"long\"\n"
        )
        .unwrap();
        let errors = resolve_args(&[
            "--config",
            &file.0,
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
        let _ = std::fs::remove_file(&file.0);
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
        let mut file = tempfile();
        writeln!(
            file.1,
            "demo = true\n[namespaces.demo]\nhistory_size = 7\n[namespaces.chat]\npresence = true\n"
        )
        .unwrap();
        let c = resolve_args(&["--config", &file.0]).unwrap();
        assert!(c.node.demo);
        let demo = c.node.namespaces.of("demo:lobby");
        assert_eq!(demo.history_size, 7, "a configured demo namespace wins");
        assert!(!demo.presence);
        assert!(c.node.namespaces.of("chat:x").presence);
        let _ = std::fs::remove_file(&file.0);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let errors = resolve_args(&["--config", "/nonexistent/switchboard.toml"]).unwrap_err();
        assert_eq!(errors[0].setting, "--config");
    }

    #[test]
    fn values_parse_the_same_from_every_source() {
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("abc").is_err());
        assert!(parse_origins("https://a,*").is_ok());
        assert!(parse_origins("https://*.a").is_err());
        assert!(parse_node_id("node a").is_err());
    }

    fn tempfile() -> (String, std::fs::File) {
        let path = std::env::temp_dir().join(format!("switchboard-config-{}.toml", ulid_like()));
        let file = std::fs::File::create(&path).unwrap();
        (path.display().to_string(), file)
    }

    fn ulid_like() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }
}
