//! Bad input from clients and API callers: each is answered as the contract says, the
//! node stays up, and a well-behaved subscriber on the same channel keeps receiving.

use prost::Message as _;
use serde_json::{Value, json};
use switchboard_proto::client::{
    ClientFrame, PublishRequest, SubscribeRequest, client_frame::Command, server_frame::Frame,
};
use switchboard_testkit::raw_ws::{RawRead, encode_frame, opcode};
use switchboard_testkit::ws::{JSON_PROTOCOL, PROTO_PROTOCOL, Upgrade};
use switchboard_testkit::{Node, RawWs, WsClient};

const WATCHED: &str = "watched";

/// A node with `--max-message-size 1024` and a subscriber that must never be disturbed.
struct Fixture {
    node: Node,
    watcher: WsClient,
    seq: u64,
}

impl Fixture {
    async fn start(id: &str, extra: &[&str]) -> Fixture {
        let node = Node::builder(id)
            .args(["--max-message-size", "1024"])
            .args(extra)
            .start()
            .await;
        let mut watcher = WsClient::connect_json(&node.ws_url()).await;
        watcher.subscribe(WATCHED).await;
        Fixture {
            node,
            watcher,
            seq: 0,
        }
    }

    /// The node is up and the watcher still receives, in order.
    async fn assert_healthy(&mut self, after: &str) {
        self.seq += 1;
        let data = json!({"seq": self.seq});
        self.node.publish(WATCHED, data.clone()).await;
        let m = self.watcher.recv_json().await;
        assert_eq!(
            m,
            json!({"type": "message", "channel": WATCHED, "data": data}),
            "watcher after {after}"
        );
        assert_eq!(self.node.readyz_status().await, Some(200), "after {after}");
    }
}

/// Asserts an `error` reply with `code`, and the given `id` (None: no `id` field).
fn assert_error(reply: &Value, code: &str, id: Option<u64>, what: &str) {
    assert_eq!(reply["type"], "error", "{what}: {reply}");
    assert_eq!(reply["code"], code, "{what}: {reply}");
    assert!(
        reply["message"].is_string(),
        "{what}: error has a message: {reply}"
    );
    match id {
        Some(id) => assert_eq!(
            reply["id"], id,
            "{what}: the readable id is echoed: {reply}"
        ),
        None => assert!(
            reply.get("id").is_none(),
            "{what}: no readable integer id, so no id: {reply}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_commands_get_bad_request() {
    let mut fx = Fixture::start("node-bad-json", &[]).await;
    let mut bad = WsClient::connect_json(&fx.node.ws_url()).await;
    bad.subscribe(WATCHED).await;

    let cases: &[(&str, &str, Option<u64>)] = &[
        ("truncated JSON", r#"{"type":"subscribe","channel":"#, None),
        ("not JSON", "hello there", None),
        ("empty text", "", None),
        ("array", r#"[{"type":"ping","id":1}]"#, None),
        ("number", "42", None),
        ("string", r#""ping""#, None),
        ("null", "null", None),
        ("unknown type", r#"{"type":"bogus","id":11}"#, Some(11)),
        ("type not a string", r#"{"type":5,"id":12}"#, Some(12)),
        ("missing type", r#"{"id":13,"channel":"x"}"#, Some(13)),
        (
            "subscribe without channel",
            r#"{"type":"subscribe","id":14}"#,
            Some(14),
        ),
        (
            "unsubscribe without channel",
            r#"{"type":"unsubscribe","id":15}"#,
            Some(15),
        ),
        (
            "publish without channel",
            r#"{"type":"publish","id":16,"data":1}"#,
            Some(16),
        ),
        (
            "publish without data",
            r#"{"type":"publish","id":17,"channel":"watched"}"#,
            Some(17),
        ),
        (
            "channel not a string",
            r#"{"type":"subscribe","id":18,"channel":5}"#,
            Some(18),
        ),
        ("string id", r#"{"type":"ping","id":"x"}"#, None),
        ("fractional id", r#"{"type":"ping","id":1.5}"#, None),
    ];
    for (what, text, id) in cases {
        bad.send_text(text).await;
        let reply = bad.recv_json().await;
        assert_error(&reply, "bad_request", *id, what);
        bad.ping_pong().await;
        fx.assert_healthy(what).await;
        // The bad client is still subscribed and receives too.
        assert_eq!(
            bad.recv_json().await["data"]["seq"],
            fx.seq,
            "bad client after {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_channel_names_get_bad_request() {
    let mut fx = Fixture::start("node-bad-channel", &[]).await;
    let mut client = WsClient::connect_json(&fx.node.ws_url()).await;

    let long = "a".repeat(256);
    let bad_names = [
        "",
        long.as_str(),
        "with space",
        "hash#tag",
        "star*",
        "caf\u{e9}",
        "new\nline",
        "semi;colon",
        "back\\slash",
    ];
    for (n, name) in bad_names.iter().enumerate() {
        let id = 100 + n as u64;
        let what = format!("subscribe {name:?}");
        client
            .send_json(&json!({"type": "subscribe", "id": id, "channel": name}))
            .await;
        assert_error(&client.recv_json().await, "bad_request", Some(id), &what);

        let what = format!("publish {name:?}");
        client
            .send_json(&json!({"type": "publish", "id": id, "channel": name, "data": 1}))
            .await;
        assert_error(&client.recv_json().await, "bad_request", Some(id), &what);

        let what = format!("API publish {name:?}");
        let r = fx
            .node
            .api(
                "POST",
                "/api/v1/publish",
                Some(&json!({"channel": name, "data": 1})),
            )
            .await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.error_code(), "bad_request", "{what}");
        fx.assert_healthy(&what).await;
    }

    // The limits themselves are fine: 255 bytes, every allowed character.
    let longest = "b".repeat(255);
    client.subscribe(&longest).await;
    client.subscribe("AZaz09_-.:@/=").await;
    fx.node.publish(&longest, json!("edge")).await;
    assert_eq!(client.recv_json().await["channel"], longest.as_str());
    client.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_frame_kinds_for_the_subprotocol() {
    let mut fx = Fixture::start("node-frame-kind", &[]).await;

    // A binary frame on the JSON subprotocol.
    let mut json_client = WsClient::connect_json(&fx.node.ws_url()).await;
    let ping = ClientFrame {
        id: 1,
        command: Some(Command::Ping(Default::default())),
    };
    json_client.send_binary(ping.encode_to_vec()).await;
    assert_error(
        &json_client.recv_json().await,
        "bad_request",
        None,
        "binary frame on json",
    );
    json_client.ping_pong().await;
    fx.assert_healthy("binary frame on json").await;

    // A text frame on the proto subprotocol.
    let mut proto = WsClient::connect_proto(&fx.node.ws_url()).await;
    proto.send_text(r#"{"type":"ping","id":1}"#).await;
    let reply = proto.recv_frame().await;
    match reply.frame {
        Some(Frame::Error(e)) => assert_eq!(e.code, "bad_request", "text frame on proto"),
        other => panic!("text frame on proto: want error bad_request, got {other:?}"),
    }
    proto.proto_ping_pong().await;
    fx.assert_healthy("text frame on proto").await;

    // Bytes that are not a ClientFrame.
    for (what, bytes) in [
        ("garbage", vec![0xff, 0xff, 0xff, 0xff, 0xff]),
        ("truncated varint", vec![0x08, 0x80]),
        ("wrong wire type", vec![0x12, 0x05, 0x01]),
    ] {
        proto.send_binary(bytes).await;
        let reply = proto.recv_frame().await;
        match reply.frame {
            Some(Frame::Error(e)) => assert_eq!(e.code, "bad_request", "{what}"),
            other => panic!("{what}: want error bad_request, got {other:?}"),
        }
        proto.proto_ping_pong().await;
        fx.assert_healthy(what).await;
    }

    // Proto commands with bad fields echo the id.
    for (what, command) in [
        (
            "proto subscribe bad name",
            Command::Subscribe(SubscribeRequest {
                channel: "no spaces".into(),
                recover: None,
            }),
        ),
        (
            "proto subscribe empty name",
            Command::Subscribe(SubscribeRequest {
                channel: String::new(),
                recover: None,
            }),
        ),
        (
            "proto publish bad name",
            Command::Publish(PublishRequest {
                channel: "x#y".into(),
                data: bytes::Bytes::from_static(b"1"),
            }),
        ),
    ] {
        let id = proto.send_command(command).await;
        let reply = proto.recv_frame().await;
        assert_eq!(reply.id, id, "{what}");
        match reply.frame {
            Some(Frame::Error(e)) => assert_eq!(e.code, "bad_request", "{what}"),
            other => panic!("{what}: want error bad_request, got {other:?}"),
        }
    }
    fx.assert_healthy("proto bad names").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009() {
    let mut fx = Fixture::start("node-too-large", &[]).await;

    // Under the limit is fine.
    let mut client = WsClient::connect_json(&fx.node.ws_url()).await;
    let small = "s".repeat(900);
    client.publish_ok(WATCHED, json!(small)).await;
    assert_eq!(fx.watcher.recv_json().await["data"], small.as_str());

    // Over it: disconnect 1009, close 1009.
    let big = json!({"type": "publish", "channel": WATCHED, "data": "b".repeat(2000)});
    client.send_json(&big).await;
    let disconnect = client.expect_disconnect(1009).await;
    assert_eq!(disconnect["reconnect"], false, "{disconnect}");
    fx.node
        .wait_metric_with(
            "switchboard_disconnects_total",
            &[("reason", "too_large")],
            "== 1",
            |v| v == 1.0,
        )
        .await;
    fx.assert_healthy("oversized text frame").await;

    // Same for a proto client.
    let mut proto = WsClient::connect_proto(&fx.node.ws_url()).await;
    let frame = ClientFrame {
        id: 3,
        command: Some(Command::Publish(PublishRequest {
            channel: WATCHED.into(),
            data: vec![7u8; 2000].into(),
        })),
    };
    proto.send_frame(&frame).await;
    let reply = proto.recv_frame().await;
    match reply.frame {
        Some(Frame::Disconnect(d)) => {
            assert_eq!(d.code, 1009);
            assert!(!d.reconnect);
        }
        other => panic!("oversized proto frame: want Disconnect 1009, got {other:?}"),
    }
    assert_eq!(proto.recv_close().await.0, 1009);
    fx.assert_healthy("oversized proto frame").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_reassembled_and_capped() {
    let mut fx = Fixture::start("node-fragments", &[]).await;
    let addr = fx.node.public_addr();

    // A publish split over three frames, 600 bytes in total: reassembled and accepted.
    let mut raw = RawWs::connect(addr, Some(JSON_PROTOCOL)).await;
    raw.recv_type("welcome").await;
    let command = json!({"type": "publish", "id": 5, "channel": WATCHED, "data": "f".repeat(520)})
        .to_string();
    let bytes = command.as_bytes();
    let (one, rest) = bytes.split_at(200);
    let (two, three) = rest.split_at(200);
    raw.send_frame(false, opcode::TEXT, one).await;
    raw.send_frame(false, opcode::CONTINUATION, two).await;
    raw.send_frame(true, opcode::CONTINUATION, three).await;
    let reply = raw.recv_type("published").await;
    assert_eq!(reply["id"], 5);
    assert_eq!(fx.watcher.recv_json().await["data"], "f".repeat(520));

    // Two frames each under the limit, 1200 bytes together: disconnect 1009, close 1009.
    let part = vec![b' '; 600];
    raw.send_frame(false, opcode::TEXT, &part).await;
    // The server may cut us off as soon as it has seen enough.
    let _ = raw.try_send_frame(true, opcode::CONTINUATION, &part).await;
    let disconnect = raw.recv_type("disconnect").await;
    assert_eq!(disconnect["code"], 1009, "{disconnect}");
    loop {
        match raw.read(std::time::Duration::from_secs(10)).await {
            RawRead::Frame(f) if f.opcode == opcode::CLOSE => {
                assert_eq!(f.close_code(), 1009);
                break;
            }
            RawRead::Frame(f) if f.opcode == opcode::PING => {}
            other => panic!("after disconnect 1009 want close 1009, got {other:?}"),
        }
    }
    fx.assert_healthy("fragmented oversized message").await;

    // Many small fragments adding up past the limit: same.
    let mut raw = RawWs::connect(addr, Some(JSON_PROTOCOL)).await;
    raw.recv_type("welcome").await;
    raw.send_frame(false, opcode::TEXT, &[b' '; 100]).await;
    for _ in 0..20 {
        if !raw
            .try_send_frame(false, opcode::CONTINUATION, &[b' '; 100])
            .await
        {
            break;
        }
    }
    let disconnect = raw.recv_type("disconnect").await;
    assert_eq!(disconnect["code"], 1009, "{disconnect}");
    fx.assert_healthy("many small fragments").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_requests() {
    let mut fx = Fixture::start("node-bad-api", &[]).await;
    let node = &fx.node;

    let bad_bodies: &[(&str, &str, &[u8])] = &[
        ("/api/v1/publish", "not JSON", b"{nope"),
        ("/api/v1/publish", "empty body", b""),
        ("/api/v1/publish", "array", b"[1]"),
        (
            "/api/v1/publish",
            "missing data",
            br#"{"channel":"watched"}"#,
        ),
        ("/api/v1/publish", "missing channel", br#"{"data":1}"#),
        (
            "/api/v1/publish",
            "channel not a string",
            br#"{"channel":1,"data":1}"#,
        ),
        (
            "/api/v1/publish",
            "bad channel",
            br#"{"channel":"a b","data":1}"#,
        ),
        (
            "/api/v1/broadcast",
            "channels not a list",
            br#"{"channels":"watched","data":1}"#,
        ),
        ("/api/v1/broadcast", "missing channels", br#"{"data":1}"#),
        (
            "/api/v1/broadcast",
            "missing data",
            br#"{"channels":["watched"]}"#,
        ),
        ("/api/v1/broadcast", "not JSON", b"]["),
    ];
    for (path, what, body) in bad_bodies {
        let r = node.internal_raw("POST", path, &[], Some(body)).await;
        assert_eq!(r.status, 400, "POST {path} with {what}: {}", r.text());
        assert_eq!(r.error_code(), "bad_request", "POST {path} with {what}");
        assert!(
            r.json()["error"]["message"].is_string(),
            "error has a message: {}",
            r.text()
        );
    }

    for path in ["/api/v1/nope", "/api/v1/", "/api/v2/publish"] {
        let r = node.internal_raw("GET", path, &[], None).await;
        assert_eq!(r.status, 404, "GET {path}: {}", r.text());
        assert_eq!(r.error_code(), "not_found", "GET {path}");
    }
    // Outside the API the body's shape is not pinned down, only the status.
    let r = node.internal_raw("GET", "/nope", &[], None).await;
    assert_eq!(r.status, 404, "GET /nope: {}", r.text());
    let r = node
        .internal_raw("POST", "/api/v1/nope", &[], Some(b"{}"))
        .await;
    assert_eq!(r.status, 404, "POST /api/v1/nope: {}", r.text());

    let r = node.internal_raw("GET", "/api/v1/publish", &[], None).await;
    assert_eq!(r.status, 405, "GET /api/v1/publish: {}", r.text());
    assert_eq!(r.error_code(), "bad_request");

    // A body over --max-message-size (1024).
    let big =
        serde_json::to_vec(&json!({"channel": WATCHED, "data": "x".repeat(4096)})).expect("json");
    let r = node
        .internal_raw("POST", "/api/v1/publish", &[], Some(&big))
        .await;
    assert_eq!(r.status, 413, "oversized API body: {}", r.text());
    assert_eq!(r.error_code(), "too_large");

    fx.assert_healthy("bad API requests").await;
    // Nothing from the rejected calls reached the watcher.
    fx.watcher.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let node = Node::builder("node-api-key")
        .api_key("s3cret")
        .start()
        .await;
    let mut watcher = WsClient::connect_json(&node.ws_url()).await;
    watcher.subscribe(WATCHED).await;
    let body = br#"{"channel":"watched","data":"k"}"#;

    for (what, headers) in [
        ("no Authorization", vec![]),
        ("wrong key", vec![("Authorization", "apikey nope")]),
        ("bearer scheme", vec![("Authorization", "Bearer s3cret")]),
        ("bare key", vec![("Authorization", "s3cret")]),
    ] {
        let r = node
            .internal_raw("POST", "/api/v1/publish", &headers, Some(body))
            .await;
        assert_eq!(r.status, 401, "publish with {what}: {}", r.text());
        assert_eq!(r.error_code(), "unauthorized", "publish with {what}");
        let r = node
            .internal_raw("GET", "/api/v1/cluster", &headers, None)
            .await;
        assert_eq!(r.status, 401, "cluster with {what}: {}", r.text());
    }
    watcher.ping_pong().await;

    let r = node
        .internal_raw(
            "POST",
            "/api/v1/publish",
            &[("Authorization", "apikey s3cret")],
            Some(body),
        )
        .await;
    assert_eq!(r.status, 200, "publish with the key: {}", r.text());
    assert_eq!(watcher.recv_json().await["data"], "k");
    let r = node
        .internal_raw(
            "GET",
            "/api/v1/cluster",
            &[("Authorization", "apikey s3cret")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "cluster with the key: {}", r.text());

    // Probes stay open for the orchestrator.
    assert_eq!(node.readyz_status().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_origin_is_refused_before_the_upgrade() {
    let mut fx = Fixture::start(
        "node-origin",
        &[
            "--allowed-origins",
            "https://good.example,http://localhost:*",
        ],
    )
    .await;
    let url = fx.node.ws_url();

    for origin in [
        "https://evil.example",
        "https://good.example.evil.example",
        "http://good.example",
        "null",
    ] {
        match WsClient::try_upgrade(&url, &[JSON_PROTOCOL], &[("Origin", origin)]).await {
            Upgrade::Refused(403, _) => {}
            other => panic!("Origin {origin}: want 403, got {other:?}"),
        }
    }
    for origin in ["https://good.example", "http://localhost:3000"] {
        let mut client =
            WsClient::connect_json_with(&url, &[JSON_PROTOCOL], &[("Origin", origin)]).await;
        client.ping_pong().await;
    }
    // Non-browser clients send no Origin and pass.
    let mut client = WsClient::connect_json(&url).await;
    client.ping_pong().await;
    match WsClient::try_upgrade(
        &url,
        &[PROTO_PROTOCOL],
        &[("Origin", "https://evil.example")],
    )
    .await
    {
        Upgrade::Refused(403, _) => {}
        other => panic!("proto with a bad Origin: want 403, got {other:?}"),
    }
    fx.assert_healthy("refused origins").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_limit_is_inclusive() {
    let mut fx = Fixture::start("node-limit-edge", &[]).await;
    let url = fx.node.ws_url();

    // A JSON publish of exactly `len` bytes.
    let publish_of_len = |len: usize| {
        let empty = json!({"type": "publish", "channel": WATCHED, "data": ""}).to_string();
        let text =
            json!({"type": "publish", "channel": WATCHED, "data": "e".repeat(len - empty.len())})
                .to_string();
        assert_eq!(text.len(), len);
        text
    };
    let mut client = WsClient::connect_json(&url).await;
    client.send_text(&publish_of_len(1024)).await;
    assert_eq!(client.expect_type("published").await["channel"], WATCHED);
    assert!(fx.watcher.recv_json().await["data"].is_string());
    client.send_text(&publish_of_len(1025)).await;
    client.expect_disconnect(1009).await;

    // A proto frame of exactly 1024 bytes, then 1025.
    let frame_of_len = |len: usize| {
        let mut data_len = len;
        loop {
            let frame = ClientFrame {
                id: 1,
                command: Some(Command::Publish(PublishRequest {
                    channel: WATCHED.into(),
                    data: vec![0xAB; data_len].into(),
                })),
            };
            let encoded = frame.encode_to_vec();
            match encoded.len().cmp(&len) {
                std::cmp::Ordering::Equal => return encoded,
                std::cmp::Ordering::Greater => data_len -= 1,
                std::cmp::Ordering::Less => panic!("cannot build a frame of {len} bytes"),
            }
        }
    };
    let mut proto = WsClient::connect_proto(&url).await;
    proto.send_binary(frame_of_len(1024)).await;
    let reply = proto.recv_frame().await;
    assert!(
        matches!(reply.frame, Some(Frame::Published(_))),
        "1024-byte proto frame: {reply:?}"
    );
    fx.watcher.recv_json().await;
    proto.send_binary(frame_of_len(1025)).await;
    match proto.recv_frame().await.frame {
        Some(Frame::Disconnect(d)) => assert_eq!(d.code, 1009),
        other => panic!("1025-byte proto frame: want Disconnect 1009, got {other:?}"),
    }

    // API bodies: 1024 accepted, 1025 refused.
    let body_of_len = |len: usize| {
        let empty = json!({"channel": WATCHED, "data": ""}).to_string();
        json!({"channel": WATCHED, "data": "a".repeat(len - empty.len())}).to_string()
    };
    let body = body_of_len(1024);
    assert_eq!(body.len(), 1024);
    let r = fx
        .node
        .internal_raw("POST", "/api/v1/publish", &[], Some(body.as_bytes()))
        .await;
    assert_eq!(r.status, 200, "1024-byte API body: {}", r.text());
    fx.watcher.recv_json().await;
    let body = body_of_len(1025);
    let r = fx
        .node
        .internal_raw("POST", "/api/v1/publish", &[], Some(body.as_bytes()))
        .await;
    assert_eq!(r.status, 413, "1025-byte API body: {}", r.text());
    fx.assert_healthy("size edges").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_frame() {
    let mut fx = Fixture::start("node-bad-utf8", &[]).await;
    let mut raw = RawWs::connect(fx.node.public_addr(), Some(JSON_PROTOCOL)).await;
    raw.recv_type("welcome").await;
    raw.send_frame(
        true,
        opcode::TEXT,
        b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}",
    )
    .await;
    // Either a bad_request (the contract's "malformed JSON"), or the connection failed
    // (RFC 6455 8.1) with 1007 or the generic 1002; the node stays up either way.
    let failed_with = |code: u16| matches!(code, 1002 | 1007);
    match raw.read(std::time::Duration::from_secs(10)).await {
        RawRead::Frame(f) if f.opcode == opcode::TEXT => {
            let v = f.json();
            if v["type"] == "error" {
                assert_eq!(v["code"], "bad_request", "{v}");
                raw.send_text(r#"{"type":"ping","id":1}"#).await;
                assert_eq!(raw.recv_json().await, json!({"type": "pong", "id": 1}));
            } else {
                assert_eq!(v["type"], "disconnect", "{v}");
                let code = v["code"].as_u64().unwrap_or(0) as u16;
                assert!(failed_with(code), "invalid UTF-8: {v}");
                match raw.read(std::time::Duration::from_secs(10)).await {
                    RawRead::Frame(c) if c.opcode == opcode::CLOSE => {
                        assert_eq!(c.close_code(), code, "close after {v}");
                    }
                    other => panic!("after {v} want a close, got {other:?}"),
                }
            }
        }
        RawRead::Frame(f) if f.opcode == opcode::CLOSE => {
            assert!(failed_with(f.close_code()), "close {}", f.close_code());
        }
        other => panic!("invalid UTF-8: got {other:?}"),
    }
    fx.assert_healthy("invalid UTF-8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_sequence_violations_close_the_connection_only() {
    let mut fx = Fixture::start("node-bad-sequence", &[]).await;
    let addr = fx.node.public_addr();

    // A continuation with no message started.
    let mut raw = RawWs::connect(addr, Some(JSON_PROTOCOL)).await;
    raw.recv_type("welcome").await;
    raw.send_frame(true, opcode::CONTINUATION, b"orphan").await;
    expect_closed(&mut raw, "orphan continuation").await;
    fx.assert_healthy("orphan continuation").await;

    // A new text frame while a fragmented one is open.
    let mut raw = RawWs::connect(addr, Some(JSON_PROTOCOL)).await;
    raw.recv_type("welcome").await;
    raw.send_frame(false, opcode::TEXT, b"{\"type\":").await;
    raw.send_frame(true, opcode::TEXT, b"{}").await;
    expect_closed(&mut raw, "interleaved data frames").await;
    fx.assert_healthy("interleaved data frames").await;

    // A reserved opcode.
    let mut raw = RawWs::connect(addr, Some(JSON_PROTOCOL)).await;
    raw.recv_type("welcome").await;
    raw.send_frame(true, 0x3, b"?").await;
    expect_closed(&mut raw, "reserved opcode").await;
    fx.assert_healthy("reserved opcode").await;
}

/// Reads until the server ends the connection (a close frame or EOF), skipping an
/// optional `disconnect` push; any other frame fails.
async fn expect_closed(raw: &mut RawWs, what: &str) {
    loop {
        match raw.read(std::time::Duration::from_secs(10)).await {
            RawRead::Frame(f) if f.opcode == opcode::TEXT => {
                let v = f.json();
                assert_eq!(v["type"], "disconnect", "{what}: {v}");
            }
            RawRead::Frame(f) if f.opcode == opcode::CLOSE => {
                assert!(
                    (1002..=1011).contains(&f.close_code()),
                    "{what}: close code {}",
                    f.close_code()
                );
                return;
            }
            RawRead::Eof | RawRead::Error(_) => return,
            RawRead::Frame(f) => panic!("{what}: unexpected opcode {}", f.opcode),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_break_rfc_6455_close_the_connection_only() {
    let mut fx = Fixture::start("node-bad-frames", &[]).await;
    let addr = fx.node.public_addr();
    let with_rsv1 = {
        let mut f = encode_frame(true, opcode::TEXT, br#"{"type":"ping"}"#);
        f[0] |= 0x40;
        f
    };
    let unmasked = vec![0x81, 0x02, b'{', b'}'];
    let top_length_bit = {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f
    };
    let cases: [(&str, Vec<u8>); 7] = [
        ("unmasked frame", unmasked),
        ("reserved bit without an extension", with_rsv1),
        ("fragmented ping", encode_frame(false, opcode::PING, b"x")),
        (
            "ping over 125 bytes",
            encode_frame(true, opcode::PING, &[0; 126]),
        ),
        (
            "close with a 1-byte payload",
            encode_frame(true, opcode::CLOSE, &[3]),
        ),
        (
            "close with a reserved code",
            encode_frame(true, opcode::CLOSE, &1005u16.to_be_bytes()),
        ),
        ("length with its top bit set", top_length_bit),
    ];
    for (what, wire) in cases {
        let mut raw = RawWs::connect(addr, Some(JSON_PROTOCOL)).await;
        raw.recv_type("welcome").await;
        raw.send_raw(&wire, wire.len()).await;
        // The close frame 1002 alone: no `disconnect` push to a peer that broke RFC 6455.
        match raw.read(std::time::Duration::from_secs(10)).await {
            RawRead::Frame(f) if f.opcode == opcode::CLOSE => {
                assert_eq!(f.close_code(), 1002, "{what}");
            }
            other => panic!("{what}: want close 1002 alone, got {other:?}"),
        }
        fx.assert_healthy(what).await;
    }
}
