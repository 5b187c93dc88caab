//! Pusher webhooks from a two-node cluster: occupied and vacated are decided
//! for the whole cluster (once each, whichever node the subscribers are on),
//! member events once per user, and a node that dies vacates its channels.
//! Every request is checked against the app's signature.

use std::convert::Infallible;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;
use switchboard_testkit::{Node, RedisServer, TempDir, WsClient};
use tokio::sync::mpsc;

/// A webhook receiver on a free port: every event of every valid request,
/// in order; a request with a bad signature fails the test.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let key = header(&req, "x-pusher-key");
                        let signature = header(&req, "x-pusher-signature");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        assert_eq!(key, "app1-key");
                        assert_eq!(signature, sign(&body), "webhook signature");
                        let batch: Value = serde_json::from_slice(&body).unwrap();
                        assert!(batch["time_ms"].as_u64().is_some(), "{batch}");
                        for event in batch["events"].as_array().unwrap() {
                            let _ = tx.send(event.clone());
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (url, rx)
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn sign(message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"app1-secret").expect("any key length");
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The next webhook event (10 s at most).
async fn next(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a webhook within 10 s")
        .expect("receiver running")
}

/// A Pusher connection past its `connection_established`, with its socket id.
async fn connect(node: &Node) -> (WsClient, String) {
    let url = format!("ws://{}/app/app1-key?protocol=7", node.public_addr());
    let mut ws = WsClient::connect_plain(&url).await;
    let first = ws.recv_json().await;
    let data: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
    (ws, data["socket_id"].as_str().unwrap().to_owned())
}

async fn subscribe_presence(ws: &mut WsClient, socket_id: &str, channel: &str, user: &str) {
    let data = json!({"user_id": user}).to_string();
    let auth = format!(
        "app1-key:{}",
        sign(format!("{socket_id}:{channel}:{data}").as_bytes())
    );
    ws.send_json(&json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}}))
        .await;
    ws.take_json(|v| v["event"] == "pusher_internal:subscription_succeeded")
        .await;
}

async fn subscribe_public(ws: &mut WsClient, channel: &str) {
    ws.send_json(&json!({"event": "pusher:subscribe", "data": {"channel": channel}}))
        .await;
    ws.take_json(|v| v["event"] == "pusher_internal:subscription_succeeded")
        .await;
}

#[tokio::test]
async fn occupied_vacated_and_member_webhooks_are_decided_for_the_whole_cluster() {
    let (url, mut hooks) = receiver().await;
    let dir = TempDir::new("pusher-webhooks");
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[[pusher.apps]]\nid = \"app1\"\nkey = \"app1-key\"\nsecret = \"app1-secret\"\nwebhook_url = \"{url}\"\n"
        ),
    )
    .unwrap();
    let redis = RedisServer::start().await;
    let config = config.to_str().unwrap();
    let n1 = Node::builder("hooks-1")
        .redis(&redis)
        .args(["--config", config, "--registry-interval", "0.3"])
        .start()
        .await;
    let mut n2 = Node::builder("hooks-2")
        .redis(&redis)
        .args(["--config", config, "--registry-interval", "0.3"])
        .start()
        .await;

    // One public channel, a subscriber on each node: occupied once.
    let (mut a, _) = connect(&n1).await;
    subscribe_public(&mut a, "room").await;
    assert_eq!(
        next(&mut hooks).await,
        json!({"name": "channel_occupied", "channel": "room"})
    );
    let (mut b, _) = connect(&n2).await;
    subscribe_public(&mut b, "room").await;
    // The first leaves: nothing; the second leaves: vacated once.
    a.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": "room"}}))
        .await;
    b.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": "room"}}))
        .await;
    assert_eq!(
        next(&mut hooks).await,
        json!({"name": "channel_vacated", "channel": "room"})
    );

    // A presence member on the node that will die: its channel is vacated and
    // its user removed when its entries expire, reported by the survivor.
    let (mut u, socket_id) = connect(&n2).await;
    subscribe_presence(&mut u, &socket_id, "presence-lobby", "u1").await;
    let mut got = vec![next(&mut hooks).await, next(&mut hooks).await];
    got.sort_by_key(|e| e["name"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        [
            json!({"name": "channel_occupied", "channel": "presence-lobby"}),
            json!({"name": "member_added", "channel": "presence-lobby", "user_id": "u1"}),
        ]
    );
    n2.kill().await;
    let mut got = vec![next(&mut hooks).await, next(&mut hooks).await];
    got.sort_by_key(|e| e["name"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        [
            json!({"name": "channel_vacated", "channel": "presence-lobby"}),
            json!({"name": "member_removed", "channel": "presence-lobby", "user_id": "u1"}),
        ]
    );
    // Nothing more (each transition once).
    assert!(
        tokio::time::timeout(Duration::from_secs(3), hooks.recv())
            .await
            .is_err(),
        "no further webhook"
    );
    drop(n1);
}
