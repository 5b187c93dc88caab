//! A tiny in-process stand-in for a Switchboard node: `/ws` with the JSON subprotocol
//! (welcome, subscribe, messages) and `POST /api/v1/publish`, one bus for everyone, from which
//! each connection forwards the messages of the channel it subscribed to.
//! Channels named `hist:...` behave as if their namespace kept history: every publish gets the
//! next offset (one counter for all of them), messages carry `offset` and `epoch`, and
//! `subscribed` names the newest offset (no history is kept, so `recover` is not supported).
//! On `/app/{key}` it speaks the Pusher protocol instead (connection established, a public
//! `pusher:subscribe` of `NAME`, and the messages published to `bench:NAME` as `message` events
//! whose `data` is the published JSON as a string), for the generator's `--protocol pusher`.
//! A faithful stand-in (`Fault::None`) answers `GET /metrics` with a delivery latency histogram
//! that puts every publish in the 1 ms bucket; the faulty ones have no `/metrics`.
//! Enough to check the generator's own accounting, and to measure the generator's cost
//! without a real node (`cargo run --release -p switchboard-bench --example mock_node`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// How the stand-in misbehaves.
#[derive(Clone, Copy, PartialEq)]
#[allow(dead_code)] // each user needs only some
pub enum Fault {
    /// Delivers every publish once.
    None,
    /// Drops every 7th publish (accepted, then never delivered).
    Drop,
    /// Delivers every 5th publish twice.
    Duplicate,
}

/// Where the stand-in listens.
pub struct Mock {
    /// Address of the WebSocket listener.
    pub ws: SocketAddr,
    /// Address of the API listener.
    pub api: SocketAddr,
}

/// Starts the stand-in on port 0 in a runtime of its own thread.
pub fn start_mock(fault: Fault) -> Mock {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(Mock {
                ws: ws.local_addr().unwrap(),
                api: api.local_addr().unwrap(),
            })
            .unwrap();
            let (bus, _) = broadcast::channel::<Arc<str>>(65536);
            let count = Arc::new(AtomicU64::new(0));
            let ws_bus = bus.clone();
            let ws_count = count.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = ws.accept().await {
                    tokio::spawn(serve_ws(tcp, ws_bus.subscribe(), ws_count.clone()));
                }
            });
            while let Ok((tcp, _)) = api.accept().await {
                let (bus, count) = (bus.clone(), count.clone());
                let svc = service_fn(move |req| publish(req, bus.clone(), count.clone(), fault));
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), svc));
            }
        });
    });
    rx.recv().unwrap()
}

// The callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn serve_ws(
    tcp: tokio::net::TcpStream,
    mut bus: broadcast::Receiver<Arc<str>>,
    count: Arc<AtomicU64>,
) {
    let mut pusher = false;
    let cb = |req: &WsRequest, mut resp: WsResponse| {
        pusher = req.uri().path().starts_with("/app/");
        if !pusher {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("switchboard.v1.json"),
            );
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
        return;
    };
    let welcome = if pusher {
        r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.1\",\"activity_timeout\":120}"}"#
    } else {
        r#"{"type":"welcome","conn":"c_1","node":"mock","user":"","heartbeat":25}"#
    };
    if ws.send(Message::text(welcome)).await.is_err() {
        return;
    }
    // `"channel":"NAME",` as it appears in a message frame of the subscribed channel.
    let mut subscribed: Option<String> = None;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) if pusher => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["event"], "pusher:subscribe");
                    let name = v["data"]["channel"].as_str().unwrap();
                    subscribed = Some(format!(r#""channel":"bench:{name}","#));
                    let reply = serde_json::json!({
                        "event": "pusher_internal:subscription_succeeded",
                        "channel": name,
                        "data": "{}",
                    });
                    if ws.send(Message::text(reply.to_string())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["type"], "subscribe");
                    subscribed = Some(format!(r#""channel":{},"#, v["channel"]));
                    let history = if v["channel"].as_str().unwrap().starts_with("hist:") {
                        format!(r#","epoch":"e1","offset":{},"recovered":false"#, count.load(Ordering::Relaxed))
                    } else {
                        String::new()
                    };
                    let reply = format!(r#"{{"type":"subscribed","id":{},"channel":{}{history}}}"#, v["id"], v["channel"]);
                    if ws.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            m = bus.recv() => match m {
                Ok(frame) if subscribed.as_ref().is_some_and(|c| frame.contains(c.as_str())) => {
                    let frame = if pusher { pusher_event(&frame) } else { frame.to_string() };
                    if ws.send(Message::text(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => panic!("mock lagged"),
                Err(_) => return,
            },
        }
    }
}

/// A native message frame of `bench:NAME` as a Pusher `message` event of `NAME`.
fn pusher_event(frame: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    let channel = v["channel"].as_str().unwrap();
    serde_json::json!({
        "event": "message",
        "channel": channel.strip_prefix("bench:").unwrap(),
        "data": v["data"].to_string(),
    })
    .to_string()
}

async fn publish(
    req: Request<Incoming>,
    bus: broadcast::Sender<Arc<str>>,
    count: Arc<AtomicU64>,
    fault: Fault,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/metrics" && fault == Fault::None {
        let n = count.load(Ordering::Relaxed);
        let h = "switchboard_delivery_latency_seconds";
        let text = format!(
            "# TYPE {h} histogram\n{h}_bucket{{le=\"0.0005\"}} 0\n{h}_bucket{{le=\"0.001\"}} {n}\n\
             {h}_bucket{{le=\"+Inf\"}} {n}\n{h}_sum 0\n{h}_count {n}\n"
        );
        return Ok(Response::new(Full::new(Bytes::from(text))));
    }
    if req.uri().path() != "/api/v1/publish" {
        let mut not_found = Response::new(Full::new(Bytes::from_static(b"{}")));
        *not_found.status_mut() = hyper::StatusCode::NOT_FOUND;
        return Ok(not_found);
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    let (history, answer) = if v["channel"].as_str().unwrap().starts_with("hist:") {
        (
            format!(r#","offset":{n},"epoch":"e1""#),
            format!(r#"{{"offset":{n},"epoch":"e1"}}"#),
        )
    } else {
        (String::new(), "{}".to_owned())
    };
    let frame: Arc<str> = format!(
        r#"{{"type":"message","channel":{},"data":{}{history}}}"#,
        v["channel"], v["data"]
    )
    .into();
    if !(fault == Fault::Drop && n.is_multiple_of(7)) {
        let _ = bus.send(frame.clone());
    }
    if fault == Fault::Duplicate && n.is_multiple_of(5) {
        let _ = bus.send(frame);
    }
    Ok(Response::new(Full::new(Bytes::from(answer))))
}
