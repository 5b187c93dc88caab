//! Start and stop: draining on SIGTERM/SIGINT, and failing to start.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_proto::client::server_frame::Frame;
use switchboard_testkit::raw_ws::{RawRead, opcode};
use switchboard_testkit::ws::{JSON_PROTOCOL, Upgrade};
use switchboard_testkit::{Node, RawWs, WsClient, run_switchboard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_and_exits_zero() {
    let mut node = Node::start("node-drain", &["--drain-timeout", "2"]).await;
    let url = node.ws_url();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = WsClient::connect_json(&url).await;
        client.subscribe("d").await;
        clients.push(client);
    }
    let mut proto = WsClient::connect_proto(&url).await;

    let signalled = Instant::now();
    node.sigterm();

    node.wait_readyz(503, Duration::from_secs(1)).await;
    let r = node.internal_raw("GET", "/readyz", &[], None).await;
    assert!(
        r.text().contains("draining"),
        "/readyz reason: {:?}",
        r.text()
    );
    match WsClient::try_upgrade(&url, &[JSON_PROTOCOL], &[]).await {
        Upgrade::Refused(503, _) => {}
        other => panic!("upgrade while draining: want 503, got {other:?}"),
    }
    let r = node.internal_raw("GET", "/healthz", &[], None).await;
    assert_eq!(
        r.status, 200,
        "/healthz while draining: the process is alive"
    );

    for client in &mut clients {
        let disconnect = client.expect_disconnect(1001).await;
        assert_eq!(
            disconnect,
            json!({"type": "disconnect", "code": 1001, "reason": "node shutting down", "reconnect": true})
        );
    }
    match proto.recv_frame().await.frame {
        Some(Frame::Disconnect(d)) => {
            assert_eq!((d.code, d.reconnect), (1001, true), "{d:?}");
        }
        other => panic!("proto client: want Disconnect 1001, got {other:?}"),
    }
    assert_eq!(proto.recv_close().await.0, 1001);

    let status = node.wait_exit(Duration::from_millis(3500)).await;
    let elapsed = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );
    assert!(
        elapsed < Duration::from_millis(3500),
        "exited {elapsed:?} after SIGTERM with --drain-timeout 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_too() {
    let mut node = Node::start("node-sigint", &["--drain-timeout", "1"]).await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    let signalled = Instant::now();
    node.sigint();
    let disconnect = client.expect_disconnect(1001).await;
    assert_eq!(disconnect["reconnect"], true);
    let status = node.wait_exit(Duration::from_millis(2500)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGINT: {status:?}"
    );
    assert!(signalled.elapsed() < Duration::from_millis(2500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run_switchboard(
        &["--listen", &addr, "--internal-listen", "127.0.0.1:0"],
        &[],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "public address in use: {:?}\nstderr: {}",
        out.status,
        out.stderr
    );
    let out = run_switchboard(
        &["--listen", "127.0.0.1:0", "--internal-listen", &addr],
        &[],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "internal address in use: {:?}\nstderr: {}",
        out.status,
        out.stderr
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_exit_even_with_unresponsive_clients() {
    let mut node = Node::start("node-stuck-drain", &["--drain-timeout", "2"]).await;
    // Two clients that will never read again nor answer the close handshake.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut raw = RawWs::connect(node.public_addr(), Some(JSON_PROTOCOL)).await;
        raw.recv_type("welcome").await;
        stuck.push(raw);
    }
    let mut polite = WsClient::connect_json(&node.ws_url()).await;
    let signalled = Instant::now();
    node.sigterm();
    polite.expect_disconnect(1001).await;
    let status = node.wait_exit(Duration::from_millis(4000)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_millis(3500),
        "exited {:?} after SIGTERM with --drain-timeout 2",
        signalled.elapsed()
    );
    // What the stuck clients had been sent: the disconnect and the close, then the end.
    for mut raw in stuck {
        let first = raw.recv_json().await;
        assert_eq!(first["type"], "disconnect", "{first}");
        assert_eq!(first["code"], 1001);
        match raw.read(Duration::from_secs(5)).await {
            RawRead::Frame(f) if f.opcode == opcode::CLOSE => assert_eq!(f.close_code(), 1001),
            other => panic!("after disconnect want close 1001, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_are_all_drained_within_the_window() {
    const CLIENTS: usize = 100;
    let mut node = Node::start("node-many-drain", &["--drain-timeout", "2"]).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(WsClient::connect_json(&node.ws_url()).await);
    }
    node.wait_metric("switchboard_connections", "== 100", |v| v == CLIENTS as f64)
        .await;
    let signalled = Instant::now();
    node.sigterm();
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                c.expect_disconnect(1001).await;
                signalled.elapsed()
            })
        })
        .collect();
    let mut latest = Duration::ZERO;
    for wait in waits {
        latest = latest.max(wait.await.expect("client task"));
    }
    assert!(
        latest < Duration::from_millis(2500),
        "last client disconnected {latest:?} after SIGTERM with --drain-timeout 2"
    );
    let status = node.wait_exit(Duration::from_millis(3500)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_millis(3500));
}
