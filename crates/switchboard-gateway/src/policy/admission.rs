//! Who may open a WebSocket, checked in this order before the handshake:
//! the client address's connections still in their HTTP phase (429, checked
//! at accept, [`enter_http_phase`]); then, for an upgrade request, drain
//! (503), the WebSocket handshake rules (`ws::handshake`: 400, or 426 for a
//! version other than 13), `Origin` (403), subprotocol (400), the client
//! address's connection rate (429), the node's connection cap (503) and the
//! token (401). Every refusal is counted in
//! `switchboard_upgrades_rejected_total{reason}` (docs/PROTOCOL.md, "Connecting").

use std::borrow::Cow;
use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};

use super::limits::{ConnectionSlot, PendingGuard};
use super::token::{Identity, TokenError};
use crate::node::NodeInner;
use crate::protocol::{ErrorCode, Protocol};

/// A connection let in: its subprotocol (when it asked for one), who it is,
/// and its place under the connection cap (held while the session lives).
pub(crate) struct Admitted {
    pub(crate) protocol: Option<Protocol>,
    pub(crate) identity: Identity,
    pub(crate) slot: ConnectionSlot,
}

/// An upgrade refused: the HTTP answer, and the label it is counted under.
pub(crate) struct UpgradeRefusal {
    pub(crate) status: StatusCode,
    /// With a code, the body is the JSON error object; without, plain text.
    pub(crate) code: Option<ErrorCode>,
    pub(crate) message: String,
    pub(crate) headers: HeaderMap,
}

impl UpgradeRefusal {
    /// Boxed: a refusal is rare, and its headers would make every `Result` large.
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Box<Self> {
        metrics::counter!("switchboard_upgrades_rejected_total", "reason" => reason).increment(1);
        Box::new(UpgradeRefusal {
            status,
            code: None,
            message: message.into(),
            headers: HeaderMap::new(),
        })
    }

    fn with_code(mut self: Box<Self>, code: ErrorCode) -> Box<Self> {
        self.code = Some(code);
        self
    }

    fn with_header(
        mut self: Box<Self>,
        name: header::HeaderName,
        value: &'static str,
    ) -> Box<Self> {
        self.headers.insert(name, HeaderValue::from_static(value));
        self
    }
}

/// Which WebSocket endpoint a connection asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/ws`: the node's own protocol (subprotocol and token checked).
    Native,
    /// `/app/{key}`: the Pusher protocol, which names no subprotocol and
    /// carries no token (its channels are authorized one by one); its app key
    /// and version are checked once the socket is open ([`pusher_app`]).
    Pusher,
}

/// The app a Pusher connection asks for by key, with `?protocol=7`; or the
/// refusal it is closed with (4001 unknown key, 4008 no version, 4007 another
/// version: the codes Pusher's libraries act on).
pub(crate) fn pusher_app(
    node: &NodeInner,
    key: &str,
    query: Option<&str>,
) -> crate::session::PusherStart {
    use crate::protocol::Disconnect;
    let key = crate::http::percent_decode(key).unwrap_or(Cow::Borrowed(key));
    let Some(app) = node.config.pusher.iter().position(|a| a.key == *key) else {
        metrics::counter!("switchboard_upgrades_rejected_total", "reason" => "pusher_app")
            .increment(1);
        return Err(Disconnect {
            code: 4001,
            reason: format!("app key {key} does not exist on this cluster").into(),
            reconnect: false,
        });
    };
    let version = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("protocol="));
    match version {
        Some(v) if v == crate::protocol::pusher::VERSION.to_string() => {
            let limit = node.config.pusher[app].limits.max_connections;
            super::pusher::app_slot(&node.pusher_open[app], limit)
                .map(|slot| (app, slot))
                .ok_or_else(|| {
                    metrics::counter!("switchboard_upgrades_rejected_total", "reason" => "pusher_app_connections")
                        .increment(1);
                    Disconnect {
                        code: 4004,
                        reason: format!(
                            "app {} is over its connection quota on this node ({})",
                            node.config.pusher[app].id,
                            limit.unwrap_or_default()
                        )
                        .into(),
                        reconnect: false,
                    }
                })
        }
        Some(v) => {
            metrics::counter!("switchboard_upgrades_rejected_total", "reason" => "pusher_version")
                .increment(1);
            Err(Disconnect {
                code: 4007,
                reason: format!(
                    "unsupported protocol version {v}: this node speaks protocol {}",
                    crate::protocol::pusher::VERSION
                )
                .into(),
                reconnect: false,
            })
        }
        None => {
            metrics::counter!("switchboard_upgrades_rejected_total", "reason" => "pusher_version")
                .increment(1);
            Err(Disconnect::fixed(
                4008,
                "no protocol version supplied: connect with ?protocol=7",
                false,
            ))
        }
    }
}

/// Checks an upgrade request, in the order of the module's list.
pub(crate) fn admit_upgrade<B>(
    node: &NodeInner,
    req: &Request<B>,
    peer: Option<IpAddr>,
    endpoint: Endpoint,
) -> Result<Admitted, Box<UpgradeRefusal>> {
    if node.is_draining() {
        return Err(UpgradeRefusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining; connect to another node",
        ));
    }
    if let Err(refusal) = crate::ws::handshake::check(req) {
        let mut refused = UpgradeRefusal::new(refusal.status, refusal.reason, refusal.message);
        refused.headers = refusal.headers();
        return Err(refused);
    }
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && !origin_allowed(&node.config.allowed_origins, origin)
    {
        return Err(UpgradeRefusal::new(
            StatusCode::FORBIDDEN,
            "origin",
            "origin not allowed",
        ));
    }
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let protocol = match endpoint {
        Endpoint::Native => Protocol::negotiate(Some(offered.as_str())).map_err(|message| {
            UpgradeRefusal::new(StatusCode::BAD_REQUEST, "subprotocol", message)
        })?,
        Endpoint::Pusher => None,
    };
    if let Some(ip) = peer
        && !node.gate.admit_ip(ip, tokio::time::Instant::now())
    {
        return Err(UpgradeRefusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ip_connect_rate",
            format!(
                "too many new connections from your address: the limit is {} per second",
                node.config.limits.ip_connect_rate
            ),
        )
        .with_code(ErrorCode::RateLimited)
        .with_header(header::RETRY_AFTER, "1"));
    }
    let Some(slot) = node.gate.try_slot() else {
        return Err(UpgradeRefusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "connections",
            format!(
                "node is at its connection limit ({}); connect to another node",
                node.gate.max_connections()
            ),
        )
        .with_code(ErrorCode::Unavailable));
    };
    let identity = match endpoint {
        Endpoint::Native => bearer_token(req).and_then(|token| {
            node.authenticator
                .identify(token.as_deref().filter(|t| !t.is_empty()))
        }),
        Endpoint::Pusher => Ok(Identity::anonymous()),
    };
    match identity {
        Ok(identity) => Ok(Admitted {
            protocol,
            identity,
            slot,
        }),
        Err(e) => {
            tracing::debug!(error = %e, "token refused");
            Err(
                UpgradeRefusal::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
                    .with_code(ErrorCode::Unauthorized)
                    .with_header(header::WWW_AUTHENTICATE, "Bearer"),
            )
        }
    }
}

/// Lets a new connection on the public listener into its HTTP phase, or
/// refuses it with the message of a 429 when its address already has
/// `max_pending_per_ip` connections there. The guard is held until the
/// connection's HTTP phase ends: its last response, or the hand-over of an
/// upgraded socket to its session (open WebSockets do not count).
pub(crate) fn enter_http_phase(node: &NodeInner, ip: IpAddr) -> Result<PendingGuard, String> {
    node.gate.enter_pending(ip).ok_or_else(|| {
        format!(
            "too many connections being set up from your address: the limit is {}",
            node.gate.max_pending_per_ip()
        )
    })
}

/// Whether a browser `Origin` may connect: any when the list is empty; else an
/// exact match (ignoring ASCII case) or a prefix match for patterns ending in `*`.
pub(crate) fn origin_allowed(allowed: &[String], origin: &HeaderValue) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_suffix('*') {
            Some(prefix) => origin.starts_with(prefix),
            None => origin == pattern,
        }
    })
}

/// The token a client presents: `?token=` (percent-decoded) first, else an
/// `Authorization: Bearer` header; `None` when there is neither.
fn bearer_token<B>(req: &Request<B>) -> Result<Option<Cow<'_, str>>, TokenError> {
    if let Some(query) = req.uri().query() {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("token=") {
                return crate::http::percent_decode(value).map(Some).ok_or_else(|| {
                    TokenError::Malformed("bad percent-encoding in ?token=".into())
                });
            }
        }
    }
    for value in req.headers().get_all(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        if let Some((scheme, token)) = value.trim().split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Ok(Some(Cow::Borrowed(token.trim())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_prefix() {
        let allowed = vec![
            "https://app.example.com".to_owned(),
            "http://localhost:*".to_owned(),
        ];
        let ok = |o: &'static str| origin_allowed(&allowed, &HeaderValue::from_static(o));
        assert!(ok("https://app.example.com"));
        assert!(ok("HTTPS://APP.example.com"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("https://evil.example.com"));
        assert!(!ok("https://app.example.com.evil.net"));
        assert!(origin_allowed(
            &[],
            &HeaderValue::from_static("https://any")
        ));
    }

    fn request(uri: &str, authorization: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(a) = authorization {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(()).expect("request")
    }

    fn token(uri: &str, authorization: Option<&str>) -> Result<Option<String>, TokenError> {
        bearer_token(&request(uri, authorization)).map(|t| t.map(Cow::into_owned))
    }

    #[test]
    fn tokens_come_from_the_query_or_the_bearer_header() {
        assert_eq!(token("/ws?token=a.b.c", None), Ok(Some("a.b.c".into())));
        assert_eq!(
            token("/ws?x=1&token=a.b.c&y", None),
            Ok(Some("a.b.c".into()))
        );
        assert_eq!(token("/ws?token=a%2Eb.c", None), Ok(Some("a.b.c".into())));
        assert_eq!(token("/ws", Some("Bearer a.b.c")), Ok(Some("a.b.c".into())));
        assert_eq!(
            token("/ws", Some("bearer   a.b.c ")),
            Ok(Some("a.b.c".into()))
        );
        assert_eq!(
            token("/ws?token=q.q.q", Some("Bearer h.h.h")),
            Ok(Some("q.q.q".into())),
            "the query wins"
        );
        assert_eq!(token("/ws", None), Ok(None));
        assert_eq!(token("/ws?tokens=x&atoken=y", None), Ok(None));
        assert_eq!(token("/ws", Some("Basic dXNlcjpwdw==")), Ok(None));
        assert_eq!(token("/ws?token=", None), Ok(Some(String::new())));
        for bad in ["/ws?token=a%2", "/ws?token=a%zz", "/ws?token=%FF%FE"] {
            assert!(
                matches!(token(bad, None), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
