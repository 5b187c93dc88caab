//! The demo's cluster panel (`/status` on the public listener, served only
//! while the demo is on).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use hyper::Response;
use hyper::header::{self, HeaderValue};

use super::Body;
use super::public::asset;
use crate::node::{NodeInner, StatusSample};

/// The demo's cluster panel: every live node with its connections and
/// subscriptions, and the messages per second this node receives from the
/// backplane. Computed at most once a second however many pages poll it.
pub(super) async fn status(node: &NodeInner) -> Response<Body> {
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
