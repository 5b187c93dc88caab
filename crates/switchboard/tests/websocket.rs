//! The WebSocket layer against RFC 6455, seen from a raw socket: the handshake's
//! answers, the close frame alone for a peer that broke the protocol, the closing
//! handshake, close codes, UTF-8 checked fragment by fragment, control frames on the
//! command rate, and the per-address cap on connections still in their HTTP phase.
//! (The whole Autobahn TestSuite runs against the same layer in
//! `.ci/steps/15-autobahn.sh`.)

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use switchboard_testkit::raw_ws::{RawRead, encode_frame, opcode};
use switchboard_testkit::ws::JSON_PROTOCOL;
use switchboard_testkit::{Node, RawWs, WsClient, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ: Duration = Duration::from_secs(10);

/// Sends a raw HTTP request and returns the response head (status line and headers),
/// or what came before the server closed.
async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    read_head(&mut stream).await
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            return String::from_utf8_lossy(&got[..end]).into_owned();
        }
        match tokio::time::timeout(READ, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no HTTP answer within {READ:?}; got {got:?}"),
        }
    }
}

/// An upgrade request with the given HTTP version, WebSocket version and key.
fn upgrade_request(addr: SocketAddr, http: &str, version: &str, key: &str) -> String {
    format!(
        "GET /ws {http}\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn status(head: &str) -> &str {
    head.lines().next().unwrap_or_default()
}

/// A connected raw client past its welcome; returns it with its `conn` id.
async fn raw_client(node: &Node) -> (RawWs, String) {
    let mut raw = RawWs::connect(node.public_addr(), Some(JSON_PROTOCOL)).await;
    let welcome = Box::pin(raw.recv_type("welcome")).await;
    let conn = welcome["conn"].as_str().expect("conn").to_owned();
    (raw, conn)
}

/// The next frame (boxed: a raw read holds a 64 KiB buffer, too much for a test's
/// stack when several sit in one test's future).
async fn next(raw: &mut RawWs) -> RawRead {
    Box::pin(raw.read(READ)).await
}

/// Reads the next frame; panics unless it is a close frame, returns its code.
async fn expect_close(raw: &mut RawWs, what: &str) -> u16 {
    match next(raw).await {
        RawRead::Frame(f) if f.opcode == opcode::CLOSE => f.close_code(),
        RawRead::Frame(f) if f.opcode == opcode::TEXT => {
            panic!(
                "{what}: want the close frame alone, got text first: {}",
                f.json()
            )
        }
        other => panic!("{what}: want a close frame, got {other:?}"),
    }
}

/// After the client's own close frame, the server ends the TCP connection cleanly.
async fn expect_eof(raw: &mut RawWs, what: &str) {
    match next(raw).await {
        RawRead::Eof => {}
        other => panic!("{what}: want the server's end of stream, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_breaks_the_protocol_gets_the_close_frame_alone() {
    let node = Node::start("node-ws-fail", &[]).await;
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("unmasked frame", vec![0x81, 0x02, b'{', b'}'], 1002),
        ("reserved opcode", encode_frame(true, 0x3, b"?"), 1002),
        (
            "text that is not UTF-8",
            encode_frame(
                true,
                opcode::TEXT,
                b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}",
            ),
            1007,
        ),
    ];
    for (what, wire, code) in cases {
        let (mut raw, _) = raw_client(&node).await;
        raw.send_raw(&wire, wire.len()).await;
        assert_eq!(expect_close(&mut raw, what).await, code, "{what}");
        // The client answers the close; the node has ended its side, cleanly.
        raw.try_send_frame(true, opcode::CLOSE, &code.to_be_bytes())
            .await;
        expect_eof(&mut raw, what).await;
    }
    assert_eq!(node.readyz_status().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_version_other_than_13_gets_426_naming_13() {
    let node = Node::start("node-ws-version", &[]).await;
    let addr = node.public_addr();
    let head = raw_http(addr, &upgrade_request(addr, "HTTP/1.1", "8", KEY)).await;
    assert!(
        status(&head).starts_with("HTTP/1.1 426"),
        "version 8:\n{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nsec-websocket-version: 13"),
        "version 8: the answer must name version 13:\n{head}"
    );
    let refused = node
        .metric_with(
            "switchboard_upgrades_rejected_total",
            &[("reason", "websocket_version")],
        )
        .await;
    assert_eq!(refused, 1.0, "the 426 is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_16_bytes_of_base64_gets_400() {
    let node = Node::start("node-ws-key", &[]).await;
    let addr = node.public_addr();
    for key in [
        "abc",
        "not base64 at all!!!!!!!",
        "dGhlIHNhbXBsZSBub25j",     // 15 bytes
        "dGhlIHNhbXBsZSBub25jZSE=", // 17 bytes
        "dGhlIHNhbXBsZSBub25jZQ",   // unpadded
    ] {
        let head = raw_http(addr, &upgrade_request(addr, "HTTP/1.1", "13", key)).await;
        assert!(
            status(&head).starts_with("HTTP/1.1 400"),
            "key {key:?}:\n{head}"
        );
    }
    let head = raw_http(addr, &upgrade_request(addr, "HTTP/1.1", "13", KEY)).await;
    assert!(status(&head).starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_upgrade_gets_400() {
    let node = Node::start("node-ws-http10", &[]).await;
    let addr = node.public_addr();
    let head = raw_http(addr, &upgrade_request(addr, "HTTP/1.0", "13", KEY)).await;
    assert!(
        status(&head).contains(" 400"),
        "HTTP/1.0 upgrade must be refused with 400:\n{head}"
    );

    // The same request over HTTP/1.1 is accepted.
    let head = raw_http(addr, &upgrade_request(addr, "HTTP/1.1", "13", KEY)).await;
    assert!(status(&head).starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_1012_to_1014_are_valid_and_reserved_ones_are_not() {
    let node = Node::start("node-ws-codes", &[]).await;
    for code in [
        1000u16, 1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
    ] {
        let (mut raw, _) = raw_client(&node).await;
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        raw.send_frame(true, opcode::CLOSE, &payload).await;
        let echoed = expect_close(&mut raw, &format!("close {code}")).await;
        assert_eq!(echoed, code, "a client's close {code} is echoed");
        expect_eof(&mut raw, &format!("close {code}")).await;
    }
    for code in [999u16, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000] {
        let (mut raw, _) = raw_client(&node).await;
        raw.send_frame(true, opcode::CLOSE, &code.to_be_bytes())
            .await;
        let answer = expect_close(&mut raw, &format!("close {code}")).await;
        assert_eq!(answer, 1002, "close code {code} is a protocol error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_waits_for_the_clients_close_frame_before_closing_tcp() {
    let node = Node::start("node-ws-closing", &[]).await;

    // A client that answers: the node closes TCP only after the answer.
    let (mut raw, conn) = raw_client(&node).await;
    let r = node.disconnect_api(json!({ "conn": conn })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let disconnect = Box::pin(raw.recv_type("disconnect")).await;
    assert_eq!(disconnect["code"], 4100, "{disconnect}");
    assert_eq!(expect_close(&mut raw, "API disconnect").await, 4100);
    // The node's side stays open for the client's close frame: no end of stream yet.
    match tokio::time::timeout(Duration::from_millis(500), next(&mut raw)).await {
        Err(_) => {}
        Ok(got) => panic!("the node closed TCP before the client's close frame: {got:?}"),
    }
    raw.send_frame(true, opcode::CLOSE, &4100u16.to_be_bytes())
        .await;
    expect_eof(&mut raw, "after the client's close frame").await;
    assert_eq!(
        node.metric("switchboard_close_handshake_timeouts_total")
            .await,
        0.0
    );

    // A client that never answers is let go after the wait, and counted.
    let (mut silent, conn) = raw_client(&node).await;
    node.disconnect_api(json!({ "conn": conn })).await;
    Box::pin(silent.recv_type("disconnect")).await;
    assert_eq!(expect_close(&mut silent, "API disconnect").await, 4100);
    node.wait_metric("switchboard_close_handshake_timeouts_total", "= 1", |v| {
        v == 1.0
    })
    .await;
    expect_eof(&mut silent, "after the close wait").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_is_checked_fragment_by_fragment() {
    let node = Node::start("node-ws-utf8", &[]).await;

    // An invalid first fragment fails the connection before any more fragments.
    for (what, fragment) in [
        ("a surrogate", &b"{\"x\":\"\xed\xa0\x80"[..]),
        ("a code point past U+10FFFF", &b"{\"x\":\"\xf4\x90"[..]),
        ("a stray continuation byte", &b"{\"x\":\"\x80"[..]),
    ] {
        let (mut raw, _) = raw_client(&node).await;
        raw.send_frame(false, opcode::TEXT, fragment).await;
        assert_eq!(expect_close(&mut raw, what).await, 1007, "{what}");
    }

    // ... also when the bad byte comes in a later fragment.
    let (mut raw, _) = raw_client(&node).await;
    raw.send_frame(false, opcode::TEXT, b"{\"type\":").await;
    raw.send_frame(false, opcode::CONTINUATION, b"\"ping\xc0\xaf")
        .await;
    assert_eq!(expect_close(&mut raw, "later fragment").await, 1007);

    // A character split between fragments is fine.
    let (mut raw, _) = raw_client(&node).await;
    let text = "{\"type\":\"ping\",\"id\":7,\"x\":\"\u{2603}\u{1F600}\"}".as_bytes();
    let snowman = text.iter().position(|&b| b == 0xE2).expect("snowman");
    let emoji = text.iter().position(|&b| b == 0xF0).expect("emoji");
    raw.send_frame(false, opcode::TEXT, &text[..snowman + 1])
        .await;
    raw.send_frame(false, opcode::CONTINUATION, &text[snowman + 1..emoji + 2])
        .await;
    raw.send_frame(true, opcode::CONTINUATION, &text[emoji + 2..])
        .await;
    let pong = Box::pin(raw.recv_json()).await;
    assert_eq!(pong, json!({"type": "pong", "id": 7}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_held_to_the_command_rate_and_closed() {
    let node = Node::start(
        "node-ws-pings",
        &["--client-rate", "10", "--client-burst", "20"],
    )
    .await;
    let mut watcher = WsClient::connect_json(&node.ws_url()).await;
    watcher.subscribe("watched").await;

    let (mut raw, _) = raw_client(&node).await;
    let flood: Vec<u8> = (0..2000)
        .flat_map(|_| encode_frame(true, opcode::PING, b"x"))
        .collect();
    raw.send_raw(&flood, flood.len()).await;
    let mut pongs = 0;
    let disconnect = loop {
        match next(&mut raw).await {
            RawRead::Frame(f) if f.opcode == opcode::PONG => pongs += 1,
            RawRead::Frame(f) if f.opcode == opcode::TEXT => break f.json(),
            other => panic!("after {pongs} pongs: {other:?}"),
        }
    };
    assert_eq!(disconnect["type"], "disconnect", "{disconnect}");
    assert_eq!(disconnect["code"], 4029, "{disconnect}");
    assert_eq!(expect_close(&mut raw, "ping flood").await, 4029);
    // Bursts of 20, then the refill of 10/s: a few more over the test's run at most.
    assert!(
        pongs <= 40,
        "{pongs} pongs answered to a flood of 2000 pings"
    );
    assert!(
        node.metric_with(
            "switchboard_limit_rejections_total",
            &[("limit", "control_rate")],
        )
        .await
            >= 20.0
    );

    // The other client is unaffected.
    node.publish("watched", json!({"after": "flood"})).await;
    let m = watcher.recv_json().await;
    assert_eq!(m["data"], json!({"after": "flood"}), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_in_their_http_phase_are_capped_per_address() {
    let node = Node::start("node-ws-pending", &["--max-pending-per-ip", "2"]).await;
    let addr = node.public_addr();

    // Two connections that never finish their request head hold both places.
    let mut first = TcpStream::connect(addr).await.expect("connect");
    first
        .write_all(b"GET /ws HTTP/1.1\r\n")
        .await
        .expect("write");
    let second = TcpStream::connect(addr).await.expect("connect");
    // The third is refused at once with 429, before it sends anything.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let head = read_head(&mut third).await;
    assert!(status(&head).starts_with("HTTP/1.1 429"), "{head}");
    node.wait_metric_with(
        "switchboard_limit_rejections_total",
        &[("limit", "pending_per_ip")],
        ">= 1",
        |v| v >= 1.0,
    )
    .await;

    // Once they go, connections are admitted again.
    drop(first);
    drop(second);
    eventually("a free place", READ, || async {
        let head = raw_http(
            addr,
            &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        if status(&head).starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(head)
        }
    })
    .await;

    // Open WebSockets do not count: three at once, with two places.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(WsClient::connect_json(&node.ws_url()).await);
    }
    let mut last = WsClient::connect_json(&node.ws_url()).await;
    last.send_json(&json!({"type": "ping", "id": 1})).await;
    assert_eq!(last.recv_json().await, json!({"type": "pong", "id": 1}));
}
