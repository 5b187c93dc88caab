//! The public listener: the WebSocket upgrade, a liveness check, the browser
//! client (`/client.js`) and, unless switched off, the demo page (`/`,
//! `/demo.js`) with its cluster panel's `/status`.
//!
//! Before its request is read, a connection passes the client address's cap
//! on connections still in their HTTP phase (429, [`admit`]). An upgrade
//! request then passes, in order: drain, the WebSocket handshake rules
//! (`ws::handshake`: 400, or 426 for a version other than 13), `Origin`,
//! subprotocol, the client address's connection rate (429), the node's
//! connection cap (503), and the token (401), then the handshake.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Body, text};
use crate::auth::TokenError;
use crate::limits::PendingGuard;
use crate::node::{NodeInner, StatusSample};
use crate::protocol::{ErrorCode, Protocol};
use crate::session;

/// The client's address, put on each request by the listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

pub(super) async fn route(node: Arc<NodeInner>, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(node, req),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/client.js") => asset(CLIENT_JS, JAVASCRIPT),
        (&Method::GET, "/" | "/index.html") if node.config.demo => {
            let mut response = asset(DEMO_HTML, "text/html; charset=utf-8");
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DEMO_CSP),
            );
            response
        }
        (&Method::GET, "/demo.js") if node.config.demo => asset(DEMO_JS, JAVASCRIPT),
        (&Method::GET, "/status") if node.config.demo => status(&node).await,
        (&Method::GET, "/") => text(
            StatusCode::OK,
            format!(
                "Switchboard node {}. WebSocket endpoint: /ws (subprotocols {} and {}).\n",
                node.config.node_id,
                Protocol::JSON_NAME,
                Protocol::PROTO_NAME
            ),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The browser client: `static/client.js`, a plain ES module.
const CLIENT_JS: &str = include_str!("../../static/client.js");
/// The demo page and its script.
const DEMO_HTML: &str = include_str!("../../static/index.html");
const DEMO_JS: &str = include_str!("../../static/demo.js");
const JAVASCRIPT: &str = "application/javascript; charset=utf-8";
/// The demo loads nothing from elsewhere; it may connect to other nodes (their
/// `/ws` and `/status`).
const DEMO_CSP: &str = "default-src 'self'; connect-src 'self' ws: wss: http: https:; style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'";

/// A static file, revalidated on each load so a node upgrade takes effect at once.
fn asset(body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(body.into()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The demo's cluster panel: every live node with its connections and
/// subscriptions, and the messages per second this node receives from the
/// backplane. Computed at most once a second however many pages poll it.
async fn status(node: &NodeInner) -> Response<Body> {
    let mut last = node.status.lock().await;
    let now = tokio::time::Instant::now();
    if let Some(sample) = last.as_ref()
        && now.duration_since(sample.at) < Duration::from_secs(1)
    {
        return status_response(sample.body.clone());
    }
    let envelopes_in = node.envelopes_in.load(Ordering::Relaxed);
    let per_second = last.as_ref().map_or(0.0, |sample| {
        envelopes_in.saturating_sub(sample.envelopes_in) as f64
            / now.duration_since(sample.at).as_secs_f64()
    });
    let nodes = match tokio::time::timeout(Duration::from_secs(2), node.backplane.nodes()).await {
        Ok(Ok(nodes)) => nodes,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "status: node list unavailable");
            Vec::new()
        }
        Err(_) => Vec::new(),
    };
    let body = serde_json::json!({
        "node": node.config.node_id,
        "backplane": node.backplane.kind(),
        "messages_per_second": (per_second * 10.0).round() / 10.0,
        "nodes": nodes.iter().map(|n| serde_json::json!({
            "id": n.id,
            "connections": n.connections,
            "subscriptions": n.subscriptions,
        })).collect::<Vec<_>>(),
    });
    let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    *last = Some(StatusSample {
        at: now,
        envelopes_in,
        body: body.clone(),
    });
    status_response(body)
}

/// Readable from any origin: a page served by one node shows the status of the
/// node it is connected to, which may be another.
fn status_response(body: Bytes) -> Response<Body> {
    let mut response = asset(body, "application/json");
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

fn upgrade(node: Arc<NodeInner>, mut req: Request<Incoming>) -> Response<Body> {
    let refuse = |status: StatusCode, reason: &'static str, message: String| {
        metrics::counter!("switchboard_upgrades_rejected_total", "reason" => reason).increment(1);
        text(status, message + "\n")
    };
    if node.is_draining() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining; connect to another node".into(),
        );
    }
    if let Err(refusal) = crate::ws::handshake::check(&req) {
        let mut response = refuse(refusal.status, refusal.reason, refusal.message.into());
        response.headers_mut().extend(refusal.headers());
        return response;
    }
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && !origin_allowed(&node.config.allowed_origins, origin)
    {
        return refuse(StatusCode::FORBIDDEN, "origin", "origin not allowed".into());
    }
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let negotiated = match Protocol::negotiate(Some(offered.as_str())) {
        Ok(p) => p,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, "subprotocol", message),
    };
    if let Some(PeerAddr(peer)) = req.extensions().get::<PeerAddr>()
        && !node.gate.admit_ip(peer.ip(), tokio::time::Instant::now())
    {
        let mut response = refuse_json(
            StatusCode::TOO_MANY_REQUESTS,
            "ip_connect_rate",
            ErrorCode::RateLimited,
            format!(
                "too many new connections from your address: the limit is {} per second",
                node.config.limits.ip_connect_rate
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let Some(slot) = node.gate.try_slot() else {
        return refuse_json(
            StatusCode::SERVICE_UNAVAILABLE,
            "connections",
            ErrorCode::Unavailable,
            format!(
                "node is at its connection limit ({}); connect to another node",
                node.gate.max_connections()
            ),
        );
    };
    let identity = match bearer_token(&req).and_then(|token| {
        node.authenticator
            .identify(token.as_deref().filter(|t| !t.is_empty()))
    }) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::debug!(error = %e, "token refused");
            let mut response = refuse_json(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                ErrorCode::Unauthorized,
                e.to_string(),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    // Take the upgrade before fastwebsockets builds the 101: the session gets the
    // raw TCP stream, split without a lock between reader and writer.
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (response, _) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "handshake",
                format!("bad WebSocket handshake: {e}"),
            );
        }
    };
    let mut response = response.map(|_| Body::default());
    if let Some(p) = negotiated {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(p.name()),
        );
    }
    let protocol = negotiated.unwrap_or(Protocol::Json);
    node.sessions.clone().spawn(async move {
        // Held until the session ends (or the upgrade fails).
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                session::run(
                    node,
                    parts.io.into_inner(),
                    parts.read_buf,
                    protocol,
                    identity,
                )
                .await
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });
    response
}

/// Admits a new connection on the public listener, or refuses it at once
/// with a 429 when its address already has `max_pending_per_ip` connections
/// in their HTTP phase. The guard is held until the connection's HTTP phase
/// ends: its last response, or the hand-over of an upgraded socket to its
/// session (open WebSockets do not count).
pub(super) fn admit(node: &NodeInner, tcp: &TcpStream, peer: SocketAddr) -> Option<PendingGuard> {
    if let Some(guard) = node.gate.enter_pending(peer.ip()) {
        return Some(guard);
    }
    tracing::debug!(%peer, "too many connections in their HTTP phase from one address");
    let body = format!(
        "{{\"error\":{{\"code\":\"rate_limited\",\"message\":\"too many connections being set up from your address: the limit is {}\"}}}}\n",
        node.gate.max_pending_per_ip()
    );
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer takes these few bytes at once; if it does
    // not, the client is refused all the same (it sees the connection close).
    if let Err(e) = tcp.try_write(response.as_bytes()) {
        tracing::debug!(%peer, error = %e, "429 not written");
    }
    None
}

/// A refused upgrade with a JSON error body, counted by reason.
fn refuse_json(
    status: StatusCode,
    reason: &'static str,
    code: ErrorCode,
    message: String,
) -> Response<Body> {
    metrics::counter!("switchboard_upgrades_rejected_total", "reason" => reason).increment(1);
    super::json(
        status,
        &serde_json::json!({"error": {"code": code.as_str(), "message": message}}),
    )
}

/// The token a client presents: `?token=` (percent-decoded) first, else an
/// `Authorization: Bearer` header; `None` when there is neither.
fn bearer_token<B>(req: &Request<B>) -> Result<Option<Cow<'_, str>>, TokenError> {
    if let Some(query) = req.uri().query() {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("token=") {
                return percent_decode(value).map(Some).ok_or_else(|| {
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

/// Decodes `%XX` escapes; `None` for a broken escape or non-UTF-8 result.
pub(super) fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Whether a browser `Origin` may connect: any when the list is empty; else an
/// exact match (ignoring ASCII case) or a prefix match for patterns ending in `*`.
fn origin_allowed(allowed: &[String], origin: &HeaderValue) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc").as_deref(), Some("abc"));
        assert_eq!(percent_decode("a%20b%2fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%é1"), None);
        assert_eq!(percent_decode("%+1"), None);
    }

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
}
