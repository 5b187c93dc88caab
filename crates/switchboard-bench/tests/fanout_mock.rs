//! Runs the `fanout` scenario against a tiny in-process stand-in for a node, to check the
//! generator's own accounting: a faithful node must give a clean report (exit 0), and a node
//! that loses or repeats messages must be caught (exit 1). The real node is measured with the
//! same binary; see the crate's README section in the final report.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
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
enum Fault {
    None,
    /// Drops every 7th publish (accepted, then never delivered).
    Drop,
    /// Delivers every 5th publish twice.
    Duplicate,
}

struct Mock {
    ws: SocketAddr,
    api: SocketAddr,
}

/// Starts the stand-in on port 0 in a runtime of its own thread.
fn start_mock(fault: Fault) -> Mock {
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
            tokio::spawn(async move {
                while let Ok((tcp, _)) = ws.accept().await {
                    tokio::spawn(serve_ws(tcp, ws_bus.subscribe()));
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
async fn serve_ws(tcp: tokio::net::TcpStream, mut bus: broadcast::Receiver<Arc<str>>) {
    let cb = |_: &WsRequest, mut resp: WsResponse| {
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("switchboard.v1.json"),
        );
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
        return;
    };
    let welcome = r#"{"type":"welcome","conn":"c_1","node":"mock","user":"","heartbeat":25}"#;
    if ws.send(Message::text(welcome)).await.is_err() {
        return;
    }
    let mut subscribed = false;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["type"], "subscribe");
                    subscribed = true;
                    let reply = format!(r#"{{"type":"subscribed","id":{},"channel":{}}}"#, v["id"], v["channel"]);
                    if ws.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            m = bus.recv() => match m {
                Ok(frame) if subscribed => {
                    if ws.send(Message::text(frame.to_string())).await.is_err() {
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

async fn publish(
    req: Request<Incoming>,
    bus: broadcast::Sender<Arc<str>>,
    count: Arc<AtomicU64>,
    fault: Fault,
) -> Result<Response<Full<Bytes>>, Infallible> {
    assert_eq!(req.uri().path(), "/api/v1/publish");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let frame: Arc<str> = format!(
        r#"{{"type":"message","channel":{},"data":{}}}"#,
        v["channel"], v["data"]
    )
    .into();
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    if !(fault == Fault::Drop && n.is_multiple_of(7)) {
        let _ = bus.send(frame.clone());
    }
    if fault == Fault::Duplicate && n.is_multiple_of(5) {
        let _ = bus.send(frame);
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))
}

fn run_bench(mock: &Mock) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args([
            "fanout",
            "--subscribers",
            "50",
            "--rate",
            "200",
            "--duration",
            "1.5",
        ])
        .args([
            "--warmup",
            "0.5",
            "--payload",
            "100",
            "--channel",
            "bench:t",
            "--json",
        ])
        .args([
            "--ws",
            &format!("ws://{}/ws", mock.ws),
            "--ws",
            &format!("ws://{}/ws", mock.ws),
        ])
        .args(["--api", &format!("http://{}", mock.api)])
        .args(["--node-pid", &std::process::id().to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with `--nocapture`.
    eprintln!("{stdout}{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let json = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON line ({e}):\n{stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn a_faithful_node_gives_a_clean_report() {
    let (code, r) = run_bench(&start_mock(Fault::None));
    assert_eq!(code, 0, "{r:#}");
    let published = r["publishes_measured"].as_u64().unwrap();
    assert!((180..=220).contains(&published), "{r:#}");
    assert_eq!(r["deliveries"].as_u64(), Some(published * 50));
    assert_eq!(r["lost"], 0);
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["nodes"][0]["cpu_secs"].as_f64().is_some(), "{r:#}");
}

#[test]
fn loss_is_caught() {
    let (code, r) = run_bench(&start_mock(Fault::Drop));
    assert_eq!(code, 1, "{r:#}");
    assert!(r["lost"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["duplicated"], 0, "{r:#}");
    assert_eq!(r["out_of_order"], 0, "{r:#}");
}

#[test]
fn duplicates_are_caught() {
    let (code, r) = run_bench(&start_mock(Fault::Duplicate));
    assert_eq!(code, 1, "{r:#}");
    assert!(r["duplicated"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["lost"], 0, "{r:#}");
}
