//! What a session may do: permissions from its token, namespace rules, and
//! the per-connection limits. Every refusal is counted.

use super::{RATE_LIMITED, SessionHandle};
use crate::limits::Verdict;
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
    /// Called for every command before it is executed (the command rate limit):
    /// over the rate the command is refused with `rate_limited`; when the
    /// refusals themselves go on too long, the connection is closed with 4029.
    pub(crate) fn admit_command(&self, node: &NodeInner) -> Result<(), Refusal> {
        let verdict = crate::lock(&self.limiter).check(tokio::time::Instant::now());
        if verdict == Verdict::Admit {
            return Ok(());
        }
        node.gate.rejections.message_rate.increment(1);
        let limits = &node.config.limits;
        let message = format!(
            "too many commands: the limit is {} per second (bursts of {}); this one was not executed",
            limits.client_rate, limits.client_burst
        );
        Err(match verdict {
            Verdict::Disconnect => {
                tracing::info!(conn = %self.conn, "command rate limit exceeded repeatedly: closing");
                Refusal {
                    code: ErrorCode::RateLimited,
                    message: message + "; the connection is being closed",
                    disconnect: Some(RATE_LIMITED),
                }
            }
            _ => Refusal::new(ErrorCode::RateLimited, message),
        })
    }

    /// Called for every control frame the client sends (ping, pong): it
    /// draws on the same bucket as commands. Over the rate the frame is
    /// dropped (a ping is not answered); when that goes on too long, the
    /// connection is closed with 4029, as for commands. Returns whether the
    /// frame may be acted on.
    pub(crate) fn admit_control(&self, node: &NodeInner) -> bool {
        let verdict = crate::lock(&self.limiter).check(tokio::time::Instant::now());
        if verdict == Verdict::Admit {
            return true;
        }
        node.gate.rejections.control_rate.increment(1);
        if verdict == Verdict::Disconnect && self.end_with(super::End::Disconnect(RATE_LIMITED)) {
            tracing::info!(conn = %self.conn, "control frame rate limit exceeded repeatedly: closing");
        }
        false
    }

    /// Whether this session may read `channel` without subscribing (`history`,
    /// `presence`): channel length and the token's `channels` claim.
    pub(crate) fn may_read(&self, node: &NodeInner, channel: &str) -> Result<(), Refusal> {
        node.check_channel_length(channel)
            .map_err(|why| Refusal::new(ErrorCode::BadRequest, why))?;
        if !allowed_by(self.identity.channels.as_deref(), channel) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "your token does not allow this channel",
            ));
        }
        Ok(())
    }

    /// Whether this session may subscribe to `channel`: [`Self::may_read`],
    /// then the number of subscriptions.
    pub(crate) fn may_subscribe(&self, node: &NodeInner, channel: &str) -> Result<(), Refusal> {
        self.may_read(node, channel)?;
        let max = node.config.limits.max_subscriptions;
        let channels = crate::lock(&self.channels);
        // A second subscribe to a channel is answered "already subscribed".
        if channels.len() >= max && !channels.contains(channel) {
            drop(channels);
            node.gate.rejections.subscriptions.increment(1);
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!("too many subscriptions: the limit is {max} per connection"),
            ));
        }
        Ok(())
    }

    /// Whether this session may publish to `channel` (channel length, token, namespace).
    pub(crate) fn may_publish(&self, node: &NodeInner, channel: &str) -> Result<(), Refusal> {
        node.check_channel_length(channel)
            .map_err(|why| Refusal::new(ErrorCode::BadRequest, why))?;
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
