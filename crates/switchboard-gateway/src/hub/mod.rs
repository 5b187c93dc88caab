//! The hub: which local sessions want which topic (channel or user), and the fan-out.
//!
//! Topics are spread over shards by hash. Each shard has an async lock that
//! orders subscribe and unsubscribe of its topics (the first subscriber
//! subscribes the node in the backplane, the last one leaving unsubscribes it,
//! and nobody is told `subscribed` before the node's subscription holds), and
//! a plain mutex over its map, held only for lookups and edits. A topic's
//! subscriber list is copy-on-write: fan-out clones an `Arc` under the lock
//! and delivers without it.
//!
//! Recovery seam: a subscription to a channel with history starts *buffering*.
//! Live messages go to its buffer while the session reads the history; then,
//! atomically, the session queues its reply and the missed messages, sets the
//! subscription's *floor* (the epoch and newest offset it has been given) and
//! flushes the buffered messages above the floor. From then on a message of
//! that epoch at or below the floor is dropped: nothing is missed and nothing
//! is seen twice. The floor is let go at the first message above it or of
//! another epoch (offsets only grow within an epoch, and a new epoch, after
//! Redis lost the history, starts again at 1 and must not be held back).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use switchboard_backplane::envelope::Kind;
use switchboard_backplane::{Backplane, BackplaneError, Envelope, Topic};
use switchboard_proto::backplane::envelope::Control;

use switchboard_backplane::envelope::now_us;

use crate::protocol::{
    CloseReason, Disconnect, MissedReason, MissedTopic, Protocol, Push, encode_push,
    encode_push_for,
};
use crate::session::{End, Outbound, SessionHandle};

#[cfg(test)]
mod seam_tests;
mod subscription;

pub(crate) use subscription::Subscription;

const SHARDS: usize = 64;

/// Hub keys of user topics start with this; `#` never appears in a channel name.
const USER_PREFIX: &str = "#u:";

/// The hub key of a user's topic.
pub(crate) fn user_key(user: &str) -> Arc<str> {
    format!("{USER_PREFIX}{user}").into()
}

/// A hub key's channel (`None` for a user topic) and the name its envelopes'
/// target carries (the channel, or the user id).
pub(crate) fn topic_parts(key: &str) -> (Option<&str>, &str) {
    match key.strip_prefix(USER_PREFIX) {
        Some(user) => (None, user),
        None => (Some(key), key),
    }
}

fn topic_of(key: &str) -> Topic<'_> {
    match key.strip_prefix(USER_PREFIX) {
        Some(user) => Topic::User(user),
        None => Topic::Channel(key),
    }
}

type Subscribers = Arc<Vec<Arc<Subscription>>>;

/// A topic's local subscribers and what this node has fanned out of it.
#[derive(Clone, Default)]
struct Entry {
    subscribers: Subscribers,
    stream: Arc<Mutex<Stream>>,
}

/// Where a history channel's stream stands on this node: the basis of the
/// duplicate filter and of the repair after a backplane reconnect.
#[derive(Default)]
struct Stream {
    /// The newest position fanned out (every live subscriber was given
    /// everything up to it), once anything was.
    seen: Option<(String, u64)>,
    /// Before anything was fanned out: the oldest position a subscriber was
    /// told when it subscribed (`subscribed`'s epoch and offset).
    base: Option<(String, u64)>,
}

impl Stream {
    /// Where a repair must read history from.
    fn from(&self) -> Option<(String, u64)> {
        self.seen.clone().or_else(|| self.base.clone())
    }
}

/// Drops the envelopes of a run that this node fanned out already (a repair
/// after a reconnect reads history that may overlap what then arrives live),
/// and records the newest position. Envelopes without an offset always pass.
fn admit<'a>(stream: &Mutex<Stream>, run: &'a [Envelope]) -> Cow<'a, [Envelope]> {
    let mut stream = crate::lock(stream);
    let mut kept: Option<Vec<Envelope>> = None;
    for (i, e) in run.iter().enumerate() {
        let fresh = e.offset == 0
            || match &mut stream.seen {
                Some((epoch, offset)) if *epoch == e.epoch => {
                    if e.offset > *offset {
                        *offset = e.offset;
                        true
                    } else {
                        false
                    }
                }
                seen => {
                    *seen = Some((e.epoch.clone(), e.offset));
                    true
                }
            };
        match (&mut kept, fresh) {
            (Some(kept), true) => kept.push(e.clone()),
            (None, false) => kept = Some(run[..i].to_vec()),
            _ => {}
        }
    }
    match kept {
        None => Cow::Borrowed(run),
        Some(kept) => {
            metrics::counter!("switchboard_fanout_duplicates_dropped_total")
                .increment((run.len() - kept.len()) as u64);
            Cow::Owned(kept)
        }
    }
}

/// A `missed` push in one subprotocol (`at`: microseconds since the epoch,
/// for the delivery-latency histogram); never held back by a seam floor.
pub(crate) fn missed_push(
    protocol: Protocol,
    topic: MissedTopic<'_>,
    reason: MissedReason,
    at: u64,
) -> Option<Outbound> {
    Some(Outbound::Message {
        frame: encode_push_for(protocol, &Push::Missed { topic, reason })?,
        published_us: at,
        offset: 0,
    })
}

/// The topic an envelope is fanned out to; envelopes with equal keys can be
/// fanned out together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunKey<'a> {
    Channel(&'a str),
    User(&'a str),
}

/// A piece of a batch of received envelopes, in the batch's order.
#[derive(Debug, PartialEq)]
pub(crate) enum Run<'a> {
    /// Consecutive envelopes of one topic, fanned out together (a disconnect
    /// of a topic always alone).
    Topic(&'a [Envelope]),
    /// An envelope with no topic (for one connection), handled by the node.
    Conn(&'a Envelope),
}

/// Splits a batch into [`Run`]s, keeping its order.
pub(crate) fn runs(envelopes: &[Envelope]) -> impl Iterator<Item = Run<'_>> {
    let disconnect = |e: &Envelope| matches!(e.control, Some(Control::Disconnect(_)));
    let mut rest = envelopes;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let Some(key) = run_key(first) else {
            rest = &rest[1..];
            return Some(Run::Conn(first));
        };
        let len = if disconnect(first) {
            1
        } else {
            1 + rest[1..]
                .iter()
                .take_while(|e| run_key(e) == Some(key) && !disconnect(e))
                .count()
        };
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some(Run::Topic(run))
    })
}

/// The topic of a channel or user envelope; `None` for connection targets.
pub(crate) fn run_key(envelope: &Envelope) -> Option<RunKey<'_>> {
    match envelope.target_kind()? {
        Kind::Channel(c) => Some(RunKey::Channel(c)),
        Kind::User(u) => Some(RunKey::User(u)),
        _ => None,
    }
}

pub(crate) struct Hub {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    backplane: Backplane,
    subscriptions: Arc<AtomicU64>,
    channels: AtomicU64,
    /// Bound of a subscription's recovery buffer (the outbound queue's size).
    buffer_capacity: usize,
}

#[derive(Default)]
struct Shard {
    order: tokio::sync::Mutex<()>,
    map: Mutex<HashMap<Arc<str>, Entry>>,
}

impl Hub {
    /// A hub whose subscription count is kept in `subscriptions` (shared with the node registry).
    pub(crate) fn new(
        backplane: Backplane,
        subscriptions: Arc<AtomicU64>,
        buffer_capacity: usize,
    ) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: Default::default(),
            backplane,
            subscriptions,
            channels: AtomicU64::new(0),
            buffer_capacity,
        }
    }

    /// Adds a session to a topic (a channel, or a user key from [`user_key`]).
    /// `on_live` runs once the node's backplane subscription holds, atomically
    /// with the session starting to receive: a reply queued there precedes
    /// every message of the topic, and every message fanned out after it
    /// reaches the session. It must not block. With `buffering`, messages are
    /// held until [`Subscription::go_live`].
    ///
    /// Cancel-safe only before the backplane call completes; callers run it to
    /// completion (session commands are never cancelled).
    pub(crate) async fn subscribe(
        &self,
        key: &Arc<str>,
        session: &Arc<SessionHandle>,
        buffering: bool,
        on_live: impl FnOnce(),
    ) -> Result<Arc<Subscription>, BackplaneError> {
        let shard = self.shard(key);
        let _order = shard.order.lock().await;
        let known = crate::lock(&shard.map).contains_key(&**key);
        if !known {
            self.backplane.subscribe(topic_of(key)).await?;
            if !key.starts_with(USER_PREFIX) {
                let n = self.channels.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::gauge!("switchboard_channels").set(n as f64);
            }
        }
        let subscription = Arc::new(Subscription::new(session.clone(), buffering));
        {
            // The reply and the insertion happen under the map lock that fan-out
            // takes: a message fanned out after the client could have seen the
            // reply is fanned out to it too.
            let mut map = crate::lock(&shard.map);
            on_live();
            Arc::make_mut(&mut map.entry(key.clone()).or_default().subscribers)
                .push(subscription.clone());
        }
        if !key.starts_with(USER_PREFIX) {
            let n = self.subscriptions.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::gauge!("switchboard_subscriptions").set(n as f64);
        }
        Ok(subscription)
    }

    /// Removes a session from a topic; the last one out unsubscribes the node.
    pub(crate) async fn unsubscribe(&self, key: &str, session_id: u64) {
        let shard = self.shard(key);
        let _order = shard.order.lock().await;
        let (removed, now_empty) = {
            let mut map = crate::lock(&shard.map);
            let Some(entry) = map.get_mut(key) else {
                return;
            };
            let list = &mut entry.subscribers;
            let before = list.len();
            Arc::make_mut(list).retain(|s| {
                let keep = s.session.id != session_id;
                if !keep {
                    s.close();
                }
                keep
            });
            let removed = before - list.len();
            let empty = list.is_empty();
            if empty {
                map.remove(key);
            }
            (removed, empty)
        };
        let is_channel = !key.starts_with(USER_PREFIX);
        if removed > 0 && is_channel {
            let n = self
                .subscriptions
                .fetch_sub(removed as u64, Ordering::Relaxed)
                - removed as u64;
            metrics::gauge!("switchboard_subscriptions").set(n as f64);
        }
        if now_empty {
            if is_channel {
                let n = self.channels.fetch_sub(1, Ordering::Relaxed) - 1;
                metrics::gauge!("switchboard_channels").set(n as f64);
            }
            if let Err(e) = self.backplane.unsubscribe(topic_of(key)).await {
                tracing::warn!(topic = key, error = %e, "backplane unsubscribe failed; the interest is dropped and not restored on reconnect");
            }
        }
    }

    /// Delivers a run of envelopes for one topic (same [`run_key`], no
    /// disconnect among them) to the local sessions it targets, in order;
    /// returns how many sessions.
    ///
    /// Each envelope is encoded at most once per subprotocol and shared; each
    /// subscriber gets the whole run in one write when its socket takes it.
    pub(crate) fn fanout_run(&self, envelopes: &[Envelope]) -> usize {
        let (Some(first), Some(last)) = (envelopes.first(), envelopes.last()) else {
            return 0;
        };
        if first.epoch != last.epoch {
            // The history was lost and restarted within the run: each epoch
            // on its own, since a subscription's floor belongs to one epoch.
            let split = envelopes
                .iter()
                .position(|e| e.epoch != first.epoch)
                .unwrap_or(envelopes.len());
            let (old, new) = envelopes.split_at(split);
            return self.fanout_run(old).max(self.fanout_run(new));
        }
        // Borrowed for channels: the lookup needs no allocation per message.
        let key: Cow<'_, str> = match run_key(first) {
            Some(RunKey::Channel(c)) => Cow::Borrowed(c),
            Some(RunKey::User(u)) => Cow::Owned(format!("{USER_PREFIX}{u}")),
            // Connection targets are resolved by the node (it knows its connections).
            None => return 0,
        };
        let Some(Entry {
            subscribers,
            stream,
        }) = self.entry(&key)
        else {
            return 0;
        };
        let envelopes = admit(&stream, envelopes);
        if envelopes.is_empty() {
            return 0;
        }
        // An envelope that one connection must not receive (a Pusher
        // trigger's `socket_id`, a client event's sender) goes alone.
        if envelopes.len() > 1 && envelopes.iter().any(|e| !e.exclude.is_empty()) {
            let mut reached = 0;
            let mut rest: &[Envelope] = &envelopes;
            while !rest.is_empty() {
                let len = match rest.iter().position(|e| !e.exclude.is_empty()) {
                    Some(0) => 1,
                    Some(n) => n,
                    None => rest.len(),
                };
                let (run, tail) = rest.split_at(len);
                reached = reached.max(self.deliver_run(&subscribers, run));
                rest = tail;
            }
            return reached;
        }
        if let Some(Control::Disconnect(d)) = &first.control {
            let disconnect = Disconnect::from_envelope(d);
            for s in subscribers.iter() {
                s.session
                    .end_with(End::Closed(CloseReason::ServerApi(disconnect.clone())));
            }
            return subscribers.len();
        }
        self.deliver_run(&subscribers, &envelopes)
    }

    /// Delivers a run of one topic's envelopes (already admitted; one with an
    /// `exclude` only alone) to its subscribers; returns how many.
    fn deliver_run(&self, subscribers: &Subscribers, envelopes: &[Envelope]) -> usize {
        let Some(first) = envelopes.first() else {
            return 0;
        };
        let exclude = first.exclude.as_str();
        // The run's frames, encoded on first use for each subprotocol.
        let mut runs: [Option<Vec<Outbound>>; Protocol::COUNT] = Default::default();
        for s in subscribers.iter() {
            if !exclude.is_empty() && *s.session.conn == *exclude {
                continue;
            }
            let protocol = s.session.protocol;
            let items = runs[protocol.slot()].get_or_insert_with(|| {
                envelopes
                    .iter()
                    .filter_map(|e| {
                        Some(Outbound::Message {
                            frame: encode_push(protocol, e)?,
                            published_us: e.published_us,
                            offset: e.offset,
                        })
                    })
                    .collect()
            });
            if !items.is_empty() {
                s.deliver(items, &first.epoch, self.buffer_capacity);
            }
        }
        subscribers.len()
    }

    fn entry(&self, key: &str) -> Option<Entry> {
        crate::lock(&self.shard(key).map).get(key).cloned()
    }

    /// Every topic with a local subscriber (channel names and user keys).
    pub(crate) fn keys(&self) -> Vec<Arc<str>> {
        self.shards
            .iter()
            .flat_map(|shard| crate::lock(&shard.map).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Records the position a subscriber of a history channel was told it
    /// starts from; until anything is fanned out, the oldest such position is
    /// where a repair starts.
    pub(crate) fn note_start(&self, channel: &str, epoch: &str, offset: u64) {
        let Some(entry) = self.entry(channel) else {
            return;
        };
        let mut stream = crate::lock(&entry.stream);
        let older = match &stream.base {
            None => true,
            Some((e, o)) => e != epoch || offset < *o,
        };
        if stream.seen.is_none() && older {
            stream.base = Some((epoch.to_owned(), offset));
        }
    }

    /// Where a repair of a history channel starts: the newest position fanned
    /// out, or the oldest one a subscriber started from; `None` when neither
    /// is known yet.
    pub(crate) fn repair_from(&self, channel: &str) -> Option<(String, u64)> {
        crate::lock(&self.entry(channel)?.stream).from()
    }

    /// Tells every local subscriber of a topic that messages may have been
    /// missed (a `missed` push, in order with its messages); returns how many.
    pub(crate) fn missed(&self, key: &str, reason: MissedReason) -> usize {
        let Some(entry) = self.entry(key) else {
            return 0;
        };
        let topic = match key.strip_prefix(USER_PREFIX) {
            Some(user) => MissedTopic::User(user),
            None => MissedTopic::Channel(key),
        };
        let at = now_us();
        let mut items: [Option<Option<Outbound>>; Protocol::COUNT] = Default::default();
        for s in entry.subscribers.iter() {
            let protocol = s.session.protocol;
            let item = items[protocol.slot()]
                .get_or_insert_with(|| missed_push(protocol, topic, reason, at));
            if let Some(item) = item {
                s.deliver(std::slice::from_ref(item), "", self.buffer_capacity);
            }
        }
        let n = entry.subscribers.len();
        metrics::counter!("switchboard_missed_total", "reason" => reason.as_str())
            .increment(n as u64);
        n
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::backplane::{Disconnect as DisconnectControl, Target};

    fn to(kind: Kind, disconnect: bool) -> Envelope {
        Envelope {
            target: Some(Target { kind: Some(kind) }),
            control: disconnect.then(|| Control::Disconnect(DisconnectControl::default())),
            ..Default::default()
        }
    }

    fn shape(envelopes: &[Envelope]) -> Vec<String> {
        runs(envelopes)
            .map(|r| match r {
                Run::Topic(run) => format!("topic x{}", run.len()),
                Run::Conn(_) => "conn".to_owned(),
            })
            .collect()
    }

    #[test]
    fn runs_group_consecutive_envelopes_of_one_topic_in_order() {
        let ch = |c: &str| to(Kind::Channel(c.into()), false);
        let batch = vec![
            ch("a"),
            ch("a"),
            ch("a"),
            ch("b"),
            to(Kind::User("a".into()), false),
            to(Kind::User("a".into()), false),
            ch("a"),
            to(Kind::Conn("c_1".into()), true),
            ch("a"),
            to(Kind::Channel("a".into()), true),
            ch("a"),
        ];
        assert_eq!(
            shape(&batch),
            [
                "topic x3", "topic x1", "topic x2", "topic x1", "conn", "topic x1", "topic x1",
                "topic x1"
            ]
        );
        // Every envelope lands in exactly one run, in the batch's order.
        let flat: Vec<&Envelope> = runs(&batch)
            .flat_map(|r| match r {
                Run::Topic(run) => run.iter().collect::<Vec<_>>(),
                Run::Conn(e) => vec![e],
            })
            .collect();
        assert!(flat.iter().zip(&batch).all(|(a, b)| std::ptr::eq(*a, b)));
        assert_eq!(flat.len(), batch.len());
        assert_eq!(runs(&[]).count(), 0);
    }
}
