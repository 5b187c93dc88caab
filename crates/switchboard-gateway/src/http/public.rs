//! The public listener: routes, the WebSocket upgrade (after
//! `policy::admission` lets it through; its session then runs in `session`),
//! a liveness check, the browser client (`/client.js`) and, unless switched
//! off, the demo page (`/`, `/demo.js`, and `/status` in `http::demo`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Body, text};
use crate::node::NodeInner;
use crate::policy::admission::{self, UpgradeRefusal};
use crate::policy::limits::PendingGuard;
use crate::protocol::{ErrorCode, Protocol};
use crate::session;

/// The client's address, put on each request by the listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

pub(super) async fn route(node: Arc<NodeInner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    // The Pusher endpoint, when an app is configured.
    if let Some(key) = path.strip_prefix("/app/")
        && req.method() == Method::GET
        && !node.config.pusher.is_empty()
    {
        let key = key.to_owned();
        return upgrade(node, req, Some(key));
    }
    if (path.starts_with("/apps/") || path.starts_with("/users/")) && !node.config.pusher.is_empty()
    {
        return super::pusher::route(node, req).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(node, req, None),
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
        (&Method::GET, "/status") if node.config.demo => super::demo::status(&node).await,
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
pub(super) fn asset(body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
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

/// Upgrades `/ws` (`pusher_key: None`) or the Pusher endpoint `/app/{key}`.
fn upgrade(
    node: Arc<NodeInner>,
    mut req: Request<Incoming>,
    pusher_key: Option<String>,
) -> Response<Body> {
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let endpoint = match &pusher_key {
        None => admission::Endpoint::Native,
        Some(_) => admission::Endpoint::Pusher,
    };
    let admitted = match admission::admit_upgrade(&node, &req, peer, endpoint) {
        Ok(admitted) => admitted,
        Err(refusal) => return refused(*refusal),
    };
    // Take the upgrade before fastwebsockets builds the 101: the session gets the
    // raw TCP stream, split without a lock between reader and writer.
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (response, _) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(r) => r,
        Err(e) => {
            metrics::counter!("switchboard_upgrades_rejected_total", "reason" => "handshake")
                .increment(1);
            return text(
                StatusCode::BAD_REQUEST,
                format!("bad WebSocket handshake: {e}\n"),
            );
        }
    };
    let mut response = response.map(|_| Body::default());
    if let Some(p) = admitted.protocol {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(p.name()),
        );
    }
    let (protocol, pusher) = match &pusher_key {
        None => (admitted.protocol.unwrap_or(Protocol::Json), None),
        Some(key) => (
            Protocol::Pusher,
            Some(admission::pusher_app(&node, key, req.uri().query())),
        ),
    };
    let (slot, identity) = (admitted.slot, admitted.identity);
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
                    pusher,
                )
                .await
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });
    response
}

/// Admits a new connection on the public listener into its HTTP phase
/// ([`admission::enter_http_phase`]), or refuses it at once with a 429
/// written straight to the socket.
pub(super) fn admit(node: &NodeInner, tcp: &TcpStream, peer: SocketAddr) -> Option<PendingGuard> {
    let message = match admission::enter_http_phase(node, peer.ip()) {
        Ok(guard) => return Some(guard),
        Err(message) => message,
    };
    tracing::debug!(%peer, "too many connections in their HTTP phase from one address");
    let body =
        serde_json::json!({"error": {"code": ErrorCode::RateLimited.as_str(), "message": message}})
            .to_string()
            + "\n";
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

/// The answer to a refused upgrade: a JSON error object when the refusal has
/// an error code, plain text otherwise.
fn refused(refusal: UpgradeRefusal) -> Response<Body> {
    let mut response = match refusal.code {
        Some(code) => super::json(
            refusal.status,
            &serde_json::json!({"error": {"code": code.as_str(), "message": refusal.message}}),
        ),
        None => text(refusal.status, refusal.message + "\n"),
    };
    response.headers_mut().extend(refusal.headers);
    response
}
