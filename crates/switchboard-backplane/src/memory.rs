//! The in-process backplane: one node, no network.

use crate::envelope::now_ms;
use crate::{BackplaneError, Envelope, Inbox, NodeInfo, StatsSource};

/// Delivers every publish straight into this node's own inbox.
pub struct MemoryBackplane {
    node_id: String,
    started_at: u64,
    inbox: Inbox,
    stats: StatsSource,
}

impl MemoryBackplane {
    /// A backplane for a node that runs alone.
    pub fn new(node_id: String, inbox: Inbox, stats: StatsSource) -> Self {
        metrics::gauge!("switchboard_backplane_up").set(1.0);
        MemoryBackplane {
            node_id,
            started_at: now_ms(),
            inbox,
            stats,
        }
    }

    pub(crate) async fn publish(&self, envelope: &Envelope) -> Result<(), BackplaneError> {
        metrics::counter!("switchboard_backplane_published_total").increment(1);
        self.inbox.deliver(envelope.clone()).await?;
        metrics::counter!("switchboard_backplane_received_total").increment(1);
        Ok(())
    }

    pub(crate) fn node_info(&self) -> NodeInfo {
        let stats = (self.stats)();
        NodeInfo {
            id: self.node_id.clone(),
            connections: stats.connections,
            subscriptions: stats.subscriptions,
            started_at: self.started_at,
            last_seen: now_ms(),
        }
    }
}
