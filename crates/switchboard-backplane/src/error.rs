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
}

impl From<redis::RedisError> for BackplaneError {
    fn from(e: redis::RedisError) -> Self {
        BackplaneError::Unavailable(e.to_string())
    }
}
