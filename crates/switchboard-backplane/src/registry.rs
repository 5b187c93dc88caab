//! The cluster's node registry: who is alive, and how loaded.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One node as `GET /api/v1/cluster` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// Open client connections.
    pub connections: u64,
    /// Channel subscriptions held by its connections.
    pub subscriptions: u64,
    /// Start time, milliseconds since the Unix epoch.
    pub started_at: u64,
    /// Last registry heartbeat, milliseconds since the Unix epoch.
    pub last_seen: u64,
}

/// A node's current load, as the registry publishes it.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStats {
    /// Open client connections.
    pub connections: u64,
    /// Channel subscriptions held by its connections.
    pub subscriptions: u64,
}

/// Reads the node's current load; called once per registry heartbeat.
pub type StatsSource = Arc<dyn Fn() -> NodeStats + Send + Sync>;
