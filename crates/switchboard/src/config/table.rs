//! The settings table: one row per setting, and the only place a setting's
//! flag, environment variable, TOML key, default, parser and help are written.
//!
//! From it come the command line (`--help` included), the TOML keys the file
//! may have, the names in error reports, and the check that the table of
//! `docs/CONFIGURATION.md` says the same.
//!
//! A new setting is a `Setting` here, its place in [`ALL`], one read in
//! `config::read` (which puts the value where the node takes it), and its row
//! in `docs/CONFIGURATION.md`; the unit tests fail until all four are there.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Arg, Command};

use super::LogFormat;
use super::parse;

/// A setting's row, without its parser (the same for every value type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// The command-line flag, `--listen`; also the setting's name in error reports.
    pub flag: &'static str,
    /// The environment variable, `SWITCHBOARD_LISTEN`.
    pub env: &'static str,
    /// The key in the TOML file (`auth.jwt_secret` is `jwt_secret` in `[auth]`);
    /// `None` for a setting the file cannot hold.
    pub toml: Option<&'static str>,
    /// What `--help` shows as the value (`ADDR`).
    pub value_name: &'static str,
    /// What applies when no source gives a value.
    pub default: Fallback,
    /// How the value is shown and written in the file.
    pub kind: Kind,
    /// The `--help` line (the default is added to it).
    pub help: &'static str,
}

/// What applies when no source gives a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// This text, parsed like a value from any source.
    Value(&'static str),
    /// Nothing: the feature is off or open; the text says what that means.
    Unset(&'static str),
    /// Worked out at start-up from other things; the text says how.
    Derived(&'static str),
}

/// How a value is shown and written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Shown in `--help` when set in the environment.
    Plain,
    /// Never shown (a secret or a URL with a password).
    Secret,
    /// Comma-separated in a flag or variable, an array of strings in the file.
    List,
}

/// A row and the parser of its value.
pub struct Setting<T> {
    /// Names, default and help.
    pub row: Row,
    /// Turns the text from any source (or the default) into the value.
    pub parse: fn(&str) -> Result<T, String>,
}

impl Row {
    /// The clap argument id: the flag without its dashes.
    pub fn id(&self) -> &'static str {
        self.flag.trim_start_matches('-')
    }

    /// The `--help` text: the row's help, where the file keeps it when that is
    /// not the top level, and the default.
    fn help_text(&self) -> String {
        let mut help = self.help.to_owned();
        if let Some(key) = self.toml.filter(|k| k.contains('.')) {
            help.push_str(&format!(" (TOML: {key})"));
        }
        let default = match self.default {
            Fallback::Value(v) => v,
            Fallback::Unset(text) | Fallback::Derived(text) => text,
        };
        help.push_str(&format!(" [default: {}]", default.replace('`', "")));
        help
    }

    /// This row as a clap argument: a flag that also reads its variable.
    fn arg(&self) -> Arg {
        Arg::new(self.id())
            .long(self.id())
            .env(self.env)
            .value_name(self.value_name)
            .hide_env_values(self.kind == Kind::Secret)
            .help(self.help_text())
    }
}

/// The command line: every row a flag with its variable; clap handles `--help`.
pub fn command() -> Command {
    Command::new("switchboard")
        .version(env!("CARGO_PKG_VERSION"))
        .allow_negative_numbers(true)
        .about("A real-time WebSocket gateway node. Runs alone on an in-process backplane, or as one node of a cluster on Redis.")
        .after_help("Every setting can also be given as an environment variable (shown) or as a key of the TOML file named by --config; flags win over the environment, which wins over the file.\nExit codes: 0 after a drain, 64 on a bad configuration (every bad setting is named), 1 when the node cannot start.")
        .args(ALL.iter().map(|row| row.arg()))
}

/// Every row, in the order of the table in `docs/CONFIGURATION.md`.
pub const ALL: &[&Row] = &[
    &CONFIG.row,
    &LISTEN.row,
    &INTERNAL_LISTEN.row,
    &REDIS_URL.row,
    &NODE_ID.row,
    &API_KEY.row,
    &ALLOWED_ORIGINS.row,
    &DRAIN_TIMEOUT.row,
    &LOG_FORMAT.row,
    &LOG_LEVEL.row,
    &HEARTBEAT.row,
    &MAX_MESSAGE_SIZE.row,
    &OUTBOUND_QUEUE.row,
    &FANOUT_LANE_CAPACITY.row,
    &REDIS_PREFIX.row,
    &REGISTRY_INTERVAL.row,
    &JWT_SECRET.row,
    &JWT_PUBLIC_KEY.row,
    &ALLOW_ANONYMOUS.row,
    &MAX_CONNECTIONS.row,
    &MAX_SUBSCRIPTIONS.row,
    &CLIENT_RATE.row,
    &CLIENT_BURST.row,
    &IP_CONNECT_RATE.row,
    &MAX_PENDING_PER_IP.row,
    &LISTEN_BACKLOG.row,
    &MAX_CHANNEL_LENGTH.row,
    &DEMO.row,
    &PUSHER_APP_ID.row,
    &PUSHER_KEY.row,
    &PUSHER_SECRET.row,
];

pub const CONFIG: Setting<String> = Setting {
    row: Row {
        flag: "--config",
        env: "SWITCHBOARD_CONFIG",
        toml: None,
        value_name: "FILE",
        default: Fallback::Unset("none"),
        kind: Kind::Plain,
        help: "TOML file with settings (keys as in the table of docs/CONFIGURATION.md).",
    },
    parse: parse::text,
};

pub const LISTEN: Setting<SocketAddr> = Setting {
    row: Row {
        flag: "--listen",
        env: "SWITCHBOARD_LISTEN",
        toml: Some("listen"),
        value_name: "ADDR",
        default: Fallback::Value("0.0.0.0:8080"),
        kind: Kind::Plain,
        help: "Public listener: /ws, /healthz.",
    },
    parse: parse::addr,
};

pub const INTERNAL_LISTEN: Setting<SocketAddr> = Setting {
    row: Row {
        flag: "--internal-listen",
        env: "SWITCHBOARD_INTERNAL_LISTEN",
        toml: Some("internal_listen"),
        value_name: "ADDR",
        default: Fallback::Value("127.0.0.1:9090"),
        kind: Kind::Plain,
        help: "Internal listener: /metrics, /healthz, /readyz, /api/v1/*. Keep it private.",
    },
    parse: parse::addr,
};

pub const REDIS_URL: Setting<String> = Setting {
    row: Row {
        flag: "--redis-url",
        env: "SWITCHBOARD_REDIS_URL",
        toml: Some("redis_url"),
        value_name: "URL",
        default: Fallback::Unset("none"),
        kind: Kind::Secret,
        help: "Redis URL of the cluster backplane; without it the node runs alone on an in-process backplane.",
    },
    parse: parse::redis_url,
};

pub const NODE_ID: Setting<String> = Setting {
    row: Row {
        flag: "--node-id",
        env: "SWITCHBOARD_NODE_ID",
        toml: Some("node_id"),
        value_name: "ID",
        default: Fallback::Derived("the hostname"),
        kind: Kind::Plain,
        help: "Node id, unique in the cluster.",
    },
    parse: parse::node_id,
};

pub const API_KEY: Setting<String> = Setting {
    row: Row {
        flag: "--api-key",
        env: "SWITCHBOARD_API_KEY",
        toml: Some("api_key"),
        value_name: "KEY",
        default: Fallback::Unset("none"),
        kind: Kind::Secret,
        help: "Key the server API requires (`Authorization: apikey KEY`); without it the API is open.",
    },
    parse: parse::text,
};

pub const ALLOWED_ORIGINS: Setting<Vec<String>> = Setting {
    row: Row {
        flag: "--allowed-origins",
        env: "SWITCHBOARD_ALLOWED_ORIGINS",
        toml: Some("allowed_origins"),
        value_name: "LIST",
        default: Fallback::Unset("none (any origin)"),
        kind: Kind::List,
        help: "Browser origins allowed to connect, comma-separated; `*` as a suffix is a wildcard.",
    },
    parse: parse::origins,
};

pub const DRAIN_TIMEOUT: Setting<Duration> = Setting {
    row: Row {
        flag: "--drain-timeout",
        env: "SWITCHBOARD_DRAIN_TIMEOUT",
        toml: Some("drain_timeout"),
        value_name: "SECONDS",
        default: Fallback::Value("30"),
        kind: Kind::Plain,
        help: "Seconds a drain (SIGTERM/SIGINT) may take before the process exits.",
    },
    parse: parse::seconds,
};

pub const LOG_FORMAT: Setting<LogFormat> = Setting {
    row: Row {
        flag: "--log-format",
        env: "SWITCHBOARD_LOG_FORMAT",
        toml: Some("log_format"),
        value_name: "FORMAT",
        default: Fallback::Value("text"),
        kind: Kind::Plain,
        help: "Log format on stderr: text or json.",
    },
    parse: parse::log_format,
};

pub const LOG_LEVEL: Setting<String> = Setting {
    row: Row {
        flag: "--log-level",
        env: "SWITCHBOARD_LOG_LEVEL",
        toml: Some("log_level"),
        value_name: "FILTER",
        default: Fallback::Value("info"),
        kind: Kind::Plain,
        help: "Log filter, e.g. `info` or `info,switchboard_gateway=debug`.",
    },
    parse: parse::log_level,
};

pub const HEARTBEAT: Setting<Duration> = Setting {
    row: Row {
        flag: "--heartbeat",
        env: "SWITCHBOARD_HEARTBEAT",
        toml: Some("heartbeat"),
        value_name: "SECONDS",
        default: Fallback::Value("25"),
        kind: Kind::Plain,
        help: "Seconds between server pings; two intervals without a sign of life close a connection.",
    },
    parse: parse::seconds,
};

pub const MAX_MESSAGE_SIZE: Setting<usize> = Setting {
    row: Row {
        flag: "--max-message-size",
        env: "SWITCHBOARD_MAX_MESSAGE_SIZE",
        toml: Some("max_message_size"),
        value_name: "BYTES",
        default: Fallback::Value("65536"),
        kind: Kind::Plain,
        help: "Largest client message and API body, in bytes; larger messages close the connection with 1009.",
    },
    parse: |s| parse::count(s, 128, 64 << 20),
};

pub const OUTBOUND_QUEUE: Setting<usize> = Setting {
    row: Row {
        flag: "--outbound-queue",
        env: "SWITCHBOARD_OUTBOUND_QUEUE",
        toml: Some("outbound_queue"),
        value_name: "FRAMES",
        default: Fallback::Value("1024"),
        kind: Kind::Plain,
        help: "Frames queued per connection; a connection whose queue overflows is closed with 4008.",
    },
    parse: |s| parse::count(s, 1, 1 << 20),
};

pub const FANOUT_LANE_CAPACITY: Setting<usize> = Setting {
    row: Row {
        flag: "--fanout-lane-capacity",
        env: "SWITCHBOARD_FANOUT_LANE_CAPACITY",
        toml: Some("fanout_lane_capacity"),
        value_name: "N",
        default: Fallback::Value("4096"),
        kind: Kind::Plain,
        help: "Envelopes waiting per fan-out lane; when a lane is full the node stops reading Redis until it has room (the backlog waits in Redis).",
    },
    parse: |s| parse::count(s, 1, 1 << 20),
};

pub const REDIS_PREFIX: Setting<String> = Setting {
    row: Row {
        flag: "--redis-prefix",
        env: "SWITCHBOARD_REDIS_PREFIX",
        toml: Some("redis_prefix"),
        value_name: "PREFIX",
        default: Fallback::Value("switchboard"),
        kind: Kind::Plain,
        help: "Prefix of every Redis key and pub/sub channel.",
    },
    parse: parse::prefix,
};

pub const REGISTRY_INTERVAL: Setting<Duration> = Setting {
    row: Row {
        flag: "--registry-interval",
        env: "SWITCHBOARD_REGISTRY_INTERVAL",
        toml: Some("registry_interval"),
        value_name: "SECONDS",
        default: Fallback::Value("2"),
        kind: Kind::Plain,
        help: "Seconds between node-registry heartbeats in Redis; a node silent for 3 drops out of the cluster list.",
    },
    parse: parse::seconds,
};

pub const JWT_SECRET: Setting<String> = Setting {
    row: Row {
        flag: "--jwt-secret",
        env: "SWITCHBOARD_JWT_SECRET",
        toml: Some("auth.jwt_secret"),
        value_name: "SECRET",
        default: Fallback::Unset("none"),
        kind: Kind::Secret,
        help: "Shared secret for HS256 tokens.",
    },
    parse: parse::text,
};

pub const JWT_PUBLIC_KEY: Setting<Vec<u8>> = Setting {
    row: Row {
        flag: "--jwt-public-key",
        env: "SWITCHBOARD_JWT_PUBLIC_KEY",
        toml: Some("auth.jwt_public_key"),
        value_name: "FILE",
        default: Fallback::Unset("none"),
        kind: Kind::Plain,
        help: "PEM public key file for RS256 or ES256 tokens, read at start-up.",
    },
    parse: parse::key_file,
};

pub const ALLOW_ANONYMOUS: Setting<bool> = Setting {
    row: Row {
        flag: "--allow-anonymous",
        env: "SWITCHBOARD_ALLOW_ANONYMOUS",
        toml: Some("auth.allow_anonymous"),
        value_name: "BOOL",
        default: Fallback::Derived("`true` without a JWT key, `false` with one"),
        kind: Kind::Plain,
        help: "Let connections without a token in as anonymous.",
    },
    parse: parse::boolean,
};

pub const MAX_CONNECTIONS: Setting<usize> = Setting {
    row: Row {
        flag: "--max-connections",
        env: "SWITCHBOARD_MAX_CONNECTIONS",
        toml: Some("max_connections"),
        value_name: "N",
        default: Fallback::Value("10000"),
        kind: Kind::Plain,
        help: "Open connections per node; beyond, upgrades get 503 and /readyz is 503.",
    },
    parse: |s| parse::count(s, 1, 10_000_000),
};

pub const MAX_SUBSCRIPTIONS: Setting<usize> = Setting {
    row: Row {
        flag: "--max-subscriptions",
        env: "SWITCHBOARD_MAX_SUBSCRIPTIONS",
        toml: Some("max_subscriptions"),
        value_name: "N",
        default: Fallback::Value("128"),
        kind: Kind::Plain,
        help: "Subscriptions per connection; beyond, `limit_exceeded`.",
    },
    parse: |s| parse::count(s, 1, 1_000_000),
};

pub const CLIENT_RATE: Setting<f64> = Setting {
    row: Row {
        flag: "--client-rate",
        env: "SWITCHBOARD_CLIENT_RATE",
        toml: Some("client_rate"),
        value_name: "PER_SECOND",
        default: Fallback::Value("100"),
        kind: Kind::Plain,
        help: "Commands per second per connection; beyond, `rate_limited`, and close 4029 on sustained abuse.",
    },
    parse: parse::rate,
};

pub const CLIENT_BURST: Setting<u32> = Setting {
    row: Row {
        flag: "--client-burst",
        env: "SWITCHBOARD_CLIENT_BURST",
        toml: Some("client_burst"),
        value_name: "N",
        default: Fallback::Value("200"),
        kind: Kind::Plain,
        help: "Burst of commands per connection above the rate.",
    },
    parse: |s| parse::count_u32(s, 1, 1_000_000),
};

pub const IP_CONNECT_RATE: Setting<f64> = Setting {
    row: Row {
        flag: "--ip-connect-rate",
        env: "SWITCHBOARD_IP_CONNECT_RATE",
        toml: Some("ip_connect_rate"),
        value_name: "PER_SECOND",
        default: Fallback::Value("50"),
        kind: Kind::Plain,
        help: "New connections per second per client IP; beyond, HTTP 429.",
    },
    parse: parse::rate,
};

pub const MAX_PENDING_PER_IP: Setting<usize> = Setting {
    row: Row {
        flag: "--max-pending-per-ip",
        env: "SWITCHBOARD_MAX_PENDING_PER_IP",
        toml: Some("max_pending_per_ip"),
        value_name: "N",
        default: Fallback::Value("1024"),
        kind: Kind::Plain,
        help: "Connections per client IP on the public listener still in their HTTP phase (request head not yet read, or upgrade not yet done); beyond, HTTP 429 at once.",
    },
    parse: |s| parse::count(s, 1, 1_000_000),
};

pub const LISTEN_BACKLOG: Setting<u32> = Setting {
    row: Row {
        flag: "--listen-backlog",
        env: "SWITCHBOARD_LISTEN_BACKLOG",
        toml: Some("listen_backlog"),
        value_name: "N",
        default: Fallback::Value("4096"),
        kind: Kind::Plain,
        help: "Listen backlog of both listeners: connections waiting to be accepted, e.g. during a reconnect storm (capped by the kernel's net.core.somaxconn).",
    },
    parse: |s| parse::count_u32(s, 1, 1 << 20),
};

pub const MAX_CHANNEL_LENGTH: Setting<usize> = Setting {
    row: Row {
        flag: "--max-channel-length",
        env: "SWITCHBOARD_MAX_CHANNEL_LENGTH",
        toml: Some("max_channel_length"),
        value_name: "BYTES",
        default: Fallback::Value("255"),
        kind: Kind::Plain,
        help: "Longest channel name in bytes, at most 255.",
    },
    parse: |s| parse::count(s, 1, switchboard_gateway::policy::channel::MAX_CHANNEL_LEN),
};

pub const DEMO: Setting<bool> = Setting {
    row: Row {
        flag: "--demo",
        env: "SWITCHBOARD_DEMO",
        toml: Some("demo"),
        value_name: "BOOL",
        default: Fallback::Value("true"),
        kind: Kind::Plain,
        help: "Serve the demo page at / (with its /status); /client.js is served either way.",
    },
    parse: parse::boolean,
};

// One Pusher app by flags or environment. The file holds its apps as
// `[[pusher.apps]]` tables instead (config/pusher.rs), which add to this one
// rather than stand behind it, so these rows have no TOML key.

pub const PUSHER_APP_ID: Setting<String> = Setting {
    row: Row {
        flag: "--pusher-app-id",
        env: "SWITCHBOARD_PUSHER_APP_ID",
        toml: None,
        value_name: "ID",
        default: Fallback::Unset("none: endpoint off"),
        kind: Kind::Plain,
        help: "Id of a Pusher app (HTTP API at /apps/ID/...); its key and secret must be set too, or none of the three. More apps: [[pusher.apps]] in the file.",
    },
    parse: parse::pusher_app_id,
};

pub const PUSHER_KEY: Setting<String> = Setting {
    row: Row {
        flag: "--pusher-key",
        env: "SWITCHBOARD_PUSHER_KEY",
        toml: None,
        value_name: "KEY",
        default: Fallback::Unset("none"),
        kind: Kind::Plain,
        help: "Public key of that Pusher app: clients connect to /app/KEY.",
    },
    parse: parse::pusher_key,
};

pub const PUSHER_SECRET: Setting<String> = Setting {
    row: Row {
        flag: "--pusher-secret",
        env: "SWITCHBOARD_PUSHER_SECRET",
        toml: None,
        value_name: "SECRET",
        default: Fallback::Unset("none"),
        kind: Kind::Secret,
        help: "Secret of that Pusher app.",
    },
    parse: parse::secret,
};
