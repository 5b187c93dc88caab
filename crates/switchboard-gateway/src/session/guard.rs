//! What a session may do: permissions from its token, namespace rules, and
//! the per-connection limits. Every refusal is counted.

use super::SessionHandle;
use crate::node::NodeInner;
use crate::protocol::{Disconnect, ErrorCode};

/// Why a command is refused, and whether the connection must end too.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// Set when the refusal ends the connection (e.g. 4029 on sustained abuse).
    pub(crate) disconnect: Option<Disconnect>,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            disconnect: None,
        }
    }
}

impl SessionHandle {
    /// Called for every command before it is executed (the command rate limit).
    pub(crate) fn admit_command(&self, _node: &NodeInner) -> Result<(), Refusal> {
        Ok(())
    }

    /// Whether this session may subscribe to `channel` (token, namespace, limits).
    pub(crate) fn may_subscribe(&self, _node: &NodeInner, channel: &str) -> Result<(), Refusal> {
        if !allowed_by(self.identity.channels.as_deref(), channel) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "your token does not allow subscribing to this channel",
            ));
        }
        Ok(())
    }

    /// Whether this session may publish to `channel` (token, namespace).
    pub(crate) fn may_publish(&self, node: &NodeInner, channel: &str) -> Result<(), Refusal> {
        if !allowed_by(self.identity.publish.as_deref(), channel) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "your token does not allow publishing to this channel",
            ));
        }
        if !node.config.namespaces.of(channel).client_publish {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "clients may not publish in this channel's namespace",
            ));
        }
        Ok(())
    }
}

/// Whether a token's pattern list allows a channel: no list allows all; a
/// pattern is an exact name or a prefix ending in `*`.
pub(crate) fn allowed_by(patterns: Option<&[String]>, channel: &str) -> bool {
    let Some(patterns) = patterns else {
        return true;
    };
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => p == channel,
    })
}

#[cfg(test)]
mod tests {
    use super::allowed_by;

    #[test]
    fn patterns_are_exact_or_prefix_wildcards() {
        let p = vec!["chat:*".to_owned(), "news".to_owned()];
        assert!(allowed_by(Some(&p), "chat:lobby"));
        assert!(allowed_by(Some(&p), "news"));
        assert!(!allowed_by(Some(&p), "news:x"));
        assert!(!allowed_by(Some(&p), "chatx"));
        assert!(allowed_by(Some(&["*".to_owned()]), "anything"));
        assert!(!allowed_by(Some(&[]), "x"), "an empty list allows nothing");
        assert!(allowed_by(None, "x"), "no claim: no restriction");
    }
}
