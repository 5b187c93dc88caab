//! Why the node closes a connection, and what the client is told: the
//! `disconnect` push and the close frame's code (docs/PROTOCOL.md, "Close codes").

use std::borrow::Cow;

/// The `disconnect` push sent before an intentional close, and the close
/// frame's code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// Close code.
    pub code: u16,
    /// Why, for people.
    pub reason: Cow<'static, str>,
    /// Whether the client should reconnect.
    pub reconnect: bool,
}

impl Disconnect {
    /// A disconnect with a fixed reason.
    pub const fn fixed(code: u16, reason: &'static str, reconnect: bool) -> Self {
        Disconnect {
            code,
            reason: Cow::Borrowed(reason),
            reconnect,
        }
    }

    /// What the server API's disconnect orders carry.
    pub const SERVER_API: Disconnect =
        Disconnect::fixed(4100, "disconnected by the server API", false);

    /// The disconnect a backplane envelope orders (the server API's).
    pub fn from_envelope(d: &switchboard_proto::backplane::Disconnect) -> Self {
        Disconnect {
            code: u16::try_from(d.code).unwrap_or(Self::SERVER_API.code),
            reason: Cow::Owned(d.reason.clone()),
            reconnect: d.reconnect,
        }
    }

    /// The order as a backplane envelope carries it.
    pub fn to_envelope(&self) -> switchboard_proto::backplane::Disconnect {
        switchboard_proto::backplane::Disconnect {
            code: u32::from(self.code),
            reason: self.reason.to_string(),
            reconnect: self.reconnect,
        }
    }
}

/// Why the node ends a connection on purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// 4008: its outbound queue overflowed (or a write stalled); reconnect and recover.
    SlowConsumer,
    /// 1009: a message over the size limit.
    TooLarge,
    /// 1002: the client broke RFC 6455.
    ProtocolError,
    /// 1007: a text message that is not UTF-8.
    InvalidUtf8,
    /// 1001: the node is draining; reconnect elsewhere.
    Shutdown,
    /// 1001: two heartbeats without a sign of life.
    HeartbeatTimeout,
    /// 4001: the token's `exp` has passed.
    TokenExpired,
    /// 4029: commands or control frames over the rate limit for too long.
    RateLimited,
    /// 1011: the node could not serve the connection.
    Internal,
    /// The server API's disconnect order, with the code and reason it carries
    /// (4100 from this node's API).
    ServerApi(Disconnect),
    /// Refused once the WebSocket is open, with the code and reason the
    /// client's protocol uses (a Pusher client asking for an unknown app key
    /// or protocol version: the Pusher libraries read close codes, not HTTP
    /// statuses).
    Refused(Disconnect),
}

impl CloseReason {
    /// What the client is told.
    pub fn disconnect(&self) -> Disconnect {
        match self {
            CloseReason::SlowConsumer => {
                Disconnect::fixed(4008, "slow consumer: outbound queue overflowed", true)
            }
            CloseReason::TooLarge => Disconnect::fixed(1009, "message too large", false),
            CloseReason::ProtocolError => {
                Disconnect::fixed(1002, "websocket protocol error", false)
            }
            CloseReason::InvalidUtf8 => {
                Disconnect::fixed(1007, "text message is not valid UTF-8", false)
            }
            CloseReason::Shutdown => Disconnect::fixed(1001, "node shutting down", true),
            CloseReason::HeartbeatTimeout => Disconnect::fixed(1001, "heartbeat timeout", true),
            CloseReason::TokenExpired => Disconnect::fixed(4001, "token expired", true),
            CloseReason::RateLimited => Disconnect::fixed(4029, "rate limit exceeded", true),
            CloseReason::Internal => Disconnect::fixed(1011, "internal error", true),
            CloseReason::ServerApi(d) | CloseReason::Refused(d) => d.clone(),
        }
    }

    /// What a client of `protocol` is told: the node's own codes above, or
    /// the codes the Pusher client libraries act on.
    pub fn disconnect_in(&self, protocol: super::Protocol) -> Disconnect {
        match protocol {
            super::Protocol::Json | super::Protocol::Proto => self.disconnect(),
            super::Protocol::Pusher => super::pusher::disconnect(self),
        }
    }

    /// The label of `switchboard_disconnects_total`.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooLarge => "too_large",
            CloseReason::ProtocolError | CloseReason::InvalidUtf8 => "protocol_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::RateLimited => "rate_limit",
            CloseReason::Internal => "internal",
            CloseReason::ServerApi(_) => "api",
            CloseReason::Refused(_) => "refused",
        }
    }

    /// Whether the client broke the WebSocket protocol (or its size limit):
    /// the node fails the connection, sending its close frame without waiting
    /// for the client's.
    pub fn fails_connection(&self) -> bool {
        matches!(
            self,
            CloseReason::ProtocolError | CloseReason::InvalidUtf8 | CloseReason::TooLarge
        )
    }

    /// Whether a `disconnect` push goes before the close frame: not to a peer
    /// whose frames could not be read, to whom RFC 6455 allows only the close.
    pub fn tells_client(&self) -> bool {
        !matches!(self, CloseReason::ProtocolError | CloseReason::InvalidUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_timeout_and_shutdown_share_a_code_but_not_a_label() {
        let (a, b) = (CloseReason::HeartbeatTimeout, CloseReason::Shutdown);
        assert_eq!(a.disconnect().code, b.disconnect().code);
        assert_ne!(a.label(), b.label());
    }

    #[test]
    fn a_server_api_order_round_trips_through_an_envelope() {
        let order = Disconnect::SERVER_API;
        assert_eq!(Disconnect::from_envelope(&order.to_envelope()), order);
        assert_eq!(CloseReason::ServerApi(order.clone()).disconnect(), order);
    }
}
