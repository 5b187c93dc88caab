//! A node's settings, already validated: what the binary's configuration
//! table (flags, environment, file) produces and [`crate::Node::bind`] takes.

use std::net::SocketAddr;
use std::time::Duration;

use crate::namespace::Namespaces;

/// Everything a node needs to know, already validated.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node id, in welcomes, envelopes and the cluster list.
    pub node_id: String,
    /// Public listener: `/ws`, `/healthz`, `/`.
    pub listen: SocketAddr,
    /// Internal listener: `/metrics`, `/healthz`, `/readyz`, `/api/v1/*`.
    pub internal_listen: SocketAddr,
    /// Which backplane.
    pub backplane: BackplaneConfig,
    /// When set, the server API needs `Authorization: apikey <key>`.
    pub api_key: Option<String>,
    /// Allowed browser origins (`*` suffix wildcards); empty means any.
    pub allowed_origins: Vec<String>,
    /// How long a drain may take before the process exits anyway.
    pub drain_timeout: Duration,
    /// Interval between server pings; two without a sign of life close the connection.
    pub heartbeat: Duration,
    /// Largest client message (and API body), in bytes.
    pub max_message_size: usize,
    /// Frames queued per connection before it is dropped as a slow consumer.
    pub outbound_queue: usize,
    /// Listen backlog of both listeners (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Per-namespace settings.
    pub namespaces: Namespaces,
    /// JWT authentication.
    pub auth: AuthConfig,
    /// Limits on what clients may do.
    pub limits: Limits,
    /// Whether the public listener serves the demo page (`/`, `/demo.js`) and `/status`.
    pub demo: bool,
    /// Envelopes waiting per fan-out lane before the backplane's reader is
    /// held back (the backlog then waits in Redis).
    pub fanout_lane_capacity: usize,
    /// Apps served over the Pusher protocol (`/app/{key}`, `/apps/{id}/...`);
    /// none: the Pusher endpoint is off.
    pub pusher: Vec<PusherApp>,
}

/// One app of the Pusher-compatible endpoint (docs/PUSHER.md).
#[derive(Clone, PartialEq)]
pub struct PusherApp {
    /// App id: the `/apps/{id}` of the HTTP API, and the namespace of the
    /// app's channels (Pusher channel `X` is the Switchboard channel `id:X`).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`).
    pub key: String,
    /// Signs channel authorizations, user sign-ins, API requests and webhooks.
    pub secret: String,
    /// Whether clients may send `client-*` events on private and presence channels.
    pub client_events: bool,
    /// Where webhooks are posted (`http://` only); none: no webhooks.
    pub webhook_url: Option<String>,
    /// Which webhook events are sent (`channel_occupied`, `member_added`, ...).
    pub webhook_events: Vec<String>,
    /// This app's own limits, apart from every other app's.
    pub limits: PusherLimits,
}

/// One Pusher app's limits: what its clients may use, counted apart from
/// every other app's (the node's own limits apply on top).
#[derive(Clone, Debug, PartialEq)]
pub struct PusherLimits {
    /// Open connections of the app per node; beyond, new ones are closed
    /// with 4004 (none: only the node's `--max-connections`).
    pub max_connections: Option<usize>,
    /// Client events per second per connection (beyond: `pusher:error` 4301).
    pub client_event_rate: f64,
    /// Users in one presence channel (beyond: the subscription is refused).
    pub max_presence_members: usize,
}

impl Default for PusherLimits {
    /// Pusher's own limits: 10 client events per second, 100 presence members.
    fn default() -> Self {
        PusherLimits {
            max_connections: None,
            client_event_rate: 10.0,
            max_presence_members: 100,
        }
    }
}

/// Shows everything but the secret (and the webhook URL, which may carry
/// credentials), so a logged configuration leaks neither.
impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("client_events", &self.client_events)
            .field(
                "webhook_url",
                &self.webhook_url.as_ref().map(|_| "<redacted>"),
            )
            .field("webhook_events", &self.webhook_events)
            .field("limits", &self.limits)
            .finish()
    }
}

/// JWT authentication settings.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// HS256 shared secret.
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA for RS256, EC P-256 for ES256), already read from its file.
    pub jwt_public_key: Option<Vec<u8>>,
    /// Whether connections without a token are let in as anonymous.
    pub allow_anonymous: bool,
}

/// Limits on what clients may do; each counts in `switchboard_limit_rejections_total`.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections per node.
    pub max_connections: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Commands per second per connection (token bucket refill rate).
    pub client_rate: f64,
    /// Token bucket size for commands per connection.
    pub client_burst: u32,
    /// New connections per second per client IP (burst twice that).
    pub ip_connect_rate: f64,
    /// Longest channel name, in bytes (at most 255).
    pub max_channel_length: usize,
    /// Connections per client IP on the public listener still in their HTTP
    /// phase (request head or upgrade not done); beyond, HTTP 429.
    pub max_pending_per_ip: usize,
}

/// Which backplane a node runs on.
#[derive(Clone, Debug)]
pub enum BackplaneConfig {
    /// In-process: one node alone.
    Memory,
    /// Redis pub/sub.
    Redis {
        /// `redis://...`
        url: String,
        /// Prefix of every key and pub/sub channel.
        prefix: String,
        /// Node-registry heartbeat interval.
        registry_interval: Duration,
    },
}
