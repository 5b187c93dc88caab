//! What a connection or a server-API caller may do with a channel: the
//! command rate, the token's claims, the namespace's features, the number of
//! subscriptions, and the API key. Every refusal carries its error code
//! (docs/PROTOCOL.md, "Errors") and every limit that bites is counted.

use hyper::HeaderMap;
use hyper::header;
use switchboard_backplane::HistoryPolicy;

use super::limits::Verdict;
use super::token::Identity;
use crate::node::NodeInner;
use crate::protocol::{CloseReason, ErrorCode};
use crate::session::{End, SessionHandle};

/// Why a request is refused, and whether the connection must end too.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// Set when the refusal ends the connection (4029 on sustained abuse).
    pub(crate) close: Option<CloseReason>,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            close: None,
        }
    }
}

/// Called for every command before it is executed (the command rate limit):
/// over the rate the command is refused with `rate_limited`; when the
/// refusals themselves go on too long, the connection is closed with 4029.
pub(crate) fn admit_command(node: &NodeInner, session: &SessionHandle) -> Result<(), Refusal> {
    let verdict = crate::lock(&session.limiter).check(tokio::time::Instant::now());
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
            tracing::info!(conn = %session.conn, "command rate limit exceeded repeatedly: closing");
            Refusal {
                code: ErrorCode::RateLimited,
                message: message + "; the connection is being closed",
                close: Some(CloseReason::RateLimited),
            }
        }
        _ => Refusal::new(ErrorCode::RateLimited, message),
    })
}

/// Called for every control frame the client sends (ping, pong): it draws on
/// the same bucket as commands. Over the rate the frame is dropped (a ping is
/// not answered); when that goes on too long, the connection is closed with
/// 4029, as for commands. Returns whether the frame may be acted on.
pub(crate) fn admit_control(node: &NodeInner, session: &SessionHandle) -> bool {
    let verdict = crate::lock(&session.limiter).check(tokio::time::Instant::now());
    if verdict == Verdict::Admit {
        return true;
    }
    node.gate.rejections.control_rate.increment(1);
    if verdict == Verdict::Disconnect && session.end_with(End::Closed(CloseReason::RateLimited)) {
        tracing::info!(conn = %session.conn, "control frame rate limit exceeded repeatedly: closing");
    }
    false
}

/// Whether a connection may read `channel` without subscribing (`history`,
/// `presence`): channel length and the token's `channels` claim.
pub(crate) fn may_read(
    node: &NodeInner,
    identity: &Identity,
    channel: &str,
) -> Result<(), Refusal> {
    super::channel::check_length(node, channel)?;
    if let Some(why) = super::pusher::native_read_refusal(node, channel) {
        return Err(Refusal::new(ErrorCode::Forbidden, why));
    }
    if !allowed_by(identity.channels.as_deref(), channel) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "your token does not allow this channel",
        ));
    }
    Ok(())
}

/// Whether a connection may subscribe to `channel`: [`may_read`], then the
/// number of subscriptions.
pub(crate) fn may_subscribe(
    node: &NodeInner,
    session: &SessionHandle,
    channel: &str,
) -> Result<(), Refusal> {
    may_read(node, &session.identity, channel)?;
    subscription_room(node, session, channel)
}

/// Refused when a connection has as many subscriptions as it may have (a
/// channel it is subscribed to already passes: that is answered elsewhere).
pub(crate) fn subscription_room(
    node: &NodeInner,
    session: &SessionHandle,
    channel: &str,
) -> Result<(), Refusal> {
    super::channel::check_length(node, channel)?;
    let max = node.config.limits.max_subscriptions;
    let channels = crate::lock(&session.channels);
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

/// Whether a connection may publish to `channel` (channel length, token,
/// namespace). The server API may publish anywhere.
pub(crate) fn may_publish(
    node: &NodeInner,
    identity: &Identity,
    channel: &str,
) -> Result<(), Refusal> {
    super::channel::check_length(node, channel)?;
    if let Some(why) = super::pusher::native_publish_refusal(node, channel) {
        return Err(Refusal::new(ErrorCode::Forbidden, why));
    }
    if !allowed_by(identity.publish.as_deref(), channel) {
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

/// The history policy of a channel's namespace; refused when it keeps none.
pub(crate) fn history_kept(node: &NodeInner, channel: &str) -> Result<HistoryPolicy, Refusal> {
    crate::ops::history::policy(node, channel).ok_or_else(|| {
        Refusal::new(
            ErrorCode::Forbidden,
            "history is not kept for this channel's namespace",
        )
    })
}

/// Refused when a channel's namespace does not answer presence queries.
pub(crate) fn presence_enabled(node: &NodeInner, channel: &str) -> Result<(), Refusal> {
    if node.config.namespaces.of(channel).presence {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::Forbidden,
            "presence is not enabled for this channel's namespace",
        ))
    }
}

/// Refused when a server-API request body is over `--max-message-size`
/// (counted). A client message over it is refused by the WebSocket layer
/// while it is read (close 1009, counted under the same limit).
pub(crate) fn body_size(node: &NodeInner, len: u64) -> Result<(), Refusal> {
    let limit = node.config.max_message_size;
    if len > limit as u64 {
        node.gate.rejections.message_size.increment(1);
        return Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("request body over {limit} bytes"),
        ));
    }
    Ok(())
}

/// Checks a server-API request's `Authorization: apikey <key>` when a key is
/// configured.
pub(crate) fn api_key(node: &NodeInner, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(key) = &node.config.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "));
    match given {
        Some(given) if constant_time_eq(given.trim().as_bytes(), key.as_bytes()) => Ok(()),
        _ => Err(Refusal::new(
            ErrorCode::Unauthorized,
            "missing or wrong API key: send Authorization: apikey <key>",
        )),
    }
}

/// Compares without an early exit, so the time taken does not reveal the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
