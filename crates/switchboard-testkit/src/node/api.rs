//! A node's HTTP API on its internal listener (and raw requests to either listener).

use std::time::Duration;

use serde_json::Value;

use super::{Node, START_TIMEOUT};
use crate::eventually;
use crate::http::{self, HttpResponse};

impl Node {
    /// An HTTP request to the internal listener, with the node's API key if it has one.
    pub async fn api(&self, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
        let auth = self.api_key.as_ref().map(|k| format!("apikey {k}"));
        let mut headers = Vec::new();
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth.as_str()));
        }
        let body = body.map(|b| serde_json::to_vec(b).expect("serialize body"));
        http::request(self.internal, method, path, &headers, body.as_deref()).await
    }

    /// A raw HTTP request to the internal listener (no automatic API key).
    pub async fn internal_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        http::request(self.internal, method, path, headers, body).await
    }

    /// A raw HTTP request to the public listener.
    pub async fn public_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        http::request(self.public, method, path, headers, body).await
    }

    /// `POST /api/v1/publish`, asserting 200; returns the body.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let body = serde_json::json!({ "channel": channel, "data": data });
        let response = self.api("POST", "/api/v1/publish", Some(&body)).await;
        assert_eq!(
            response.status,
            200,
            "POST /api/v1/publish {body} on node {}: {}",
            self.id,
            response.text()
        );
        response.json()
    }

    /// `POST /api/v1/publish` on a channel with history, asserting 200; returns the
    /// answer's `(offset, epoch)`.
    pub async fn publish_offset(&self, channel: &str, data: Value) -> (u64, String) {
        let answer = self.publish(channel, data).await;
        let offset = answer["offset"].as_u64().unwrap_or_else(|| {
            panic!(
                "publish to {channel} on node {}: answer without offset: {answer}",
                self.id
            )
        });
        let epoch = answer["epoch"].as_str().unwrap_or_else(|| {
            panic!(
                "publish to {channel} on node {}: answer without epoch: {answer}",
                self.id
            )
        });
        (offset, epoch.to_owned())
    }

    /// `GET /api/v1/channels/{channel}/history` with a query string (`""` or
    /// `"?limit=3"`...).
    pub async fn history_api(&self, channel: &str, query: &str) -> HttpResponse {
        self.api(
            "GET",
            &format!("/api/v1/channels/{channel}/history{query}"),
            None,
        )
        .await
    }

    /// `GET /api/v1/channels/{channel}/presence`.
    pub async fn presence_api(&self, channel: &str) -> HttpResponse {
        self.api("GET", &format!("/api/v1/channels/{channel}/presence"), None)
            .await
    }

    /// `POST /api/v1/send` `{"user":user,"data":data}`.
    pub async fn send_to_user(&self, user: &str, data: Value) -> HttpResponse {
        let body = serde_json::json!({ "user": user, "data": data });
        self.api("POST", "/api/v1/send", Some(&body)).await
    }

    /// `POST /api/v1/disconnect` with `body` (`{"user":U}` or `{"conn":ID}`).
    pub async fn disconnect_api(&self, body: Value) -> HttpResponse {
        self.api("POST", "/api/v1/disconnect", Some(&body)).await
    }

    /// `GET /api/v1/cluster` node ids, sorted.
    pub async fn cluster_ids(&self) -> Vec<String> {
        let response = self.api("GET", "/api/v1/cluster", None).await;
        assert_eq!(
            response.status,
            200,
            "GET /api/v1/cluster: {}",
            response.text()
        );
        let body = response.json();
        let mut ids: Vec<String> = body["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("cluster body without nodes array: {body}"))
            .iter()
            .map(|n| {
                n["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("node entry without id: {n}"))
                    .to_owned()
            })
            .collect();
        ids.sort();
        ids
    }

    /// The status of `GET /readyz`, or `None` if the listener does not answer.
    pub async fn readyz_status(&self) -> Option<u16> {
        match tokio::time::timeout(
            http::HTTP_TIMEOUT,
            http::try_request(self.internal, "GET", "/readyz", &[], None),
        )
        .await
        {
            Ok(Ok(response)) => Some(response.status),
            _ => None,
        }
    }

    /// Waits until `/readyz` answers `want`.
    pub async fn wait_readyz(&self, want: u16, timeout: Duration) {
        eventually(
            &format!("node {} /readyz == {want}", self.id),
            timeout,
            || async {
                match self.readyz_status().await {
                    Some(s) if s == want => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    }

    /// Waits until `/readyz` is 200.
    pub async fn wait_ready(&self) {
        self.wait_readyz(200, START_TIMEOUT).await
    }
}
