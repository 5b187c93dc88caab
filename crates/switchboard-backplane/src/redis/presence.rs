//! Presence in Redis: who is subscribed to a channel, on every node, kept true
//! under faults, and what each change means (a channel's first and last
//! member, a user's first and last connection), decided atomically.
//!
//! A channel's members are a sorted set (`PREFIX:members:{C}`, see
//! [`Keys::presence`]). Each entry is the member's JSON (connection, user,
//! node, the user info when there is one) with the owning node's *incarnation*
//! (a fresh id per process), scored by the moment it expires, in milliseconds
//! of the Redis clock (`TIME`, so the clocks of the nodes never matter). The
//! owning node keeps its own map of the members it added and re-adds all of
//! them on every registry heartbeat (one pipelined round trip for the whole
//! node, one `ZADD` per channel and chunk, the expiry computed from one `TIME`
//! per refresh), so:
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
//! Joins and leaves are Lua scripts (`presence_scripts.rs`) that drop the
//! expired entries, then decide from what is left whether the channel was
//! empty or is now, and whether the user had or still has another entry, in
//! the same atomic step as the write: of two nodes racing, exactly one sees
//! each transition.
//!
//! Members that go without a leave are *departures*. Every script that removes
//! entries (a join, a leave, a read, the purge a refresh runs on a channel
//! found holding expired entries, the sweep) reports each one, with the same
//! two flags, and this node queues them for the gateway
//! ([`crate::Backplane::take_departures`]). Reads also drop the entries of
//! superseded incarnations (judged by the registry), in a script that reports
//! them the same way.
//!
//! Channels with presence are listed in an index (`PREFIX:presence-index`, see
//! [`Keys::presence_index`]) scored by the latest expiry a node wrote to the
//! channel. A channel whose score has passed is one no node refreshes any
//! more: every node *sweeps* those on its heartbeat, purging (and reporting)
//! their expired members and taking the channels left empty out of the index.
//! A channel's key outlives its entries by another `ttl`, so the sweep finds
//! them before Redis drops the key. The index is a hint that is rewritten on
//! every refresh: an entry lost to a race is back within one interval.
//!
//! Every command and script touches one key, the channel's set or the index,
//! so a channel's presence stays on its channel's Redis Cluster slot (a
//! pipeline spans channels, never a command).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::presence_scripts::{DROP, DUE, JOIN, LEAVE, PURGE, READ, UNINDEX};
use super::{COMMAND_TIMEOUT, Keys};
use crate::departures::Departures;
use crate::{BackplaneError, Departure, Joined, Left, PresenceMember};

/// Members per `ZADD` of a refresh: bounds the time one command holds Redis.
const REFRESH_CHUNK: usize = 256;
/// `ZADD`s per pipeline of a refresh: bounds one round trip's size.
const REFRESH_PIPELINE: usize = 512;
/// Channel reads per pipeline of a channel list: bounds one round trip's size.
const LIST_PIPELINE: usize = 256;
/// Channels a sweep purges at most (the rest wait for the next heartbeat).
const SWEEP_LIMIT: usize = 256;
/// How much longer than an entry a channel's key lives: the sweeps of the
/// live nodes then find expired entries before Redis drops the key (and
/// with it the departures nobody reported yet).
const KEY_TTL_FACTOR: u32 = 2;

/// One entry as stored: the member and the incarnation of its node.
#[derive(Serialize)]
struct StoredRef<'a> {
    conn: &'a str,
    user: &'a str,
    node: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    info: &'a str,
    inc: &'a str,
}

/// An entry as read, from this version or an older one.
#[derive(Deserialize)]
struct Stored {
    conn: String,
    user: String,
    node: String,
    #[serde(default)]
    info: String,
    #[serde(default)]
    inc: String,
}

/// A removed entry as a script reports it: user, user now absent, channel now empty.
type Removed = (String, u8, u8);

/// A read of a channel as the script returns it: now (ms, Redis clock), what
/// it removed, the entries left.
type Read = (u64, Vec<Removed>, Vec<String>);

/// The live entries of a channel, judged.
struct Live {
    /// When Redis read them (ms, Redis clock).
    now: u64,
    members: Vec<Stored>,
}

impl Live {
    /// Connections and distinct users (anonymous members are no user).
    fn counts(&self) -> (u64, u64) {
        let users: HashSet<&str> = self
            .members
            .iter()
            .map(|m| m.user.as_str())
            .filter(|u| !u.is_empty())
            .collect();
        (self.members.len() as u64, users.len() as u64)
    }
}

/// One channel's members on this node: conn -> stored entry (shared, so a
/// refresh snapshot copies no strings).
type Local = HashMap<Arc<str>, Arc<str>>;

/// A `(conn, entry)` pair of this node's members.
type Pair = (Arc<str>, Arc<str>);

/// A refresh's view of this node's members: each channel with its pairs.
type Snapshot = Vec<(String, Vec<Pair>)>;

/// The ZADDs of one channel chunk in a refresh: the channel, its key, the
/// chunk's pairs, and whether it is the channel's first chunk.
type RefreshCall<'a> = (&'a str, String, &'a [Pair], bool);

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
    /// What this node's purges removed, for the gateway.
    departures: Departures,
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
            departures: Departures::new(crate::departures::CAPACITY),
        }
    }

    /// Another process took this node id over: stop refreshing, and let reads
    /// judge entries under the id by the registry like any other node's.
    pub(super) fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
    }

    /// The receiving end of the departures, once.
    pub(super) fn take_departures(&self) -> Option<tokio::sync::mpsc::Receiver<Departure>> {
        self.departures.take()
    }

    fn ttl_ms(&self) -> u64 {
        (self.ttl.as_millis() as u64).max(1)
    }

    fn key_ttl_ms(&self) -> u64 {
        self.ttl_ms() * u64::from(KEY_TTL_FACTOR)
    }

    /// Records a member and says what that changed. It is kept in this
    /// node's map even when Redis fails, so the next heartbeat writes it.
    ///
    /// Without `decide_user` the user is not looked for (a pass over the
    /// set) and `user_was_absent` is false.
    pub(super) async fn join(
        &self,
        channel: &str,
        member: &PresenceMember,
        decide_user: bool,
    ) -> Result<Joined, BackplaneError> {
        let entry = serde_json::to_string(&StoredRef {
            conn: &member.conn,
            user: &member.user,
            node: &member.node,
            info: &member.info,
            inc: &self.incarnation,
        })
        .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
        let replaced = crate::lock(&self.local)
            .entry(channel.to_owned())
            .or_default()
            .insert(Arc::from(member.conn.as_str()), Arc::from(entry.as_str()));
        let key = self.keys.presence(channel);
        let mut conn = self.connection().await?;
        let (was_empty, absent, expires, departed): (u8, u8, u64, Vec<Removed>) = JOIN
            .key(&key)
            .arg(self.ttl_ms())
            .arg(self.key_ttl_ms())
            .arg(&entry)
            .arg(if decide_user {
                member.user.as_str()
            } else {
                ""
            })
            .arg(replaced.as_deref().unwrap_or(""))
            .invoke_async(&mut *conn)
            .await?;
        self.report(channel, "expired", departed);
        if was_empty == 1 {
            // Listed from now on (and by every refresh after): see `Keys::presence_index`.
            let _: i64 = redis::cmd("ZADD")
                .arg(self.keys.presence_index())
                .arg("GT")
                .arg(expires)
                .arg(channel)
                .query_async(&mut *conn)
                .await?;
        }
        Ok(Joined {
            channel_was_empty: was_empty == 1,
            user_was_absent: absent == 1,
        })
    }

    /// Removes a member this node added and says what that changed. Taken
    /// out of this node's map first: should the Redis call fail, the entry is
    /// no longer refreshed and expires (and a purge reports it).
    ///
    /// Without `decide_user`, `user_now_absent` is false (as for [`Presence::join`]).
    pub(super) async fn leave(
        &self,
        channel: &str,
        conn_id: &str,
        decide_user: bool,
    ) -> Result<Option<Left>, BackplaneError> {
        let entry = {
            let mut local = crate::lock(&self.local);
            let Some(members) = local.get_mut(channel) else {
                return Ok(None);
            };
            let entry = members.remove(conn_id);
            if members.is_empty() {
                local.remove(channel);
            }
            entry
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        let user = serde_json::from_str::<Stored>(&entry)
            .map(|s| s.user)
            .unwrap_or_default();
        let mut conn = self.connection().await?;
        let (removed, absent, empty, departed): (u8, u8, u8, Vec<Removed>) = LEAVE
            .key(self.keys.presence(channel))
            .arg(&*entry)
            .arg(if decide_user { user.as_str() } else { "" })
            .invoke_async(&mut *conn)
            .await?;
        self.report(channel, "expired", departed);
        Ok((removed == 1).then_some(Left {
            user,
            channel_now_empty: empty == 1,
            user_now_absent: absent == 1,
        }))
    }

    /// Every live member of a channel. Expired entries and entries of a
    /// superseded incarnation of their node are left out, removed and
    /// reported as departures.
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
        let live = self.read(channel, incarnations).await?;
        let mut members: Vec<PresenceMember> = live
            .members
            .into_iter()
            .map(|s| PresenceMember {
                conn: s.conn,
                user: s.user,
                node: s.node,
                info: s.info,
            })
            .collect();
        members.sort_by(|a, b| a.conn.cmp(&b.conn));
        Ok(members)
    }

    /// A channel's live connections and distinct users (judged as
    /// [`Presence::members`] judges them).
    pub(super) async fn counts<F, Fut>(
        &self,
        channel: &str,
        incarnations: F,
    ) -> Result<(u64, u64), BackplaneError>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, String>, BackplaneError>>,
    {
        Ok(self.read(channel, incarnations).await?.counts())
    }

    /// Every indexed channel starting with `prefix` that has a live member,
    /// with its counts. Index entries of channels found empty whose hint has
    /// passed are dropped.
    pub(super) async fn channels<F, Fut>(
        &self,
        prefix: &str,
        incarnations: F,
    ) -> Result<Vec<(String, u64, u64)>, BackplaneError>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, String>, BackplaneError>>,
    {
        let index = self.keys.presence_index();
        let mut conn = self.connection().await?;
        let names: Vec<String> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .query_async(&mut *conn)
            .await?;
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut reads: Vec<Read> = Vec::with_capacity(names.len());
        for chunk in names.chunks(LIST_PIPELINE) {
            let mut pipe = redis::pipe();
            pipe.load_script(&READ).ignore();
            for name in chunk {
                pipe.invoke_script(&READ.key(self.keys.presence(name)));
            }
            let more: Vec<Read> = pipe.query_async(&mut *conn).await?;
            reads.extend(more);
        }
        drop(conn);
        let lives = self.judge(&names, reads, incarnations).await?;

        let now = lives.iter().map(|l| l.now).min().unwrap_or(0);
        let mut empty = Vec::new();
        let mut channels = Vec::new();
        for (name, live) in names.into_iter().zip(lives) {
            match live.counts() {
                (0, _) => empty.push(name),
                (conns, users) => channels.push((name, conns, users)),
            }
        }
        if !empty.is_empty() {
            let mut conn = self.connection().await?;
            let _: i64 = UNINDEX
                .key(&index)
                .arg(now)
                .arg(&empty)
                .invoke_async(&mut *conn)
                .await?;
        }
        channels.sort();
        Ok(channels)
    }

    /// Reads a channel: drops (and reports) expired entries, then those of
    /// superseded incarnations and unreadable ones.
    async fn read<F, Fut>(&self, channel: &str, incarnations: F) -> Result<Live, BackplaneError>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, String>, BackplaneError>>,
    {
        let mut conn = self.connection().await?;
        let read: Read = READ
            .key(self.keys.presence(channel))
            .invoke_async(&mut *conn)
            .await?;
        drop(conn);
        let names = [channel.to_owned()];
        let mut lives = self.judge(&names, vec![read], incarnations).await?;
        Ok(lives.pop().unwrap_or(Live {
            now: 0,
            members: Vec::new(),
        }))
    }

    /// Judges what the reads of these channels found: reports what they
    /// removed; keeps the entries that are readable and whose incarnation
    /// still holds its node id (this node's own earlier incarnations and
    /// those another process replaced are stale; a node id without a
    /// registry entry, yet or any more, is no judgement: the entries' own
    /// expiry decides); removes the rest in one script per channel, which
    /// reports them.
    async fn judge<F, Fut>(
        &self,
        names: &[String],
        reads: Vec<Read>,
        incarnations: F,
    ) -> Result<Vec<Live>, BackplaneError>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, String>, BackplaneError>>,
    {
        let superseded = self.superseded.load(Ordering::Acquire);
        let mine = |node: &str| !superseded && node == self.node_id;
        let mut parsed = Vec::with_capacity(reads.len());
        for (name, (now, departed, entries)) in names.iter().zip(reads) {
            self.report(name, "expired", departed);
            let entries: Vec<(String, Option<Stored>)> = entries
                .into_iter()
                .map(|e| {
                    let stored = serde_json::from_str::<Stored>(&e).ok();
                    (e, stored)
                })
                .collect();
            parsed.push((now, entries));
        }
        let others: HashSet<&str> = parsed
            .iter()
            .flat_map(|(_, entries)| entries.iter())
            .filter_map(|(_, s)| s.as_ref().map(|s| s.node.as_str()))
            .filter(|node| !mine(node))
            .collect();
        let holders = if others.is_empty() {
            HashMap::new()
        } else {
            incarnations(others.into_iter().map(str::to_owned).collect()).await?
        };
        let live = |s: &Stored| {
            if mine(&s.node) {
                s.inc == self.incarnation
            } else {
                holders.get(&s.node).is_none_or(|h| *h == s.inc)
            }
        };

        let mut lives = Vec::with_capacity(parsed.len());
        let mut stale: Vec<(usize, Vec<String>)> = Vec::new();
        for (i, (now, entries)) in parsed.into_iter().enumerate() {
            let mut members = Vec::with_capacity(entries.len());
            let mut gone = Vec::new();
            for (entry, stored) in entries {
                match stored {
                    Some(s) if live(&s) => members.push(s),
                    _ => gone.push(entry),
                }
            }
            if !gone.is_empty() {
                stale.push((i, gone));
            }
            lives.push(Live { now, members });
        }
        if !stale.is_empty() {
            let mut pipe = redis::pipe();
            pipe.load_script(&DROP).ignore();
            for (i, entries) in &stale {
                pipe.invoke_script(DROP.key(self.keys.presence(&names[*i])).arg(entries));
            }
            let mut conn = self.connection().await?;
            let dropped: Vec<Vec<Removed>> = pipe.query_async(&mut *conn).await?;
            for ((i, _), departed) in stale.iter().zip(dropped) {
                self.report(&names[*i], "replaced", departed);
            }
        }
        Ok(lives)
    }

    /// Re-adds every member of this node (called on each registry heartbeat):
    /// their expiry moves on, whatever Redis lost comes back, and the
    /// channels are indexed again. Channels found holding expired entries
    /// (of other nodes) are purged after, their departures reported.
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
        let calls: Vec<RefreshCall<'_>> = snapshot
            .iter()
            .flat_map(|(channel, entries)| {
                let key = self.keys.presence(channel);
                entries
                    .chunks(REFRESH_CHUNK)
                    .enumerate()
                    .map(move |(i, chunk)| (channel.as_str(), key.clone(), chunk, i == 0))
            })
            .collect();
        let mut conn = self.connection().await?;
        // Plain commands rather than a script per channel (a script call costs
        // Redis about 20 us of setup; a member in a ZADD under 1 us). The
        // expiry is still on the Redis clock, read once per refresh; only the
        // channels holding expired entries get a script, the purge.
        let (secs, micros): (u64, u64) =
            bounded(redis::cmd("TIME").query_async(&mut *conn)).await?;
        let now = secs * 1000 + micros / 1000;
        let mut expired = Vec::new();
        let mut written_back = 0;
        for batch in calls.chunks(REFRESH_PIPELINE) {
            let counts = run_refresh(
                &mut conn,
                &self.keys.presence_index(),
                batch,
                now,
                self.ttl_ms(),
                self.key_ttl_ms(),
            )
            .await?;
            for (call, (expired_here, missing)) in batch.iter().zip(counts) {
                if expired_here.is_some_and(|n| n > 0) {
                    expired.push(call.0);
                }
                written_back += missing;
            }
        }
        if written_back > 0 {
            // Lost by Redis, or removed by a purge elsewhere while this node
            // did not refresh (a departure was reported then): back without a
            // join. (Also a member left while this refresh was on its way:
            // removed again below.)
            metrics::counter!("switchboard_presence_rewritten_total").increment(written_back);
            tracing::debug!(
                members = written_back,
                "presence entries were missing in Redis and are written back"
            );
        }
        if !expired.is_empty() {
            let mut pipe = redis::pipe();
            pipe.load_script(&PURGE).ignore();
            for channel in &expired {
                pipe.invoke_script(&PURGE.key(self.keys.presence(channel)));
            }
            let purged: Vec<(Vec<Removed>, u64)> = bounded(pipe.query_async(&mut *conn)).await?;
            for (channel, (departed, _)) in expired.iter().zip(purged) {
                self.report(channel, "expired", departed);
            }
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

    /// Purges the indexed channels whose members no node refreshes any more
    /// (their hint has passed; see `Keys::presence_index`) and reports what
    /// expired. Channels left empty leave the index; the others get their
    /// hint moved to their latest entry. Called on each registry heartbeat
    /// by every node, so a channel whose every member was on nodes that died
    /// still has its departures reported, by one node.
    pub(super) async fn sweep(&self) -> Result<(), BackplaneError> {
        let index = self.keys.presence_index();
        let mut conn = self.connection().await?;
        let (now, due): (u64, Vec<String>) =
            bounded(DUE.key(&index).arg(SWEEP_LIMIT).invoke_async(&mut *conn)).await?;
        if due.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.load_script(&PURGE).ignore();
        for channel in &due {
            pipe.invoke_script(&PURGE.key(self.keys.presence(channel)));
        }
        let purged: Vec<(Vec<Removed>, u64)> = bounded(pipe.query_async(&mut *conn)).await?;
        let mut empty = Vec::new();
        let mut pipe = redis::pipe();
        pipe.load_script(&UNINDEX).ignore();
        for (channel, (departed, latest)) in due.into_iter().zip(purged) {
            self.report(&channel, "expired", departed);
            if latest == 0 {
                empty.push(channel);
            } else {
                pipe.cmd("ZADD")
                    .arg(&index)
                    .arg("GT")
                    .arg(latest)
                    .arg(channel)
                    .ignore();
            }
        }
        if !empty.is_empty() {
            pipe.invoke_script(UNINDEX.key(&index).arg(now).arg(&empty))
                .ignore();
        }
        let () = bounded(pipe.query_async(&mut *conn)).await?;
        Ok(())
    }

    /// Counts removed entries and hands them to the gateway as departures.
    fn report(&self, channel: &str, reason: &'static str, removed: Vec<Removed>) {
        if removed.is_empty() {
            return;
        }
        count_removed(reason, removed.len() as u64);
        self.departures
            .send(removed.into_iter().map(|(user, absent, empty)| Departure {
                channel: channel.to_owned(),
                user,
                channel_now_empty: empty == 1,
                user_now_absent: absent == 1,
            }));
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, BackplaneError> {
        self.pool
            .get()
            .await
            .map_err(|e| BackplaneError::Unavailable(e.to_string()))
    }
}

/// One pipeline of a refresh: per channel, count its expired entries (first
/// chunk only), rewrite this node's entries with a new expiry, extend the
/// key's TTL; then index the channels with the new expiry. Returns, per call,
/// its channel's expired count (first chunks only) and how many of its
/// entries were missing (written back).
async fn run_refresh(
    conn: &mut deadpool_redis::Connection,
    index: &str,
    calls: &[RefreshCall<'_>],
    now_ms: u64,
    ttl_ms: u64,
    key_ttl_ms: u64,
) -> Result<Vec<(Option<u64>, u64)>, redis::RedisError> {
    let mut pipe = redis::pipe();
    let expires = now_ms + ttl_ms;
    let before = format!("({now_ms}");
    for (_, key, pairs, first) in calls {
        if *first {
            pipe.cmd("ZCOUNT").arg(key).arg("-inf").arg(&before);
        }
        let zadd = pipe.cmd("ZADD").arg(key);
        for (_, entry) in *pairs {
            zadd.arg(expires).arg(&**entry);
        }
        pipe.cmd("PEXPIRE").arg(key).arg(key_ttl_ms).ignore();
    }
    let firsts: Vec<&str> = calls.iter().filter(|c| c.3).map(|c| c.0).collect();
    if !firsts.is_empty() {
        let zadd = pipe.cmd("ZADD").arg(index).arg("GT");
        for channel in firsts {
            zadd.arg(expires).arg(channel);
        }
        zadd.ignore();
    }
    let replies: Vec<u64> = tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(conn))
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "presence refresh timed out",
            ))
        })??;
    let mut replies = replies.into_iter();
    Ok(calls
        .iter()
        .map(|call| {
            let expired = if call.3 { replies.next() } else { None };
            (expired, replies.next().unwrap_or(0))
        })
        .collect())
}

/// A Redis call of a refresh or sweep, with the command timeout.
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
            info: r#"{"name":"U"}"#,
            inc: "i1",
        })
        .unwrap();
        let stored: Stored = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (stored.conn, stored.user, stored.node, stored.inc),
            ("c_1".into(), "u".into(), "n".into(), "i1".into())
        );
        assert_eq!(stored.info, r#"{"name":"U"}"#);
    }

    #[test]
    fn an_entry_without_info_is_written_as_before_and_older_entries_read() {
        let json = serde_json::to_string(&StoredRef {
            conn: "c_1",
            user: "u",
            node: "n",
            info: "",
            inc: "i1",
        })
        .unwrap();
        assert_eq!(json, r#"{"conn":"c_1","user":"u","node":"n","inc":"i1"}"#);
        let old: Stored = serde_json::from_str(r#"{"conn":"c","user":"u","node":"n"}"#).unwrap();
        assert_eq!((old.info.as_str(), old.inc.as_str()), ("", ""));
    }
}
