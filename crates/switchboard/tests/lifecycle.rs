//! Start and stop: draining on SIGTERM/SIGINT, and failing to start.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::ws::{JSON_PROTOCOL, Upgrade};
use support::{Node, WsClient, run_switchboard};
use switchboard_proto::client::server_frame::Frame;

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
