//! The Redis backplane: protobuf envelopes over Redis pub/sub.
//!
//! - Publishes and registry commands go through a small deadpool-redis pool of
//!   multiplexed connections (concurrent publishes pipeline on them).
//! - One dedicated pub/sub connection receives (`subscriber.rs`, read with the
//!   node's own RESP reader in `resp.rs`, so a full fan-out lane holds reading
//!   back instead of queueing without bound); it subscribes by interest and,
//!   when it breaks, reconnects with backoff and jitter, resubscribes every
//!   channel in batches, and marks the reconnect in every lane. Publishes are
//!   refused while it is down or resubscribing.
//! - Each node claims its id and registers itself with a heartbeat
//!   (`registry.rs`); the heartbeat also refreshes the node's presence entries
//!   (`presence.rs`).
//!
//! Every key and pub/sub channel starts with the configured prefix (`keys.rs`);
//! every per-channel name (pub/sub channel, history list, position hash,
//! presence set) carries the channel in braces, a Redis Cluster hash tag, so
//! they would share one slot. The backplane itself runs on one Redis server.
//! The layout is docs/NODE-CONTRACT.md, "Redis layout".

mod keys;
mod presence;
mod presence_scripts;
mod registry;
mod resp;
mod scripts;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::envelope::{Kind, now_ms};
use crate::history::new_epoch;
use crate::{
    BackplaneError, Departure, Envelope, HistoryPage, HistoryPolicy, Inbox, Joined, Left, NodeInfo,
    Position, PresenceMember, Since, StatsSource, Topic,
};
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
    presence: Arc<presence::Presence>,
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
        // A fresh id per process: tells this process from an earlier (or a
        // duplicate) one with the same node id.
        let incarnation = ulid::Ulid::new().to_string();
        let presence = Arc::new(presence::Presence::new(
            pool.clone(),
            keys.clone(),
            config.node_id.clone(),
            incarnation.clone(),
            registry::Registry::ttl(config.registry_interval),
        ));
        let registry = registry::Registry::new(
            pool.clone(),
            keys.clone(),
            config.node_id.clone(),
            incarnation,
            config.registry_interval,
            stats,
            now_ms(),
            presence.clone(),
        );
        tasks.spawn(registry.clone().run(token.clone()));
        tasks.close();
        Ok(RedisBackplane {
            keys,
            pool,
            subscriber,
            registry,
            presence,
            token,
            tasks,
        })
    }

    pub(crate) async fn publish(
        &self,
        envelope: &Envelope,
        history: Option<HistoryPolicy>,
    ) -> Result<Option<Position>, BackplaneError> {
        let target = envelope.target_kind();
        let channel = match target {
            Some(Kind::Channel(c)) => self.keys.channel(c),
            Some(Kind::User(u)) => self.keys.user(u),
            // A connection can be on any node: every node receives it and
            // delivers it if the connection is its own.
            Some(Kind::Conn(_) | Kind::AllNodes(_)) => self.keys.all().to_owned(),
            None => {
                return Err(BackplaneError::Unavailable(
                    "envelope without a target".into(),
                ));
            }
        };
        // Acknowledging needs this node's own pub/sub link: while it is down or
        // resubscribing, a publish could reach nobody here and the node could
        // not tell. Refused at once instead, as unavailable.
        if !self.subscriber.is_up() {
            metrics::counter!("switchboard_backplane_errors_total", "op" => "publish_link_down")
                .increment(1);
            return Err(BackplaneError::Unavailable(
                "redis pub/sub link is down or resubscribing; not published".into(),
            ));
        }
        let body = envelope.encode_to_vec();
        let result = async {
            let mut conn = self.connection().await?;
            match (history, target) {
                (Some(policy), Some(Kind::Channel(c))) => {
                    let (offset, epoch): (u64, String) = scripts::PUBLISH
                        .key(self.keys.meta(c))
                        .key(self.keys.history(c))
                        .arg(&channel)
                        .arg(body)
                        .arg(policy.size.max(1))
                        .arg(policy.ttl.as_secs().max(1))
                        .arg(new_epoch())
                        .invoke_async(&mut *conn)
                        .await?;
                    Ok(Some(Position { epoch, offset }))
                }
                _ => {
                    let _receivers: i64 = redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(body)
                        .query_async(&mut *conn)
                        .await?;
                    Ok(None)
                }
            }
        };
        let result = self.timed("publish", result).await;
        if result.is_ok() {
            metrics::counter!("switchboard_backplane_published_total").increment(1);
        }
        result
    }

    pub(crate) async fn history(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
    ) -> Result<HistoryPage, BackplaneError> {
        let after: i64 = match since {
            Since::All => -1,
            Since::Nothing => -2,
            Since::After(n) => i64::try_from(n).unwrap_or(i64::MAX),
        };
        let read = async {
            let mut conn = self.connection().await?;
            let (epoch, offset, first, raw): (String, u64, i64, Vec<Vec<u8>>) = scripts::READ
                .key(self.keys.meta(channel))
                .key(self.keys.history(channel))
                .arg(after)
                .arg(limit.max(1))
                .invoke_async(&mut *conn)
                .await?;
            let mut messages = Vec::with_capacity(raw.len());
            for bytes in raw {
                match Envelope::decode(bytes::Bytes::from(bytes)) {
                    Ok(e) => messages.push(e),
                    Err(e) => {
                        metrics::counter!("switchboard_backplane_errors_total", "op" => "decode")
                            .increment(1);
                        return Err(BackplaneError::Unavailable(format!(
                            "undecodable history entry: {e}"
                        )));
                    }
                }
            }
            Ok(HistoryPage {
                epoch,
                offset,
                first: first.max(0) as u64,
                messages,
            })
        };
        self.timed("history", read).await
    }

    /// Joins; `decide_user`: whether to find out if the user was absent
    /// (a pass over the channel's members in Redis).
    pub(crate) async fn presence_join(
        &self,
        channel: &str,
        member: &PresenceMember,
        decide_user: bool,
    ) -> Result<Joined, BackplaneError> {
        self.timed("presence", self.presence.join(channel, member, decide_user))
            .await
    }

    /// Leaves; `decide_user` as for [`RedisBackplane::presence_join`].
    pub(crate) async fn presence_leave(
        &self,
        channel: &str,
        conn_id: &str,
        decide_user: bool,
    ) -> Result<Option<Left>, BackplaneError> {
        self.timed(
            "presence",
            self.presence.leave(channel, conn_id, decide_user),
        )
        .await
    }

    /// Every live member (see `presence.rs` for what "live" means).
    pub(crate) async fn presence(
        &self,
        channel: &str,
    ) -> Result<Vec<PresenceMember>, BackplaneError> {
        let read = self
            .presence
            .members(channel, |ids| self.registry.incarnations(ids));
        self.timed("presence", read).await
    }

    pub(crate) async fn presence_counts(
        &self,
        channel: &str,
    ) -> Result<(u64, u64), BackplaneError> {
        let read = self
            .presence
            .counts(channel, |ids| self.registry.incarnations(ids));
        self.timed("presence", read).await
    }

    pub(crate) async fn presence_channels(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, u64, u64)>, BackplaneError> {
        let read = self
            .presence
            .channels(prefix, |ids| self.registry.incarnations(ids));
        self.timed("presence", read).await
    }

    pub(crate) fn take_departures(&self) -> Option<tokio::sync::mpsc::Receiver<Departure>> {
        self.presence.take_departures()
    }

    /// Waits for the outcome of this node's first claim of its id (see
    /// `registry.rs`): an error when another live node holds it.
    ///
    /// Cancel-safe.
    pub async fn claim_node_id(&self) -> Result<(), BackplaneError> {
        self.registry.claimed().await
    }

    /// Resolves once another live node is found holding this node's id while
    /// it runs; its registry heartbeat and presence refresh have stopped then.
    ///
    /// Cancel-safe.
    pub async fn node_id_lost(&self) -> BackplaneError {
        self.registry.lost().await
    }

    pub(crate) async fn subscribe(&self, topic: Topic<'_>) -> Result<(), BackplaneError> {
        self.subscriber.subscribe(self.topic_name(topic)).await
    }

    pub(crate) async fn unsubscribe(&self, topic: Topic<'_>) -> Result<(), BackplaneError> {
        self.subscriber.unsubscribe(self.topic_name(topic)).await
    }

    fn topic_name(&self, topic: Topic<'_>) -> String {
        match topic {
            Topic::Channel(c) => self.keys.channel(c),
            Topic::User(u) => self.keys.user(u),
        }
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, BackplaneError> {
        self.pool
            .get()
            .await
            .map_err(|e| BackplaneError::Unavailable(e.to_string()))
    }

    /// Runs a Redis operation with the command timeout; failures are counted and logged.
    async fn timed<T>(
        &self,
        op: &'static str,
        work: impl Future<Output = Result<T, BackplaneError>>,
    ) -> Result<T, BackplaneError> {
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(BackplaneError::Unavailable(format!("redis {op} timed out"))),
        };
        if let Err(e) = &result {
            metrics::counter!("switchboard_backplane_errors_total", "op" => op).increment(1);
            tracing::warn!(op, error = %e, "redis operation failed");
        }
        result
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
