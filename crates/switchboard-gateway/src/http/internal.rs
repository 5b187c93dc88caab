//! The internal listener: metrics, health, readiness and the server API.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};

use super::{Body, api, text};
use crate::node::NodeInner;

pub(super) async fn route(node: Arc<NodeInner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path.starts_with("/api/") {
        return api::handle(node, req).await;
    }
    if (path.starts_with("/apps/") || path.starts_with("/users/")) && !node.config.pusher.is_empty()
    {
        return super::pusher::route(node, req).await;
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => match &node.prometheus {
            Some(handle) => {
                let mut r = text(StatusCode::OK, handle.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "metrics recorder not installed\n"),
        },
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match node.not_ready() {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
