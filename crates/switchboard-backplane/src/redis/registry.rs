//! The node registry in Redis: a sorted set of node ids scored by their last
//! heartbeat, and one JSON entry per node with a TTL.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{COMMAND_TIMEOUT, Keys};
use crate::envelope::now_ms;
use crate::{BackplaneError, NodeInfo, StatsSource};

/// A node missing this many heartbeats drops out of the cluster list.
const MISSED_BEATS: u32 = 3;

#[derive(Clone)]
pub(super) struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_redis::Pool,
    keys: Keys,
    node_id: String,
    interval: Duration,
    stats: StatsSource,
    started_at: u64,
}

impl Registry {
    pub(super) fn new(
        pool: deadpool_redis::Pool,
        keys: Keys,
        node_id: String,
        interval: Duration,
        stats: StatsSource,
        started_at: u64,
    ) -> Self {
        Registry {
            inner: Arc::new(Inner {
                pool,
                keys,
                node_id,
                interval,
                stats,
                started_at,
            }),
        }
    }

    fn ttl(&self) -> Duration {
        self.inner.interval * MISSED_BEATS
    }

    /// Heartbeats until cancelled.
    pub(super) async fn run(self, token: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.beat().await {
                metrics::counter!("switchboard_backplane_errors_total", "op" => "registry")
                    .increment(1);
                tracing::debug!(error = %e, "node registry heartbeat failed");
            }
        }
    }

    async fn beat(&self) -> Result<(), BackplaneError> {
        let inner = &self.inner;
        let now = now_ms();
        let stats = (inner.stats)();
        let info = NodeInfo {
            id: inner.node_id.clone(),
            connections: stats.connections,
            subscriptions: stats.subscriptions,
            started_at: inner.started_at,
            last_seen: now,
        };
        let json =
            serde_json::to_string(&info).map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
        let ttl_ms = self.ttl().as_millis() as u64;
        self.run_command(|mut pipe| {
            pipe.cmd("ZADD")
                .arg(inner.keys.nodes())
                .arg(now)
                .arg(&inner.node_id)
                .ignore()
                .cmd("SET")
                .arg(inner.keys.node_info(&inner.node_id))
                .arg(&json)
                .arg("PX")
                .arg(ttl_ms.max(1))
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(inner.keys.nodes())
                .arg("-inf")
                .arg(format!("({}", now.saturating_sub(ttl_ms)))
                .ignore();
            std::mem::take(&mut pipe)
        })
        .await
        .map(|_: ()| ())
    }

    /// The ids of every node whose heartbeat is younger than the TTL.
    pub(super) async fn live_ids(&self) -> Result<Vec<String>, BackplaneError> {
        let since = now_ms().saturating_sub(self.ttl().as_millis() as u64);
        let mut conn = self.connection().await?;
        let ids: Vec<String> = tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.inner.keys.nodes())
                .arg(since)
                .arg("+inf")
                .query_async(&mut *conn),
        )
        .await
        .map_err(|_| BackplaneError::Unavailable("redis timed out".into()))??;
        Ok(ids)
    }

    /// Every node whose heartbeat is younger than the TTL.
    pub(super) async fn nodes(&self) -> Result<Vec<NodeInfo>, BackplaneError> {
        let inner = &self.inner;
        let ids = self.live_ids().await?;
        let mut conn = self.connection().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| inner.keys.node_info(id)).collect();
        let entries: Vec<Option<String>> = tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("MGET").arg(&keys).query_async(&mut *conn),
        )
        .await
        .map_err(|_| BackplaneError::Unavailable("redis timed out".into()))??;
        let mut nodes: Vec<NodeInfo> = entries
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Removes this node's entry (best effort: it expires anyway).
    pub(super) async fn deregister(&self) {
        let inner = &self.inner;
        let result = self
            .run_command(|mut pipe| {
                pipe.cmd("ZREM")
                    .arg(inner.keys.nodes())
                    .arg(&inner.node_id)
                    .ignore()
                    .cmd("DEL")
                    .arg(inner.keys.node_info(&inner.node_id))
                    .ignore();
                std::mem::take(&mut pipe)
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not deregister the node; its entry expires by itself");
        }
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, BackplaneError> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| BackplaneError::Unavailable(e.to_string()))
    }

    async fn run_command(
        &self,
        build: impl FnOnce(redis::Pipeline) -> redis::Pipeline,
    ) -> Result<(), BackplaneError> {
        let mut conn = self.connection().await?;
        let pipe = build(redis::pipe());
        tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut *conn))
            .await
            .map_err(|_| BackplaneError::Unavailable("redis timed out".into()))??;
        Ok(())
    }
}
