//! The public listener: the WebSocket upgrade and a liveness check.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Body, text};
use crate::auth::Identity;
use crate::node::NodeInner;
use crate::protocol::Protocol;
use crate::session;

pub(super) async fn route(node: Arc<NodeInner>, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => upgrade(node, req),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
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
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "expected a WebSocket upgrade request".into(),
        );
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
    let identity = Identity::anonymous();
    node.sessions.clone().spawn(async move {
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
