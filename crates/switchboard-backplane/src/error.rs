use thiserror::Error;

/// Why the backplane could not do what it was asked.
#[derive(Debug, Error)]
pub enum BackplaneError {
    /// The backplane is not reachable: nothing was published or subscribed.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    /// A bad configuration value (for instance an unparsable Redis URL).
    #[error("invalid backplane configuration: {0}")]
    Config(String),
    /// The node's fan-out is too far behind to take more envelopes.
    #[error("fan-out overloaded: inbox lane full")]
    Overloaded,
    /// The node is shutting down.
    #[error("backplane closed")]
    Closed,
    /// Another live process holds this node's id in the registry.
    #[error(
        "node id {node_id:?} is held by another live node ({holder}); give every node its own \
         --node-id (SWITCHBOARD_NODE_ID), or stop the other process"
    )]
    NodeIdInUse {
        /// The contested node id.
        node_id: String,
        /// What the registry says about the holder.
        holder: String,
    },
}

impl From<redis::RedisError> for BackplaneError {
    fn from(e: redis::RedisError) -> Self {
        BackplaneError::Unavailable(e.to_string())
    }
}
