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
//! subscription's *floor* (the newest offset it has been given) and flushes
//! the buffered messages above the floor. From then on a message at or below
//! the floor is dropped: nothing is missed and nothing is seen twice.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchboard_backplane::envelope::Kind;
use switchboard_backplane::{Backplane, BackplaneError, Envelope, Topic};
use switchboard_proto::backplane::envelope::Control;

use crate::protocol::{Disconnect, Protocol, encode_push};
use crate::session::{End, Outbound, SessionHandle};

const SHARDS: usize = 64;

/// Hub keys of user topics start with this; `#` never appears in a channel name.
const USER_PREFIX: &str = "#u:";

/// The hub key of a user's topic.
pub(crate) fn user_key(user: &str) -> Arc<str> {
    format!("{USER_PREFIX}{user}").into()
}

fn topic_of(key: &str) -> Topic<'_> {
    match key.strip_prefix(USER_PREFIX) {
        Some(user) => Topic::User(user),
        None => Topic::Channel(key),
    }
}

/// One session's subscription to one topic.
pub(crate) struct Subscription {
    pub(crate) session: Arc<SessionHandle>,
    /// Every delivery takes this (uncontended but for `go_live` and `close`),
    /// so the buffer, the floor and the end of the subscription change
    /// atomically with respect to deliveries.
    state: Mutex<SubscriptionState>,
}

struct SubscriptionState {
    /// Live messages held while the session reads the history.
    buffer: Option<Vec<Outbound>>,
    /// Messages with an offset at or below this were given to the session already.
    floor: u64,
    /// Removed from the hub: a fan-out still holding an older subscriber list
    /// must not deliver through it (the session may already be subscribed anew).
    closed: bool,
}

impl Subscription {
    fn new(session: Arc<SessionHandle>, buffering: bool) -> Self {
        Subscription {
            session,
            state: Mutex::new(SubscriptionState {
                buffer: buffering.then(Vec::new),
                floor: 0,
                closed: false,
            }),
        }
    }

    /// Ends buffering: atomically with respect to deliveries, `before` queues
    /// what precedes the live stream (reply, missed messages), the floor is
    /// set, and the buffered messages above it are queued.
    pub(crate) fn go_live(&self, floor: u64, before: impl FnOnce()) {
        let mut state = crate::lock(&self.state);
        before();
        state.floor = floor;
        for item in state.buffer.take().unwrap_or_default() {
            if item.offset() == 0 || item.offset() > floor {
                self.session.push(item);
            }
        }
    }

    /// Stops every delivery through this subscription.
    fn close(&self) {
        crate::lock(&self.state).closed = true;
    }

    fn deliver(&self, item: Outbound, capacity: usize) {
        let mut state = crate::lock(&self.state);
        if state.closed {
            return;
        }
        if let Some(buffer) = state.buffer.as_mut() {
            if buffer.len() >= capacity {
                self.session.overflowed();
            } else {
                buffer.push(item);
            }
            return;
        }
        let offset = item.offset();
        if offset != 0 && offset <= state.floor {
            return;
        }
        self.session.push(item);
    }
}

type Subscribers = Arc<Vec<Arc<Subscription>>>;

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
    map: Mutex<HashMap<Arc<str>, Subscribers>>,
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
            Arc::make_mut(map.entry(key.clone()).or_default()).push(subscription.clone());
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
            let Some(list) = map.get_mut(key) else {
                return;
            };
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

    /// Delivers an envelope to the local sessions it targets; returns how many.
    ///
    /// The outgoing frame is encoded at most once per subprotocol and shared.
    pub(crate) fn fanout(&self, envelope: &Envelope) -> usize {
        // Borrowed for channels: the lookup needs no allocation per message.
        let key: Cow<'_, str> = match envelope.target.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(Kind::Channel(c)) => Cow::Borrowed(c),
            Some(Kind::User(u)) => Cow::Owned(format!("{USER_PREFIX}{u}")),
            // Connection targets are resolved by the node (it knows its connections).
            _ => return 0,
        };
        let Some(subscribers) = self.subscribers(&key) else {
            return 0;
        };
        if let Some(Control::Disconnect(d)) = &envelope.control {
            let disconnect = Disconnect::from_envelope(d);
            for s in subscribers.iter() {
                s.session.end_with(End::Disconnect(disconnect.clone()));
            }
            return subscribers.len();
        }
        let mut frames: [Option<Bytes>; 2] = [None, None];
        for s in subscribers.iter() {
            let slot = match s.session.protocol {
                Protocol::Json => 0,
                Protocol::Proto => 1,
            };
            let frame = match &frames[slot] {
                Some(f) => f.clone(),
                None => match encode_push(s.session.protocol, envelope) {
                    Some(f) => frames[slot].insert(f).clone(),
                    None => return 0,
                },
            };
            s.deliver(
                Outbound::Message {
                    frame,
                    published_us: envelope.published_us,
                    offset: envelope.offset,
                },
                self.buffer_capacity,
            );
        }
        subscribers.len()
    }

    fn subscribers(&self, key: &str) -> Option<Subscribers> {
        crate::lock(&self.shard(key).map).get(key).cloned()
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }
}
