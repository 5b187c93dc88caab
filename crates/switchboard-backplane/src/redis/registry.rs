//! The node registry in Redis: a sorted set of node ids scored by their last
//! heartbeat, and one JSON entry per node id with a TTL.
//!
//! A node id is held by one process at a time. Each process has an
//! *incarnation* (a fresh id) written into its entry; a heartbeat rewrites the
//! entry only while it still carries this incarnation. At start a node
//! *claims* its id:
//!
//! - no entry: the id is free, take it;
//! - an entry whose heartbeat is older than [`CLAIM_WINDOW_BEATS`] intervals
//!   (read from the key's remaining TTL, so no clock is compared): its holder
//!   is dead (a pod restarted under the same hostname), take it over;
//! - otherwise wait until that many intervals have passed since its last
//!   heartbeat; if the entry did not change meanwhile, the holder is dead and
//!   the id is taken over (compare-and-set, so a heartbeat racing with the
//!   takeover wins); if it changed, another live process holds the id: the
//!   claim fails with [`BackplaneError::NodeIdInUse`].
//!
//! A heartbeat that finds another incarnation in the entry (this process was
//! presumed dead, or was started next to another one whose claim came first)
//! stops the registry and presence of this process and reports the conflict
//! through [`Registry::lost`], so the node can stop loudly.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::presence::Presence;
use super::{COMMAND_TIMEOUT, Keys};
use crate::envelope::now_ms;
use crate::{BackplaneError, NodeInfo, StatsSource};

/// A node missing this many heartbeats drops out of the cluster list.
const MISSED_BEATS: u32 = 3;
/// Heartbeat intervals without a beat after which a holder of the id counts as dead.
const CLAIM_WINDOW_BEATS: u32 = 2;

/// Writes the heartbeat entry unless another incarnation holds it.
///
/// KEYS: the node's entry. ARGV: entry JSON, ttl ms, our incarnation.
/// Returns nil when written, else the holder's entry.
static BEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, v = pcall(cjson.decode, cur)
  if ok and type(v) == 'table' and v.incarnation ~= ARGV[3] then return cur end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"#,
    )
});

/// Takes the id: writes the entry if it is absent or still exactly `expected`.
///
/// KEYS: the node's entry. ARGV: entry JSON, ttl ms, expected entry ('' for none).
/// Returns nil when written, else the entry found.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[3] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"#,
    )
});

/// Deletes the entry if this incarnation holds it. KEYS: the entry. ARGV: our
/// incarnation. Returns 1 when deleted.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local ok, v = pcall(cjson.decode, cur)
if ok and type(v) == 'table' and v.incarnation == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#,
    )
});

/// Where this process stands with its node id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ClaimState {
    /// The first claim has not finished yet.
    Pending,
    /// Redis did not answer the first claim; it is retried every interval.
    Unreachable,
    /// This process holds the id.
    Held,
    /// Another live process holds the id; registry and presence have stopped.
    InUse(String),
}

/// A registry entry as stored: the public node info and the holder's incarnation.
#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    info: NodeInfo,
    #[serde(default)]
    incarnation: String,
}

#[derive(Clone)]
pub(super) struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_redis::Pool,
    keys: Keys,
    node_id: String,
    incarnation: String,
    interval: Duration,
    stats: StatsSource,
    started_at: u64,
    presence: Arc<Presence>,
    state: watch::Sender<ClaimState>,
}

impl Registry {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        pool: deadpool_redis::Pool,
        keys: Keys,
        node_id: String,
        incarnation: String,
        interval: Duration,
        stats: StatsSource,
        started_at: u64,
        presence: Arc<Presence>,
    ) -> Self {
        Registry {
            inner: Arc::new(Inner {
                pool,
                keys,
                node_id,
                incarnation,
                interval,
                stats,
                started_at,
                presence,
                state: watch::channel(ClaimState::Pending).0,
            }),
        }
    }

    /// How long an entry (and a presence entry) lives without a heartbeat.
    pub(super) fn ttl(interval: Duration) -> Duration {
        interval * MISSED_BEATS
    }

    /// Waits for the outcome of the first claim of the node id: `Ok` when the
    /// id is held or Redis did not answer (the claim goes on in the
    /// background), the conflict otherwise.
    ///
    /// Cancel-safe.
    pub(super) async fn claimed(&self) -> Result<(), BackplaneError> {
        let mut rx = self.inner.state.subscribe();
        let state = rx
            .wait_for(|s| *s != ClaimState::Pending)
            .await
            .map(|s| s.clone())
            .unwrap_or(ClaimState::Unreachable);
        match state {
            ClaimState::InUse(holder) => Err(self.in_use(&holder)),
            _ => Ok(()),
        }
    }

    /// Resolves once another live process is found holding the node id.
    ///
    /// Cancel-safe.
    pub(super) async fn lost(&self) -> BackplaneError {
        let mut rx = self.inner.state.subscribe();
        let holder = match rx.wait_for(|s| matches!(s, ClaimState::InUse(_))).await {
            Ok(s) => match &*s {
                ClaimState::InUse(h) => h.clone(),
                _ => String::new(),
            },
            // The registry is gone (the backplane shut down): never lost.
            Err(_) => std::future::pending().await,
        };
        self.in_use(&holder)
    }

    fn in_use(&self, holder: &str) -> BackplaneError {
        let holder = match serde_json::from_str::<Entry>(holder) {
            Ok(e) => format!(
                "incarnation {}, started at {} ms, last heartbeat at {} ms",
                e.incarnation, e.info.started_at, e.info.last_seen
            ),
            Err(_) => "an entry this version cannot read".to_owned(),
        };
        BackplaneError::NodeIdInUse {
            node_id: self.inner.node_id.clone(),
            holder,
        }
    }

    /// Claims the node id, then heartbeats (and refreshes presence) until
    /// cancelled or until another process is found holding the id.
    pub(super) async fn run(self, token: CancellationToken) {
        let inner = &self.inner;
        loop {
            let claim = tokio::select! {
                _ = token.cancelled() => return,
                c = self.claim() => c,
            };
            match claim {
                Ok(None) => {
                    inner.state.send_replace(ClaimState::Held);
                    tracing::info!(node = %inner.node_id, incarnation = %inner.incarnation, "node id claimed");
                    break;
                }
                Ok(Some(holder)) => return self.conflict(holder),
                Err(e) => {
                    metrics::counter!("switchboard_backplane_errors_total", "op" => "registry")
                        .increment(1);
                    tracing::warn!(error = %e, "cannot claim the node id yet; retrying");
                    inner.state.send_if_modified(|s| {
                        let first = *s == ClaimState::Pending;
                        if first {
                            *s = ClaimState::Unreachable;
                        }
                        first
                    });
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(inner.interval) => {}
                    }
                }
            }
        }

        let mut tick = tokio::time::interval(inner.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.beat().await {
                Ok(None) => {
                    if let Err(e) = inner.presence.refresh().await {
                        metrics::counter!("switchboard_backplane_errors_total", "op" => "presence_refresh")
                            .increment(1);
                        tracing::warn!(error = %e, "presence refresh failed; retried on the next heartbeat");
                    }
                    if let Err(e) = inner.presence.sweep().await {
                        metrics::counter!("switchboard_backplane_errors_total", "op" => "presence_sweep")
                            .increment(1);
                        tracing::warn!(error = %e, "presence sweep failed; retried on the next heartbeat");
                    }
                }
                Ok(Some(holder)) => return self.conflict(holder),
                Err(e) => {
                    metrics::counter!("switchboard_backplane_errors_total", "op" => "registry")
                        .increment(1);
                    tracing::debug!(error = %e, "node registry heartbeat failed");
                }
            }
        }
    }

    /// Another process holds the id: say so loudly and stop.
    fn conflict(&self, holder: String) {
        let inner = &self.inner;
        metrics::counter!("switchboard_node_id_conflicts_total").increment(1);
        inner.presence.supersede();
        let error = self.in_use(&holder);
        tracing::error!(
            node = %inner.node_id,
            incarnation = %inner.incarnation,
            "{error}"
        );
        inner.state.send_replace(ClaimState::InUse(holder));
    }

    fn entry_json(&self) -> Result<String, BackplaneError> {
        let inner = &self.inner;
        let stats = (inner.stats)();
        let entry = Entry {
            info: NodeInfo {
                id: inner.node_id.clone(),
                connections: stats.connections,
                subscriptions: stats.subscriptions,
                started_at: inner.started_at,
                last_seen: now_ms(),
            },
            incarnation: inner.incarnation.clone(),
        };
        serde_json::to_string(&entry).map_err(|e| BackplaneError::Unavailable(e.to_string()))
    }

    fn ttl_ms(&self) -> u64 {
        (Self::ttl(self.inner.interval).as_millis() as u64).max(1)
    }

    /// One claim attempt: `None` when the id is now ours, else the holder's entry.
    async fn claim(&self) -> Result<Option<String>, BackplaneError> {
        let inner = &self.inner;
        let key = inner.keys.node_info(&inner.node_id);
        let (current, pttl): (Option<String>, i64) = {
            let mut conn = self.connection().await?;
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
            timed(pipe.query_async(&mut *conn)).await?
        };
        let expected = match current {
            None => String::new(),
            // Our own entry: an earlier attempt was written but its answer lost.
            Some(c) if incarnation_of(&c) == inner.incarnation => return Ok(None),
            Some(c) => {
                let window = inner.interval * CLAIM_WINDOW_BEATS;
                let since_beat = u64::try_from(pttl)
                    .map(|left| self.ttl_ms().saturating_sub(left))
                    .unwrap_or(u64::MAX);
                let wait = window.saturating_sub(Duration::from_millis(since_beat));
                if !wait.is_zero() {
                    tracing::info!(
                        node = %inner.node_id,
                        wait = ?wait,
                        "the node id has a recent registry entry; waiting to see whether its holder is alive"
                    );
                    tokio::time::sleep(wait).await;
                }
                c
            }
        };
        let json = self.entry_json()?;
        let mut conn = self.connection().await?;
        let found: Option<String> = timed(
            CLAIM
                .key(&key)
                .arg(&json)
                .arg(self.ttl_ms())
                .arg(&expected)
                .invoke_async(&mut *conn),
        )
        .await?;
        match found {
            Some(c) if incarnation_of(&c) == inner.incarnation => Ok(None),
            Some(c) => Ok(Some(c)),
            None => {
                drop(conn);
                // Into the live set at once, not one interval later.
                self.beat().await
            }
        }
    }

    /// One heartbeat: `None` when written, else the entry of the process that holds the id.
    async fn beat(&self) -> Result<Option<String>, BackplaneError> {
        let inner = &self.inner;
        let now = now_ms();
        let json = self.entry_json()?;
        let ttl_ms = self.ttl_ms();
        let mut conn = self.connection().await?;
        let holder: Option<String> = match timed(
            BEAT.key(inner.keys.node_info(&inner.node_id))
                .arg(&json)
                .arg(ttl_ms)
                .arg(&inner.incarnation)
                .invoke_async(&mut *conn),
        )
        .await?
        {
            Some(h) => return Ok(Some(h)),
            None => None,
        };
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(inner.keys.nodes())
            .arg(now)
            .arg(&inner.node_id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(inner.keys.nodes())
            .arg("-inf")
            .arg(format!("({}", now.saturating_sub(ttl_ms)))
            .ignore();
        let () = timed(pipe.query_async(&mut *conn)).await?;
        Ok(holder)
    }

    /// The ids of every node whose heartbeat is younger than the TTL.
    pub(super) async fn live_ids(&self) -> Result<Vec<String>, BackplaneError> {
        let since = now_ms().saturating_sub(self.ttl_ms());
        let mut conn = self.connection().await?;
        let ids: Vec<String> = timed(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.inner.keys.nodes())
                .arg(since)
                .arg("+inf")
                .query_async(&mut *conn),
        )
        .await?;
        Ok(ids)
    }

    /// The incarnation holding each of these node ids; ids without a
    /// registry entry are left out.
    pub(super) async fn incarnations(
        &self,
        ids: Vec<String>,
    ) -> Result<HashMap<String, String>, BackplaneError> {
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("GET").arg(self.inner.keys.node_info(id));
        }
        let mut conn = self.connection().await?;
        let entries: Vec<Option<String>> = timed(pipe.query_async(&mut *conn)).await?;
        Ok(ids
            .into_iter()
            .zip(entries)
            .filter_map(|(id, entry)| Some((id, incarnation_of(&entry?))))
            .collect())
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
        let entries: Vec<Option<String>> =
            timed(redis::cmd("MGET").arg(&keys).query_async(&mut *conn)).await?;
        let mut nodes: Vec<NodeInfo> = entries
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Removes this node's entry if this process holds it (best effort: it
    /// expires anyway). A process that lost its id leaves the holder's entry alone.
    pub(super) async fn deregister(&self) {
        let inner = &self.inner;
        if *inner.state.borrow() != ClaimState::Held {
            return;
        }
        let result = async {
            let mut conn = self.connection().await?;
            let released: i64 = timed(
                RELEASE
                    .key(inner.keys.node_info(&inner.node_id))
                    .arg(&inner.incarnation)
                    .invoke_async(&mut *conn),
            )
            .await?;
            if released == 1 {
                let _: i64 = timed(
                    redis::cmd("ZREM")
                        .arg(inner.keys.nodes())
                        .arg(&inner.node_id)
                        .query_async(&mut *conn),
                )
                .await?;
            }
            Ok::<_, BackplaneError>(())
        }
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
}

/// The incarnation written in a registry entry ("" when it has none).
fn incarnation_of(entry: &str) -> String {
    serde_json::from_str::<Entry>(entry)
        .map(|e| e.incarnation)
        .unwrap_or_default()
}

/// A Redis call with the command timeout.
async fn timed<T>(
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, BackplaneError> {
    tokio::time::timeout(COMMAND_TIMEOUT, call)
        .await
        .map_err(|_| BackplaneError::Unavailable("redis timed out".into()))?
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_the_public_fields_and_carry_the_incarnation() {
        let entry = Entry {
            info: NodeInfo {
                id: "n".into(),
                connections: 1,
                subscriptions: 2,
                started_at: 3,
                last_seen: 4,
            },
            incarnation: "i".into(),
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(incarnation_of(&json), "i");
        let info: NodeInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(info, entry.info);
        assert_eq!(incarnation_of("{\"id\":\"n\"}"), "");
    }
}
