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
//! by the backplane and reaches every node subscribed to its target at that
//! moment, unless that node's backplane connection breaks; a break is reported
//! (metrics, readiness, [`Backplane::connection_generation`]) and never hidden.

pub mod envelope;
mod error;
mod inbox;
pub mod memory;
pub mod redis;
mod registry;

use std::sync::Arc;

pub use envelope::{Envelope, Target};
pub use error::BackplaneError;
pub use inbox::{Inbox, InboxLane};
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
    /// Returns only once the backplane has accepted it (Redis answered the
    /// PUBLISH); an error means it was not published at all.
    /// Cancel-safe in the sense that dropping it never half-publishes; a dropped
    /// call may or may not have been published.
    pub async fn publish(&self, envelope: &Envelope) -> Result<(), BackplaneError> {
        match self {
            Backplane::Memory(m) => m.publish(envelope).await,
            Backplane::Redis(r) => r.publish(envelope).await,
        }
    }

    /// Declares this node's interest in a client channel: from the moment this
    /// returns `Ok`, envelopes published to the channel reach this node's inbox.
    ///
    /// Called by the hub when a channel gets its first local subscriber.
    pub async fn subscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        match self {
            Backplane::Memory(_) => Ok(()),
            Backplane::Redis(r) => r.subscribe(channel).await,
        }
    }

    /// Withdraws this node's interest in a client channel (its last local
    /// subscriber left).
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        match self {
            Backplane::Memory(_) => Ok(()),
            Backplane::Redis(r) => r.unsubscribe(channel).await,
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
