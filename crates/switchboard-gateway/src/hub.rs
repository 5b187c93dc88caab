//! The hub: which local sessions want which channel, and the fan-out.
//!
//! Channels are spread over shards by hash. Each shard has an async lock that
//! orders subscribe and unsubscribe of its channels (the first subscriber
//! subscribes the node in the backplane, the last one leaving unsubscribes it,
//! and nobody is told `subscribed` before the node's subscription holds), and
//! a plain mutex over its map, held only for lookups and edits. A channel's
//! subscriber list is copy-on-write: fan-out clones an `Arc` under the lock
//! and delivers without it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchboard_backplane::envelope::{self, PayloadEncoding};
use switchboard_backplane::{Backplane, BackplaneError, Envelope};

use crate::protocol::{Protocol, json, proto};
use crate::session::{Outbound, SessionHandle};

const SHARDS: usize = 64;

type Subscribers = Arc<Vec<Arc<SessionHandle>>>;

pub(crate) struct Hub {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    backplane: Backplane,
    subscriptions: Arc<AtomicU64>,
    channels: AtomicU64,
}

#[derive(Default)]
struct Shard {
    order: tokio::sync::Mutex<()>,
    map: Mutex<HashMap<Arc<str>, Subscribers>>,
}

impl Hub {
    /// A hub whose subscription count is kept in `subscriptions` (shared with the node registry).
    pub(crate) fn new(backplane: Backplane, subscriptions: Arc<AtomicU64>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: Default::default(),
            backplane,
            subscriptions,
            channels: AtomicU64::new(0),
        }
    }

    /// Adds a session to a channel. `on_live` runs once the node's backplane
    /// subscription holds, atomically with the session starting to receive: a
    /// reply queued there precedes every message of the channel, and every
    /// message fanned out after it reaches the session. It must not block.
    ///
    /// Cancel-safe only before the backplane call completes; callers run it to
    /// completion (session commands are never cancelled).
    pub(crate) async fn subscribe(
        &self,
        channel: &Arc<str>,
        session: &Arc<SessionHandle>,
        on_live: impl FnOnce(),
    ) -> Result<(), BackplaneError> {
        let shard = self.shard(channel);
        let _order = shard.order.lock().await;
        let known = crate::lock(&shard.map).contains_key(&**channel);
        if !known {
            self.backplane.subscribe(channel).await?;
            let n = self.channels.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::gauge!("switchboard_channels").set(n as f64);
        }
        {
            // The reply and the insertion happen under the map lock that fan-out
            // takes: a message fanned out after the client could have seen the
            // reply is fanned out to it too.
            let mut map = crate::lock(&shard.map);
            on_live();
            Arc::make_mut(map.entry(channel.clone()).or_default()).push(session.clone());
        }
        let n = self.subscriptions.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("switchboard_subscriptions").set(n as f64);
        Ok(())
    }

    /// Removes a session from a channel; the last one out unsubscribes the node.
    pub(crate) async fn unsubscribe(&self, channel: &str, session_id: u64) {
        let shard = self.shard(channel);
        let _order = shard.order.lock().await;
        let (removed, now_empty) = {
            let mut map = crate::lock(&shard.map);
            let Some(list) = map.get_mut(channel) else {
                return;
            };
            let before = list.len();
            Arc::make_mut(list).retain(|s| s.id != session_id);
            let removed = before - list.len();
            let empty = list.is_empty();
            if empty {
                map.remove(channel);
            }
            (removed, empty)
        };
        if removed > 0 {
            let n = self
                .subscriptions
                .fetch_sub(removed as u64, Ordering::Relaxed)
                - removed as u64;
            metrics::gauge!("switchboard_subscriptions").set(n as f64);
        }
        if now_empty {
            let n = self.channels.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::gauge!("switchboard_channels").set(n as f64);
            if let Err(e) = self.backplane.unsubscribe(channel).await {
                tracing::warn!(channel, error = %e, "backplane unsubscribe failed; the interest is dropped and not restored on reconnect");
            }
        }
    }

    /// Delivers an envelope to the local sessions it targets; returns how many.
    ///
    /// The outgoing frame is encoded at most once per subprotocol and shared.
    pub(crate) fn fanout(&self, envelope: &Envelope) -> usize {
        let Some(channel) = envelope::channel_of(envelope) else {
            tracing::debug!("envelope without a channel target ignored");
            return 0;
        };
        let subscribers = crate::lock(&self.shard(channel).map).get(channel).cloned();
        let Some(subscribers) = subscribers else {
            return 0;
        };
        let encoding =
            PayloadEncoding::try_from(envelope.encoding).unwrap_or(PayloadEncoding::Binary);
        let mut as_json: Option<Bytes> = None;
        let mut as_proto: Option<Bytes> = None;
        for session in subscribers.iter() {
            let frame = match session.protocol {
                Protocol::Json => as_json
                    .get_or_insert_with(|| {
                        json::encode_message(channel, &envelope.payload, encoding)
                    })
                    .clone(),
                Protocol::Proto => as_proto
                    .get_or_insert_with(|| proto::encode_message(channel, &envelope.payload))
                    .clone(),
            };
            session.push(Outbound::Message {
                frame,
                published_us: envelope.published_us,
            });
        }
        subscribers.len()
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }
}
