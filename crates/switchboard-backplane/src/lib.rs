//! How Switchboard nodes reach each other.
//!
//! A [`Backplane`] carries [`Envelope`]s between the nodes of a cluster. A node
//! publishes an envelope once; the backplane hands it to the [`Inbox`] of every
//! node that has declared interest in its target (the publishing node included,
//! so that every subscriber everywhere sees one order).
//!
//! Two implementations:
//! - [`memory`]: one node, no network; the default a new user meets first.
//! - [`redis`]: Redis pub/sub, subscribed by interest (a node subscribes to a
//!   channel only while it has a local subscriber of it), with a node registry.
//!
//! The delivery guarantee: an envelope whose `publish` returned `Ok` was accepted
//! by the backplane while this node's own receiving link was up, and reaches
//! every node subscribed to its target at that moment, unless that node's
//! receiving connection breaks. A break is never hidden: the connection that
//! replaces it first puts an [`Inbound::Resync`] marker into every lane of the
//! node's [`Inbox`], ahead of its own envelopes, so the node knows exactly
//! where it may have missed something and repairs it (from history) or says so.
//!
//! Presence: the backplane knows which connections are in a channel, on every
//! node ([`Backplane::presence_join`], [`Backplane::presence_leave`]), and tells
//! the caller what each change meant cluster-wide (the channel's first or last
//! member, a user's first or last connection), decided atomically so that
//! exactly one node sees each transition. Members that go without a leave
//! (their node died) are [`Departure`]s, reported by the one node that removed
//! them, through [`Backplane::take_departures`].

mod departures;
pub mod envelope;
mod error;
mod history;
mod inbox;
pub mod memory;
pub mod redis;
mod registry;

use std::sync::Arc;

pub use envelope::{Envelope, Target};
pub use error::BackplaneError;
pub use history::{
    Departure, HistoryPage, HistoryPolicy, Joined, Left, Position, PresenceMember, Since, Topic,
};
pub use inbox::{Inbound, Inbox, InboxLane, Resync, ResyncGate};
pub use registry::{NodeInfo, NodeStats, StatsSource};

/// A cluster backplane: the in-process one or Redis.
///
/// An enum rather than a trait object: there are two implementations, both in
/// this crate, and the hot path (`publish`) stays a direct call.
#[derive(Clone)]
pub enum Backplane {
    /// One node, in memory.
    Memory(Arc<memory::MemoryBackplane>),
    /// Redis pub/sub.
    Redis(Arc<redis::RedisBackplane>),
}

impl Backplane {
    /// Publishes an envelope to every node interested in its target.
    ///
    /// With a history policy (channel targets only) the envelope gets the
    /// channel's next offset and is appended to its history in the same atomic
    /// step as the publish, so offset order is delivery order everywhere; the
    /// position is returned. Returns only once the backplane has accepted it;
    /// an error means it was not published at all.
    pub async fn publish(
        &self,
        envelope: &Envelope,
        history: Option<HistoryPolicy>,
    ) -> Result<Option<Position>, BackplaneError> {
        match self {
            Backplane::Memory(m) => m.publish(envelope, history).await,
            Backplane::Redis(r) => r.publish(envelope, history).await,
        }
    }

    /// Declares this node's interest in a topic (a client channel or a user):
    /// from the moment this returns `Ok`, envelopes published to it reach
    /// this node's inbox. Called by the hub for a topic's first local subscriber.
    pub async fn subscribe(&self, topic: Topic<'_>) -> Result<(), BackplaneError> {
        match self {
            Backplane::Memory(_) => Ok(()),
            Backplane::Redis(r) => r.subscribe(topic).await,
        }
    }

    /// Withdraws this node's interest in a topic (its last local subscriber left).
    pub async fn unsubscribe(&self, topic: Topic<'_>) -> Result<(), BackplaneError> {
        match self {
            Backplane::Memory(_) => Ok(()),
            Backplane::Redis(r) => r.unsubscribe(topic).await,
        }
    }

    /// Reads a channel's history position and the messages `since` asks for
    /// (at most the policy's size: all that is kept). Creates nothing: a
    /// channel without history reads as epoch `""`, offset 0.
    pub async fn history(
        &self,
        channel: &str,
        policy: HistoryPolicy,
        since: Since,
    ) -> Result<HistoryPage, BackplaneError> {
        self.history_page(channel, since, policy.size.max(1)).await
    }

    /// As [`Backplane::history`], returning at most `limit` messages: the
    /// oldest of the range, so a long range is read page by page.
    pub async fn history_page(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
    ) -> Result<HistoryPage, BackplaneError> {
        match self {
            Backplane::Memory(m) => Ok(m.history(channel, since, limit).await),
            Backplane::Redis(r) => r.history(channel, since, limit).await,
        }
    }

    /// Records a connection as present on a channel.
    ///
    /// As [`Backplane::presence_join`], for callers that need not know what
    /// changed (Redis then skips looking for the user's other connections,
    /// a pass over the channel's members).
    pub async fn presence_add(
        &self,
        channel: &str,
        member: &PresenceMember,
    ) -> Result<(), BackplaneError> {
        match self {
            Backplane::Memory(m) => {
                m.presence_join(channel, member);
                Ok(())
            }
            Backplane::Redis(r) => r.presence_join(channel, member, false).await.map(drop),
        }
    }

    /// Removes a connection from a channel's presence.
    ///
    /// As [`Backplane::presence_leave`], for callers that need not know what
    /// changed (as for [`Backplane::presence_add`]).
    pub async fn presence_remove(&self, channel: &str, conn: &str) -> Result<(), BackplaneError> {
        match self {
            Backplane::Memory(m) => {
                m.presence_leave(channel, conn);
                Ok(())
            }
            Backplane::Redis(r) => r.presence_leave(channel, conn, false).await.map(drop),
        }
    }

    /// Records a connection as present on a channel and says what that
    /// changed cluster-wide: whether the channel had no live member, and
    /// whether the member's user had no live connection in it, before.
    ///
    /// Redis decides both in the same atomic step as the write, so of two
    /// nodes joining the same user at once exactly one is told the user was
    /// absent. The member is kept by this node (and rewritten on every
    /// heartbeat) even when Redis fails; the error then means the answer is
    /// unknown, not that the member is absent.
    ///
    /// Cost in Redis: finding the user's other connections is a pass over
    /// the channel's members (about a microsecond each), so it is done only
    /// for a member with a user; an anonymous member (user `""`) costs the
    /// same in a channel of any size. The same holds for a leave.
    pub async fn presence_join(
        &self,
        channel: &str,
        member: &PresenceMember,
    ) -> Result<Joined, BackplaneError> {
        match self {
            Backplane::Memory(m) => Ok(m.presence_join(channel, member)),
            Backplane::Redis(r) => r.presence_join(channel, member, true).await,
        }
    }

    /// Removes a connection that this node added to a channel's presence and
    /// says what that changed cluster-wide (decided atomically, as for
    /// [`Backplane::presence_join`]).
    ///
    /// `None` when the connection was not a member added by this node, or when
    /// its entry was no longer there to remove (Redis: it expired and a purge
    /// reported it as a [`Departure`], or Redis lost it).
    pub async fn presence_leave(
        &self,
        channel: &str,
        conn: &str,
    ) -> Result<Option<Left>, BackplaneError> {
        match self {
            Backplane::Memory(m) => Ok(m.presence_leave(channel, conn)),
            Backplane::Redis(r) => r.presence_leave(channel, conn, true).await,
        }
    }

    /// Every connection present on a channel, on every live node.
    pub async fn presence(&self, channel: &str) -> Result<Vec<PresenceMember>, BackplaneError> {
        match self {
            Backplane::Memory(m) => Ok(m.presence(channel)),
            Backplane::Redis(r) => r.presence(channel).await,
        }
    }

    /// How many connections are present on a channel, and how many distinct
    /// users they belong to (anonymous connections count as connections only),
    /// on every live node.
    pub async fn presence_counts(&self, channel: &str) -> Result<(u64, u64), BackplaneError> {
        match self {
            Backplane::Memory(m) => Ok(m.presence_counts(channel)),
            Backplane::Redis(r) => r.presence_counts(channel).await,
        }
    }

    /// Every channel whose name starts with `prefix` and that has at least one
    /// live member, on any node, with its connection and user counts (as
    /// [`Backplane::presence_counts`]), sorted by name.
    pub async fn presence_channels(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, u64, u64)>, BackplaneError> {
        match self {
            Backplane::Memory(m) => Ok(m.presence_channels(prefix)),
            Backplane::Redis(r) => r.presence_channels(prefix).await,
        }
    }

    /// The receiving end of this node's [`Departure`]s: members that left
    /// without a leave (their node died, or a restarted process took their
    /// node id over), each reported by exactly one node, the one whose purge
    /// removed it. Taken once (later calls return `None`), by the gateway.
    ///
    /// The queue is bounded: departures that do not fit are dropped and
    /// counted (`switchboard_presence_departures_dropped_total`). The
    /// in-process backplane's receiver never yields: nothing expires there.
    pub fn take_departures(&self) -> Option<tokio::sync::mpsc::Receiver<Departure>> {
        match self {
            Backplane::Memory(m) => m.take_departures(),
            Backplane::Redis(r) => r.take_departures(),
        }
    }

    /// Whether the backplane is connected and receiving (readiness).
    pub fn is_up(&self) -> bool {
        match self {
            Backplane::Memory(_) => true,
            Backplane::Redis(r) => r.is_up(),
        }
    }

    /// Counts the times the receiving connection has been (re)established.
    ///
    /// A change means envelopes may have been missed in between.
    pub fn connection_generation(&self) -> u64 {
        match self {
            Backplane::Memory(_) => 1,
            Backplane::Redis(r) => r.connection_generation(),
        }
    }

    /// Every live node of the cluster.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, BackplaneError> {
        match self {
            Backplane::Memory(m) => Ok(vec![m.node_info()]),
            Backplane::Redis(r) => r.nodes().await,
        }
    }

    /// Waits until the node id is known to be this process's (Redis: the
    /// registry's first claim, which may wait up to two registry intervals
    /// when a recent entry of the same id exists). Fails with
    /// [`BackplaneError::NodeIdInUse`] when another live node holds the id;
    /// returns `Ok` at once when Redis does not answer (the claim goes on in
    /// the background and a conflict found then is reported by
    /// [`Backplane::node_id_lost`]).
    ///
    /// Cancel-safe.
    pub async fn claim_node_id(&self) -> Result<(), BackplaneError> {
        match self {
            Backplane::Memory(_) => Ok(()),
            Backplane::Redis(r) => r.claim_node_id().await,
        }
    }

    /// Resolves, with [`BackplaneError::NodeIdInUse`], once another live node
    /// is found holding this node's id; never for the in-process backplane.
    ///
    /// Cancel-safe.
    pub async fn node_id_lost(&self) -> BackplaneError {
        match self {
            Backplane::Memory(_) => std::future::pending().await,
            Backplane::Redis(r) => r.node_id_lost().await,
        }
    }

    /// Leaves the cluster: deregisters the node and stops the backplane's tasks.
    pub async fn shutdown(&self) {
        if let Backplane::Redis(r) = self {
            r.shutdown().await;
        }
    }

    /// A short name for logs: `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backplane::Memory(_) => "memory",
            Backplane::Redis(_) => "redis",
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
