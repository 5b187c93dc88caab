//! Presence in Redis: who is subscribed to a channel, on every node, kept true
//! under faults.
//!
//! A channel's members are a sorted set (`PREFIX:members:{C}`, see
//! [`Keys::presence`]). Each entry is the member's JSON with the owning node's
//! id and *incarnation* (a fresh id per process), scored by the moment it
//! expires, in milliseconds of the Redis clock (`TIME`, so the clocks of the
//! nodes never matter). The owning node keeps its own map of
//! the members it added and re-adds all of them on every registry heartbeat
//! (one pipelined round trip for the whole node, one `ZADD` per channel and
//! chunk, the expiry computed from one `TIME` per refresh), so:
//!
//! - a member of a node that died (SIGKILL, partition) expires `ttl` (three
//!   registry intervals) after its node's last heartbeat;
//! - a member of a previous incarnation of a node id (a pod restarted under
//!   the same hostname) is dropped as soon as the new incarnation holds the id;
//! - a member whose removal failed (Redis hung, timed out) is no longer
//!   refreshed and expires;
//! - members lost in Redis (`FLUSHALL`, a restart without data) are back
//!   within one registry interval.
//!
//! Reads drop expired entries and entries of superseded incarnations, and
//! remove them from Redis. Every command and script touches one key, the
//! channel's set, so a channel's presence stays on its channel's Redis
//! Cluster slot (a refresh pipeline spans channels, never a command).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};

use super::{COMMAND_TIMEOUT, Keys};
use crate::{BackplaneError, PresenceMember};

/// Members per `ZADD` of a refresh: bounds the time one command holds Redis.
const REFRESH_CHUNK: usize = 256;
/// `ZADD`s per pipeline of a refresh: bounds one round trip's size.
const REFRESH_PIPELINE: usize = 512;

/// Adds (or refreshes) entries and drops the expired ones.
///
/// KEYS: the channel's set. ARGV: time to live in ms, then the entries.
/// Returns the number of expired entries removed.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local expires = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expires, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return expired
"#,
    )
});

/// Drops the expired entries and returns `{expired, {entry...}}`.
///
/// KEYS: the channel's set.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
return {expired, redis.call('ZRANGE', KEYS[1], 0, -1)}
"#,
    )
});

/// One entry as stored: the member and the incarnation of its node.
#[derive(Serialize)]
struct StoredRef<'a> {
    conn: &'a str,
    user: &'a str,
    node: &'a str,
    inc: &'a str,
}

#[derive(Deserialize)]
struct Stored {
    conn: String,
    user: String,
    node: String,
    #[serde(default)]
    inc: String,
}

/// One channel's members on this node: conn -> stored entry (shared, so a
/// refresh snapshot copies no strings).
type Local = HashMap<Arc<str>, Arc<str>>;

/// A `(conn, entry)` pair of this node's members.
type Pair = (Arc<str>, Arc<str>);

/// A refresh's view of this node's members: each channel with its pairs.
type Snapshot = Vec<(String, Vec<Pair>)>;

/// This node's side of presence in Redis (see the module docs).
pub(super) struct Presence {
    pool: deadpool_redis::Pool,
    keys: Keys,
    node_id: String,
    incarnation: String,
    ttl: Duration,
    /// channel -> conn -> stored entry: every member this node added and has
    /// not removed; re-added on every heartbeat.
    local: Mutex<HashMap<String, Local>>,
    /// Another process holds this node id: this one no longer vouches for
    /// entries under the id, not even its own.
    superseded: AtomicBool,
}

impl Presence {
    pub(super) fn new(
        pool: deadpool_redis::Pool,
        keys: Keys,
        node_id: String,
        incarnation: String,
        ttl: Duration,
    ) -> Self {
        Presence {
            pool,
            keys,
            node_id,
            incarnation,
            ttl,
            local: Mutex::new(HashMap::new()),
            superseded: AtomicBool::new(false),
        }
    }

    /// Another process took this node id over: stop refreshing, and let reads
    /// judge entries under the id by the registry like any other node's.
    pub(super) fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
    }

    fn ttl_ms(&self) -> u64 {
        (self.ttl.as_millis() as u64).max(1)
    }

    /// Records a member. It is kept in this node's map even when Redis fails,
    /// so the next heartbeat writes it.
    pub(super) async fn add(
        &self,
        channel: &str,
        member: &PresenceMember,
    ) -> Result<(), BackplaneError> {
        let entry = serde_json::to_string(&StoredRef {
            conn: &member.conn,
            user: &member.user,
            node: &member.node,
            inc: &self.incarnation,
        })
        .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
        crate::lock(&self.local)
            .entry(channel.to_owned())
            .or_default()
            .insert(Arc::from(member.conn.as_str()), Arc::from(entry.as_str()));
        let mut conn = self.connection().await?;
        let expired: u64 = ADD
            .key(self.keys.presence(channel))
            .arg(self.ttl_ms())
            .arg(entry)
            .invoke_async(&mut *conn)
            .await?;
        count_removed("expired", expired);
        Ok(())
    }

    /// Removes a member. Taken out of this node's map first: should the Redis
    /// command fail, the entry is no longer refreshed and expires.
    pub(super) async fn remove(&self, channel: &str, conn_id: &str) -> Result<(), BackplaneError> {
        let entry = {
            let mut local = crate::lock(&self.local);
            let Some(members) = local.get_mut(channel) else {
                return Ok(());
            };
            let entry = members.remove(conn_id);
            if members.is_empty() {
                local.remove(channel);
            }
            entry
        };
        let Some(entry) = entry else {
            return Ok(());
        };
        let mut conn = self.connection().await?;
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.presence(channel))
            .arg(&*entry)
            .query_async(&mut *conn)
            .await?;
        Ok(())
    }

    /// Every live member of a channel. Expired entries and entries of a
    /// superseded incarnation of their node are left out and removed.
    ///
    /// `incarnations` gives the incarnation currently holding each node id
    /// asked about (ids without a registry entry are left out of the answer).
    pub(super) async fn members<F, Fut>(
        &self,
        channel: &str,
        incarnations: F,
    ) -> Result<Vec<PresenceMember>, BackplaneError>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, String>, BackplaneError>>,
    {
        let key = self.keys.presence(channel);
        let mut conn = self.connection().await?;
        let (expired, raw): (u64, Vec<String>) = READ.key(&key).invoke_async(&mut *conn).await?;
        drop(conn);
        count_removed("expired", expired);

        let mut entries = Vec::with_capacity(raw.len());
        let mut stale = Vec::new();
        for entry in raw {
            match serde_json::from_str::<Stored>(&entry) {
                Ok(stored) => entries.push((entry, stored)),
                Err(_) => stale.push(entry),
            }
        }
        let superseded = self.superseded.load(Ordering::Acquire);
        let others: HashSet<&str> = entries
            .iter()
            .map(|(_, s)| s.node.as_str())
            .filter(|n| superseded || *n != self.node_id)
            .collect();
        let holders = if others.is_empty() {
            HashMap::new()
        } else {
            incarnations(others.into_iter().map(str::to_owned).collect()).await?
        };
        let mut members = Vec::with_capacity(entries.len());
        for (entry, stored) in entries {
            let live = if stored.node == self.node_id && !superseded {
                stored.inc == self.incarnation
            } else {
                // No registry entry (yet, or any more): the entry's own expiry decides.
                holders
                    .get(&stored.node)
                    .is_none_or(|inc| *inc == stored.inc)
            };
            if live {
                members.push(PresenceMember {
                    conn: stored.conn,
                    user: stored.user,
                    node: stored.node,
                    info: String::new(),
                });
            } else {
                stale.push(entry);
            }
        }
        if !stale.is_empty() {
            count_removed("replaced", stale.len() as u64);
            let mut conn = self.connection().await?;
            let _: i64 = redis::cmd("ZREM")
                .arg(&key)
                .arg(&stale)
                .query_async(&mut *conn)
                .await?;
        }
        members.sort_by(|a, b| a.conn.cmp(&b.conn));
        Ok(members)
    }

    /// Re-adds every member of this node (called on each registry heartbeat):
    /// their expiry moves on, and whatever Redis lost comes back.
    pub(super) async fn refresh(&self) -> Result<(), BackplaneError> {
        if self.superseded.load(Ordering::Acquire) {
            return Ok(());
        }
        let snapshot: Snapshot = crate::lock(&self.local)
            .iter()
            .map(|(channel, members)| {
                let pairs = members
                    .iter()
                    .map(|(c, e)| (c.clone(), e.clone()))
                    .collect();
                (channel.clone(), pairs)
            })
            .collect();
        let members: usize = snapshot.iter().map(|(_, m)| m.len()).sum();
        metrics::gauge!("switchboard_presence_local_members").set(members as f64);
        if snapshot.is_empty() {
            return Ok(());
        }
        let ttl = self.ttl_ms();
        let calls: Vec<(String, &[Pair])> = snapshot
            .iter()
            .flat_map(|(channel, entries)| {
                let key = self.keys.presence(channel);
                entries
                    .chunks(REFRESH_CHUNK)
                    .map(move |chunk| (key.clone(), chunk))
            })
            .collect();
        let mut conn = self.connection().await?;
        // Plain commands rather than a script per channel (a script call costs
        // Redis about 20 us of setup; a member in a ZADD under 1 us). The
        // expiry is still on the Redis clock, read once per refresh.
        let (secs, micros): (u64, u64) =
            bounded(redis::cmd("TIME").query_async(&mut *conn)).await?;
        let now = secs * 1000 + micros / 1000;
        for batch in calls.chunks(REFRESH_PIPELINE) {
            let expired = run_refresh(&mut conn, batch, now, ttl).await?;
            count_removed("expired", expired.iter().sum());
        }
        drop(conn);

        // A member removed while the refresh was on its way may have been
        // written back by it after its own removal: remove it again.
        let gone: Vec<(String, Vec<Arc<str>>)> = {
            let local = crate::lock(&self.local);
            snapshot
                .into_iter()
                .filter_map(|(channel, pairs)| {
                    let now = local.get(&channel);
                    let gone: Vec<Arc<str>> = pairs
                        .into_iter()
                        .filter(|(c, e)| now.and_then(|m| m.get(c)) != Some(e))
                        .map(|(_, e)| e)
                        .collect();
                    (!gone.is_empty()).then_some((channel, gone))
                })
                .collect()
        };
        if !gone.is_empty() {
            let mut pipe = redis::pipe();
            for (channel, entries) in &gone {
                let cmd = pipe.cmd("ZREM").arg(self.keys.presence(channel));
                for entry in entries {
                    cmd.arg(&**entry);
                }
                cmd.ignore();
            }
            let mut conn = self.connection().await?;
            let () = bounded(pipe.query_async(&mut *conn)).await?;
        }
        Ok(())
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, BackplaneError> {
        self.pool
            .get()
            .await
            .map_err(|e| BackplaneError::Unavailable(e.to_string()))
    }
}

/// One pipeline of a refresh: per channel (chunk), drop the expired entries,
/// rewrite this node's with a new expiry, extend the key's TTL. Returns the
/// expired counts.
async fn run_refresh(
    conn: &mut deadpool_redis::Connection,
    calls: &[(String, &[Pair])],
    now_ms: u64,
    ttl_ms: u64,
) -> Result<Vec<u64>, redis::RedisError> {
    let mut pipe = redis::pipe();
    let expires = now_ms + ttl_ms;
    let before = format!("({now_ms}");
    for (key, pairs) in calls {
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(&before);
        let zadd = pipe.cmd("ZADD").arg(key);
        for (_, entry) in *pairs {
            zadd.arg(expires).arg(&**entry);
        }
        zadd.ignore();
        pipe.cmd("PEXPIRE").arg(key).arg(ttl_ms).ignore();
    }
    tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(conn))
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "presence refresh timed out",
            ))
        })?
}

/// A Redis call of a refresh, with the command timeout.
async fn bounded<T>(
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, BackplaneError> {
    tokio::time::timeout(COMMAND_TIMEOUT, call)
        .await
        .map_err(|_| BackplaneError::Unavailable("redis presence refresh timed out".into()))?
        .map_err(Into::into)
}

fn count_removed(reason: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("switchboard_presence_removed_total", "reason" => reason).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_the_incarnation_and_read_back_as_members() {
        let json = serde_json::to_string(&StoredRef {
            conn: "c_1",
            user: "u",
            node: "n",
            inc: "i1",
        })
        .unwrap();
        let stored: Stored = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (stored.conn, stored.user, stored.node, stored.inc),
            ("c_1".into(), "u".into(), "n".into(), "i1".into())
        );
    }
}
