//! The Redis backplane: protobuf envelopes over Redis pub/sub.
//!
//! - Publishes and registry commands go through a small deadpool-redis pool of
//!   multiplexed connections (concurrent publishes pipeline on them).
//! - One dedicated pub/sub connection receives (`subscriber.rs`); it subscribes
//!   by interest and, when it breaks, reconnects with backoff and jitter and
//!   resubscribes every channel in batches.
//! - Each node registers itself with a heartbeat (`registry.rs`).
//!
//! Every key and pub/sub channel starts with the configured prefix; a client
//! channel's pub/sub name carries the channel in braces (a Redis Cluster hash
//! tag), so the channel's future history keys land on the same slot.

mod keys;
mod registry;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::envelope::{Kind, now_ms};
use crate::{BackplaneError, Envelope, Inbox, NodeInfo, StatsSource};
pub use keys::Keys;
use subscriber::Subscriber;

/// How long a single Redis command may take before the call fails as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections in the publish pool; one multiplexed connection already pipelines.
const POOL_SIZE: usize = 4;

/// Settings of the Redis backplane.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://` where the client supports it).
    pub url: String,
    /// Prefix of every key and pub/sub channel.
    pub prefix: String,
    /// This node's id.
    pub node_id: String,
    /// Interval between node-registry heartbeats; a node is dropped after 3.
    pub registry_interval: Duration,
    /// Interval between PINGs on the pub/sub connection, which find a
    /// connection that died silently.
    pub ping_interval: Duration,
}

impl RedisConfig {
    /// The PING interval a node uses unless told otherwise.
    pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(3);
}

/// A Redis pub/sub backplane (see the module docs).
pub struct RedisBackplane {
    keys: Keys,
    pool: deadpool_redis::Pool,
    subscriber: Arc<Subscriber>,
    registry: registry::Registry,
    token: CancellationToken,
    tasks: TaskTracker,
}

impl RedisBackplane {
    /// Validates the URL, builds the pool and starts the subscriber and registry
    /// tasks. It does not wait for Redis: until the subscriber connects,
    /// [`crate::Backplane::is_up`] is false and publishes fail as unavailable.
    pub fn start(
        config: RedisConfig,
        inbox: Inbox,
        stats: StatsSource,
    ) -> Result<Self, BackplaneError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| BackplaneError::Config(format!("redis url: {e}")))?;
        let mut pool_config = deadpool_redis::Config::from_url(config.url.clone());
        pool_config.pool = Some(PoolConfig {
            max_size: POOL_SIZE,
            timeouts: Timeouts {
                wait: Some(COMMAND_TIMEOUT),
                create: Some(COMMAND_TIMEOUT),
                recycle: Some(COMMAND_TIMEOUT),
            },
            ..PoolConfig::default()
        });
        let pool = pool_config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| BackplaneError::Config(format!("redis pool: {e}")))?;

        let keys = Keys::new(&config.prefix);
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        let subscriber = Arc::new(Subscriber::new(
            client,
            keys.clone(),
            config.node_id.clone(),
            inbox,
            config.ping_interval,
        ));
        tasks.spawn(subscriber.clone().run(token.clone()));
        let registry = registry::Registry::new(
            pool.clone(),
            keys.clone(),
            config.node_id.clone(),
            config.registry_interval,
            stats,
            now_ms(),
        );
        tasks.spawn(registry.clone().run(token.clone()));
        tasks.close();
        Ok(RedisBackplane {
            keys,
            pool,
            subscriber,
            registry,
            token,
            tasks,
        })
    }

    pub(crate) async fn publish(&self, envelope: &Envelope) -> Result<(), BackplaneError> {
        let channel = match envelope.target.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(Kind::Channel(c)) => self.keys.channel(c),
            // Users and connections can be on any node: until the node registry
            // routes them, every node receives them and delivers locally.
            Some(Kind::User(_) | Kind::Conn(_) | Kind::AllNodes(_)) => self.keys.all().to_owned(),
            None => {
                return Err(BackplaneError::Unavailable(
                    "envelope without a target".into(),
                ));
            }
        };
        let body = envelope.encode_to_vec();
        let result = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
            let _receivers: i64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(body)
                .query_async(&mut *conn)
                .await?;
            Ok::<_, BackplaneError>(())
        };
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, result).await {
            Ok(r) => r,
            Err(_) => Err(BackplaneError::Unavailable(
                "redis publish timed out".into(),
            )),
        };
        match &result {
            Ok(()) => metrics::counter!("switchboard_backplane_published_total").increment(1),
            Err(e) => {
                metrics::counter!("switchboard_backplane_errors_total", "op" => "publish")
                    .increment(1);
                tracing::warn!(error = %e, "redis publish failed");
            }
        }
        result
    }

    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        self.subscriber.subscribe(self.keys.channel(channel)).await
    }

    pub(crate) async fn unsubscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        self.subscriber
            .unsubscribe(self.keys.channel(channel))
            .await
    }

    pub(crate) fn is_up(&self) -> bool {
        self.subscriber.is_up()
    }

    pub(crate) fn connection_generation(&self) -> u64 {
        self.subscriber.generation()
    }

    /// PINGs the pub/sub connection has answered so far (a liveness figure for tests and diagnostics).
    pub fn pings_answered(&self) -> u64 {
        self.subscriber.pings()
    }

    pub(crate) async fn nodes(&self) -> Result<Vec<NodeInfo>, BackplaneError> {
        self.registry.nodes().await
    }

    pub(crate) async fn shutdown(&self) {
        self.token.cancel();
        self.tasks.wait().await;
        self.registry.deregister().await;
    }
}
