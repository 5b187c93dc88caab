//! Who a connection is: its identity, from a JWT or anonymous.
//!
//! (Token verification arrives here: HS256 with a shared secret, RS256/ES256
//! with a PEM public key; see docs/NODE-CONTRACT.md.)

use std::sync::Arc;

/// A connection's identity and what its token allows.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// The user id (`sub`); "" when anonymous.
    pub user: Arc<str>,
    /// Patterns of channels the user may subscribe to; `None`: no restriction.
    pub channels: Option<Vec<String>>,
    /// Patterns of channels the user may publish to; `None`: no restriction.
    pub publish: Option<Vec<String>>,
    /// When the token expires, in seconds since the Unix epoch; `None` for anonymous.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// An anonymous connection: no user, no token restrictions.
    pub fn anonymous() -> Self {
        Identity::default()
    }
}
