//! The node's configuration: flags, then `SWITCHBOARD_*` environment
//! variables, then the TOML file named by `--config`, then defaults.
//!
//! Every setting is one row of [`table`]; [`source`] finds its text in the
//! first source that has it, and the row's parser turns the text into the
//! value, so a value means the same from every source. Every bad setting is
//! reported (with where it came from), and the node refuses to start on any
//! of them.

mod namespaces;
mod parse;
mod pusher;
mod source;
mod table;
#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod tests;

use clap::ArgMatches;

use switchboard_gateway::{AuthConfig, BackplaneConfig, Limits, NodeConfig};

use source::{Reader, Reported};
use table::*;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole, validated configuration. Its `Debug` shows every secret as
/// `<redacted>`.
pub struct Config {
    /// What the node runs with.
    pub node: NodeConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directives.
    pub log_level: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("node", &redacted(&self.node))
            .field("log_format", &self.log_format)
            .field("log_level", &self.log_level)
            .finish()
    }
}

/// A copy of `node` without its secrets: the API key, the JWT secret, the
/// Redis URL (which may hold a password) and the Pusher apps' secrets.
fn redacted(node: &NodeConfig) -> NodeConfig {
    const REDACTED: &str = "<redacted>";
    let mut node = node.clone();
    let secrets = node
        .pusher
        .iter_mut()
        .flat_map(|app| std::iter::once(&mut app.secret).chain(app.webhook_url.as_mut()));
    let redis_url = match &mut node.backplane {
        BackplaneConfig::Redis { url, .. } => Some(url),
        BackplaneConfig::Memory => None,
    };
    for secret in node
        .api_key
        .iter_mut()
        .chain(node.auth.jwt_secret.as_mut())
        .chain(redis_url)
        .chain(secrets)
    {
        *secret = REDACTED.to_owned();
    }
    node
}

/// One bad setting: which, from where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting, named as a flag (`--listen`) or a file key (`auth.secret`).
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

/// Parses the process's arguments and environment (clap handles `--help`).
pub fn load_from_process() -> Result<Config, Vec<ConfigError>> {
    resolve(&table::command().get_matches())
}

/// Resolves parsed arguments (flags and environment) plus the TOML file into a config.
pub fn resolve(matches: &ArgMatches) -> Result<Config, Vec<ConfigError>> {
    let mut r = Reader::new(matches);
    let config = read(&mut r);
    match config {
        Ok(config) if r.errors.is_empty() => Ok(config),
        _ => Err(r.errors),
    }
}

/// Reads every row (each bad value is recorded as it is read), then the
/// namespace tables, the Pusher apps and the file's unknown keys, and builds
/// the config if every value was good.
fn read(r: &mut Reader) -> Result<Config, Reported> {
    let listen = r.value(&LISTEN);
    let internal_listen = r.value(&INTERNAL_LISTEN);
    let redis_url = r.optional(&REDIS_URL);
    let node_id = r.optional(&NODE_ID);
    let api_key = r.optional(&API_KEY);
    let allowed_origins = r.optional(&ALLOWED_ORIGINS);
    let drain_timeout = r.value(&DRAIN_TIMEOUT);
    let log_format = r.value(&LOG_FORMAT);
    let log_level = r.value(&LOG_LEVEL);
    let heartbeat = r.value(&HEARTBEAT);
    let max_message_size = r.value(&MAX_MESSAGE_SIZE);
    let outbound_queue = r.value(&OUTBOUND_QUEUE);
    let redis_prefix = r.value(&REDIS_PREFIX);
    let registry_interval = r.value(&REGISTRY_INTERVAL);
    let jwt_secret = r.optional(&JWT_SECRET);
    let jwt_public_key = r.optional(&JWT_PUBLIC_KEY);
    let allow_anonymous = r.optional(&ALLOW_ANONYMOUS);
    let max_connections = r.value(&MAX_CONNECTIONS);
    let max_subscriptions = r.value(&MAX_SUBSCRIPTIONS);
    let client_rate = r.value(&CLIENT_RATE);
    let client_burst = r.value(&CLIENT_BURST);
    let ip_connect_rate = r.value(&IP_CONNECT_RATE);
    let max_pending_per_ip = r.value(&MAX_PENDING_PER_IP);
    let max_channel_length = r.value(&MAX_CHANNEL_LENGTH);
    let listen_backlog = r.value(&LISTEN_BACKLOG);
    let demo = r.value(&DEMO);
    let fanout_lane_capacity = r.value(&FANOUT_LANE_CAPACITY);
    let pusher_app = pusher::FlagApp {
        id: r.optional(&PUSHER_APP_ID),
        key: r.optional(&PUSHER_KEY),
        secret: r.optional(&PUSHER_SECRET),
    };
    let namespaces = namespaces::read(&r.file, matches!(demo, Ok(true)), &mut r.errors);
    let pusher = pusher::read(r, pusher_app);
    r.check_known_keys();

    // The two defaults the table derives rather than gives.
    let has_jwt_key = matches!(jwt_secret, Ok(Some(_))) || matches!(jwt_public_key, Ok(Some(_)));
    let allow_anonymous = allow_anonymous?.unwrap_or(!has_jwt_key);
    let node_id = node_id?.unwrap_or_else(default_node_id);

    let backplane = match redis_url? {
        None => BackplaneConfig::Memory,
        Some(url) => BackplaneConfig::Redis {
            url,
            prefix: redis_prefix?,
            registry_interval: registry_interval?,
        },
    };
    Ok(Config {
        node: NodeConfig {
            node_id,
            listen: listen?,
            internal_listen: internal_listen?,
            backplane,
            api_key: api_key?,
            allowed_origins: allowed_origins?.unwrap_or_default(),
            drain_timeout: drain_timeout?,
            heartbeat: heartbeat?,
            max_message_size: max_message_size?,
            outbound_queue: outbound_queue?,
            listen_backlog: listen_backlog?,
            namespaces,
            auth: AuthConfig {
                jwt_secret: jwt_secret?,
                jwt_public_key: jwt_public_key?,
                allow_anonymous,
            },
            limits: Limits {
                max_connections: max_connections?,
                max_subscriptions: max_subscriptions?,
                client_rate: client_rate?,
                client_burst: client_burst?,
                ip_connect_rate: ip_connect_rate?,
                max_channel_length: max_channel_length?,
                max_pending_per_ip: max_pending_per_ip?,
            },
            demo: demo?,
            fanout_lane_capacity: fanout_lane_capacity?,
            pusher,
        },
        log_format: log_format?,
        log_level: log_level?,
    })
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
