//! The client protocol on one node with the in-process backplane (no Redis): the
//! welcome, the JSON and protobuf commands, the server API, and the two subprotocols
//! talking to each other.

use serde_json::{Value, json};
use switchboard_proto::client::{
    ClientFrame, HistoryRequest, PresenceRequest, client_frame::Command, server_frame::Frame,
};
use switchboard_testkit::raw_ws::{RawRead, encode_frame, opcode};
use switchboard_testkit::ws::{JSON_PROTOCOL, PROTO_PROTOCOL, Upgrade};
use switchboard_testkit::{Node, RECV_TIMEOUT, RawWs, WsClient, decode_base64, now_ms};

fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.bytes().all(|b| {
            b.is_ascii_digit()
                || (b.is_ascii_uppercase() && !matches!(b, b'I' | b'L' | b'O' | b'U'))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_welcome_has_the_contract_shape() {
    let node = Node::start("node-welcome", &[]).await;
    let client = WsClient::connect_json(&node.ws_url()).await;

    assert_eq!(client.protocol.as_deref(), Some(JSON_PROTOCOL));
    let welcome = &client.welcome;
    let object = welcome.as_object().expect("welcome is an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["conn", "heartbeat", "node", "type", "user"],
        "welcome fields: {welcome}"
    );
    let conn = welcome["conn"].as_str().expect("conn is a string");
    let ulid = conn
        .strip_prefix("c_")
        .unwrap_or_else(|| panic!("conn must be c_<ULID>, got {conn}"));
    assert!(is_ulid(ulid), "conn must be c_<ULID>, got {conn}");
    assert_eq!(welcome["node"], "node-welcome");
    assert_eq!(welcome["user"], "", "anonymous user is the empty string");
    assert_eq!(welcome["heartbeat"], 25, "default heartbeat is 25 s");

    let other = WsClient::connect_json(&node.ws_url()).await;
    assert_ne!(other.conn_id(), client.conn_id(), "conn ids are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_is_the_default_subprotocol() {
    let node = Node::start("node-default-proto", &[]).await;
    // No Sec-WebSocket-Protocol offered: JSON framing, and (RFC 6455 4.2.2) the server
    // must not answer with a subprotocol the client did not offer.
    let mut client = WsClient::connect_json_with(&node.ws_url(), &[], &[]).await;
    assert_eq!(client.protocol, None);
    assert_eq!(client.welcome["node"], "node-default-proto");
    client.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_negotiation() {
    let node = Node::start("node-negotiate", &[]).await;

    match WsClient::try_upgrade(&node.ws_url(), &["mqtt", "graphql-ws"], &[]).await {
        Upgrade::Refused(400, _) => {}
        other => panic!("only unknown subprotocols offered: want HTTP 400, got {other:?}"),
    }
    match WsClient::try_upgrade(&node.ws_url(), &["mqtt", PROTO_PROTOCOL], &[]).await {
        Upgrade::Accepted(Some(p)) if p == PROTO_PROTOCOL => {}
        other => panic!("unknown + proto offered: want proto selected, got {other:?}"),
    }
    match WsClient::try_upgrade(&node.ws_url(), &["mqtt", JSON_PROTOCOL], &[]).await {
        Upgrade::Accepted(Some(p)) if p == JSON_PROTOCOL => {}
        other => panic!("unknown + json offered: want json selected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_subscribe_publish_unsubscribe_ping() {
    let node = Node::start("node-json", &[]).await;
    let mut alice = WsClient::connect_json(&node.ws_url()).await;
    let mut bob = WsClient::connect_json(&node.ws_url()).await;

    // Replies carry the command's id and exactly the documented fields.
    alice
        .send_json(&json!({"type": "subscribe", "id": 1, "channel": "news"}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "subscribed", "id": 1, "channel": "news"})
    );
    bob.subscribe("news").await;

    alice.send_json(&json!({"type": "ping", "id": 2})).await;
    assert_eq!(alice.recv_json().await, json!({"type": "pong", "id": 2}));

    // A ping without id gets a pong without id.
    alice.send_json(&json!({"type": "ping"})).await;
    assert_eq!(alice.recv_json().await, json!({"type": "pong"}));

    let data = json!({"text": "hi", "n": [1, 2.5, null, true], "nested": {"k": "v"}});
    alice
        .send_json(&json!({"type": "publish", "id": 3, "channel": "news", "data": data}))
        .await;
    let reply = alice.recv_reply(3).await;
    assert_eq!(
        reply,
        json!({"type": "published", "id": 3, "channel": "news"})
    );
    let want = json!({"type": "message", "channel": "news", "data": data});
    assert_eq!(
        bob.recv_json().await,
        want,
        "subscriber receives the publish"
    );
    assert_eq!(
        alice.recv_message_push().await,
        want,
        "the publisher, subscribed, receives its own publish"
    );

    // Any JSON value is valid data.
    for data in [json!("a string"), json!(42), json!(null), json!([1, "two"])] {
        bob.publish_ok("news", data.clone()).await;
        assert_eq!(
            alice.recv_json().await,
            json!({"type": "message", "channel": "news", "data": data})
        );
        assert_eq!(bob.recv_message_push().await["data"], data);
    }

    // Subscribing twice is a bad_request, echoing the id.
    alice
        .send_json(&json!({"type": "subscribe", "id": 4, "channel": "news"}))
        .await;
    let reply = alice.recv_json().await;
    assert_eq!(reply["type"], "error", "second subscribe: {reply}");
    assert_eq!(reply["id"], 4);
    assert_eq!(reply["code"], "bad_request");
    assert!(
        reply["message"].is_string(),
        "error carries a message: {reply}"
    );

    // Unsubscribe stops delivery to alice, not to bob.
    alice
        .send_json(&json!({"type": "unsubscribe", "id": 5, "channel": "news"}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "unsubscribed", "id": 5, "channel": "news"})
    );
    bob.publish_ok("news", json!("after unsubscribe")).await;
    assert_eq!(bob.recv_message_push().await["data"], "after unsubscribe");
    alice.ping_pong().await;

    // Unsubscribing again is idempotent.
    alice
        .send_json(&json!({"type": "unsubscribe", "id": 6, "channel": "news"}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "unsubscribed", "id": 6, "channel": "news"})
    );

    // Publishing to a channel nobody subscribes to is fine.
    alice.publish_ok("empty-room", json!(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_presence_are_forbidden_without_a_namespace() {
    let node = Node::start("node-nohistory", &[]).await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;

    client
        .send_json(&json!({"type": "history", "id": 1, "channel": "news"}))
        .await;
    let reply = client.recv_json().await;
    assert_eq!(
        (&reply["type"], &reply["id"], &reply["code"]),
        (&json!("error"), &json!(1), &json!("forbidden")),
        "history: {reply}"
    );

    client
        .send_json(&json!({"type": "presence", "id": 2, "channel": "news"}))
        .await;
    let reply = client.recv_json().await;
    assert_eq!(
        (&reply["type"], &reply["id"], &reply["code"]),
        (&json!("error"), &json!(2), &json!("forbidden")),
        "presence: {reply}"
    );

    let mut proto = WsClient::connect_proto(&node.ws_url()).await;
    for command in [
        Command::History(HistoryRequest {
            channel: "news".into(),
            limit: None,
            since: None,
        }),
        Command::Presence(PresenceRequest {
            channel: "news".into(),
        }),
    ] {
        let id = proto.send_command(command).await;
        let reply = proto.recv_frame().await;
        assert_eq!(reply.id, id);
        match reply.frame {
            Some(Frame::Error(e)) => assert_eq!(e.code, "forbidden"),
            other => panic!("want error forbidden, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publish_reaches_subscribers() {
    let node = Node::start("node-api-publish", &[]).await;
    let mut a = WsClient::connect_json(&node.ws_url()).await;
    let mut b = WsClient::connect_json(&node.ws_url()).await;
    a.subscribe("alerts").await;
    b.subscribe("alerts").await;

    let answer = node.publish("alerts", json!({"level": "red"})).await;
    assert_eq!(answer, json!({}), "publish without history answers {{}}");

    let want = json!({"type": "message", "channel": "alerts", "data": {"level": "red"}});
    assert_eq!(a.recv_json().await, want);
    assert_eq!(b.recv_json().await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_broadcast_to_several_channels() {
    let node = Node::start("node-broadcast", &[]).await;
    let mut one = WsClient::connect_json(&node.ws_url()).await;
    let mut two = WsClient::connect_json(&node.ws_url()).await;
    let mut both = WsClient::connect_json(&node.ws_url()).await;
    one.subscribe("room:1").await;
    two.subscribe("room:2").await;
    both.subscribe("room:1").await;
    both.subscribe("room:2").await;

    let body = json!({"channels": ["room:1", "room:2", "room:3"], "data": {"msg": "all"}});
    let response = node.api("POST", "/api/v1/broadcast", Some(&body)).await;
    assert_eq!(response.status, 200, "broadcast: {}", response.text());
    assert_eq!(
        response.json(),
        json!({"results": [{"channel": "room:1"}, {"channel": "room:2"}, {"channel": "room:3"}]})
    );

    assert_eq!(
        one.recv_json().await,
        json!({"type": "message", "channel": "room:1", "data": {"msg": "all"}})
    );
    assert_eq!(
        two.recv_json().await,
        json!({"type": "message", "channel": "room:2", "data": {"msg": "all"}})
    );
    let mut seen = vec![
        both.recv_json().await["channel"].clone(),
        both.recv_json().await["channel"].clone(),
    ];
    seen.sort_by_key(|v| v.to_string());
    assert_eq!(seen, [json!("room:1"), json!("room:2")]);

    // A bad channel among good ones: an error in its result, the others delivered.
    let body = json!({"channels": ["room:1", "bad room", "room:2"], "data": 7});
    let response = node.api("POST", "/api/v1/broadcast", Some(&body)).await;
    assert_eq!(response.status, 200, "broadcast: {}", response.text());
    let results = response.json()["results"].clone();
    assert_eq!(results[0], json!({"channel": "room:1"}));
    assert_eq!(results[1]["channel"], "bad room");
    assert_eq!(results[1]["error"]["code"], "bad_request", "{results}");
    assert_eq!(results[2], json!({"channel": "room:2"}));
    assert_eq!(one.recv_json().await["data"], 7);
    assert_eq!(two.recv_json().await["data"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_api_lists_the_single_node() {
    let before = now_ms();
    let node = Node::start("node-solo", &[]).await;
    let _c1 = WsClient::connect_json(&node.ws_url()).await;
    let mut c2 = WsClient::connect_json(&node.ws_url()).await;
    c2.subscribe("x").await;

    let response = node.api("GET", "/api/v1/cluster", None).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    let nodes = body["nodes"].as_array().expect("nodes array");
    assert_eq!(nodes.len(), 1, "{body}");
    let entry = &nodes[0];
    assert_eq!(entry["id"], "node-solo");
    for field in ["connections", "subscriptions", "started_at", "last_seen"] {
        assert!(
            entry[field].is_u64(),
            "{field} is a non-negative integer: {entry}"
        );
    }
    let started = entry["started_at"].as_u64().unwrap_or(0);
    let last_seen = entry["last_seen"].as_u64().unwrap_or(0);
    assert!(
        started >= before.saturating_sub(1000) && started <= now_ms(),
        "started_at is ms since the epoch, around the start: {started} (test began {before})"
    );
    assert!(last_seen >= started, "last_seen >= started_at: {entry}");
    assert!(
        last_seen <= now_ms() + 1000,
        "last_seen not in the future: {entry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_static_routes() {
    let node = Node::start("node-health", &[]).await;
    let r = node.public_raw("GET", "/healthz", &[], None).await;
    assert_eq!((r.status, r.text().trim()), (200, "ok"), "public /healthz");
    let r = node.internal_raw("GET", "/healthz", &[], None).await;
    assert_eq!(
        (r.status, r.text().trim()),
        (200, "ok"),
        "internal /healthz"
    );
    let r = node.internal_raw("GET", "/readyz", &[], None).await;
    assert_eq!((r.status, r.text().trim()), (200, "ready"), "/readyz");
    let r = node.public_raw("GET", "/", &[], None).await;
    assert_eq!(r.status, 200, "demo page");
    // `/client.js` (the browser client) and the demo page's content: demo.rs.
    let r = node.internal_raw("GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200, "metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_metrics_follow_clients() {
    let node = Node::start("node-metrics", &[]).await;
    let mut a = WsClient::connect_json(&node.ws_url()).await;
    let mut b = WsClient::connect_json(&node.ws_url()).await;
    a.subscribe("m").await;
    b.subscribe("m").await;
    node.wait_metric("switchboard_connections", "== 2", |v| v == 2.0)
        .await;
    node.wait_metric("switchboard_subscriptions", "== 2", |v| v == 2.0)
        .await;
    node.wait_metric("switchboard_channels", "== 1", |v| v == 1.0)
        .await;
    assert!(node.metric("switchboard_connections_accepted_total").await >= 2.0);

    node.publish("m", json!("x")).await;
    a.recv_message_push().await;
    b.recv_message_push().await;
    node.wait_metric("switchboard_messages_delivered_total", ">= 2", |v| v >= 2.0)
        .await;

    a.close(1000).await;
    drop(a);
    node.wait_metric("switchboard_connections", "== 1", |v| v == 1.0)
        .await;
    node.wait_metric("switchboard_subscriptions", "== 1", |v| v == 1.0)
        .await;
    node.wait_metric_with(
        "switchboard_disconnects_total",
        &[("reason", "client_closed")],
        ">= 1",
        |v| v >= 1.0,
    )
    .await;
}

// ---- protobuf subprotocol ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_welcome_and_commands() {
    let node = Node::start("node-proto", &[]).await;
    let mut client = WsClient::connect_proto(&node.ws_url()).await;

    let welcome = client.welcome_frame.clone().expect("welcome");
    assert_eq!(welcome.id, 0, "pushes carry id 0");
    let Some(Frame::Welcome(w)) = welcome.frame else {
        unreachable!()
    };
    assert!(
        w.conn.strip_prefix("c_").is_some_and(is_ulid),
        "conn must be c_<ULID>, got {}",
        w.conn
    );
    assert_eq!(w.node, "node-proto");
    assert_eq!(w.user, "");
    assert_eq!(w.heartbeat, 25);

    client.proto_ping_pong().await;
    client.proto_subscribe("p").await;
    let reply = client.proto_publish("p", b"\x00\x01binary").await;
    match reply.frame {
        Some(Frame::Published(p)) => {
            assert_eq!(p.channel, "p");
            assert_eq!(p.offset, None, "no offset without history");
        }
        other => panic!("want Published, got {other:?}"),
    }
    let message = client.recv_frame_message().await;
    assert_eq!(message.channel, "p");
    assert_eq!(&message.data[..], b"\x00\x01binary");
    assert_eq!((message.offset, message.epoch.as_deref()), (None, None));

    // Subscribing twice: bad_request echoing the id.
    let id = client
        .send_command(Command::Subscribe(
            switchboard_proto::client::SubscribeRequest {
                channel: "p".into(),
                recover: None,
            },
        ))
        .await;
    let reply = client.recv_frame().await;
    assert_eq!(reply.id, id);
    match reply.frame {
        Some(Frame::Error(e)) => assert_eq!(e.code, "bad_request"),
        other => panic!("want error bad_request, got {other:?}"),
    }

    client.proto_unsubscribe("p").await;
    node.publish("p", json!("gone")).await;
    client.proto_ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_and_json_clients_share_a_channel() {
    let node = Node::start("node-mixed", &[]).await;
    let mut json_client = WsClient::connect_json(&node.ws_url()).await;
    let mut proto_client = WsClient::connect_proto(&node.ws_url()).await;
    json_client.subscribe("mix").await;
    proto_client.proto_subscribe("mix").await;

    // A JSON publish reaches the proto client as the UTF-8 bytes of the JSON text.
    let data = json!({"text": "héllo", "n": [1, 2]});
    json_client.publish_ok("mix", data.clone()).await;
    let m = proto_client.recv_frame_message().await;
    assert_eq!(m.channel, "mix");
    let text = std::str::from_utf8(&m.data).expect("JSON data arrives as UTF-8 text");
    let parsed: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("proto client got non-JSON bytes {text:?}: {e}"));
    assert_eq!(parsed, data);
    assert_eq!(json_client.recv_message_push().await["data"], data);

    // An API publish too.
    node.publish("mix", json!([true, false])).await;
    let m = proto_client.recv_frame_message().await;
    assert_eq!(
        serde_json::from_slice::<Value>(&m.data).expect("JSON bytes"),
        json!([true, false])
    );
    assert_eq!(
        json_client.recv_message_push().await["data"],
        json!([true, false])
    );

    // A proto publish of bytes that are not JSON reaches the JSON client as data_b64.
    let binary: &[u8] = &[0x00, 0x9f, 0x92, 0x96, 0xff, b'{'];
    let reply = proto_client.proto_publish("mix", binary).await;
    assert!(
        matches!(reply.frame, Some(Frame::Published(_))),
        "{reply:?}"
    );
    let m = json_client.recv_message_push().await;
    assert_eq!(m["channel"], "mix");
    assert!(
        m.get("data").is_none(),
        "binary payload must not have `data`: {m}"
    );
    let b64 = m["data_b64"]
        .as_str()
        .unwrap_or_else(|| panic!("binary payload arrives as data_b64: {m}"));
    assert_eq!(
        decode_base64(b64).as_deref(),
        Some(binary),
        "data_b64 {b64}"
    );
    assert_eq!(&proto_client.recv_frame_message().await.data[..], binary);

    // A proto publish of JSON bytes reaches the JSON client as data.
    let json_bytes = br#"{"from":"proto","list":[1,2,3]}"#;
    proto_client.proto_publish("mix", json_bytes).await;
    let m = json_client.recv_message_push().await;
    assert_eq!(
        m,
        json!({"type": "message", "channel": "mix", "data": {"from": "proto", "list": [1, 2, 3]}})
    );
    assert_eq!(
        &proto_client.recv_frame_message().await.data[..],
        json_bytes,
        "proto subscribers get the published bytes unchanged"
    );

    // Non-UTF-8-safe but valid-UTF-8 text that is not JSON is also data_b64.
    proto_client.proto_publish("mix", b"hello world").await;
    let m = json_client.recv_message_push().await;
    assert_eq!(
        m["data_b64"].as_str().and_then(decode_base64).as_deref(),
        Some(&b"hello world"[..]),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_frame_without_command_is_bad_request() {
    let node = Node::start("node-proto-empty", &[]).await;
    let mut client = WsClient::connect_proto(&node.ws_url()).await;
    client
        .send_frame(&ClientFrame {
            id: 9,
            command: None,
        })
        .await;
    let reply = client.recv_frame().await;
    assert_eq!(
        reply.id, 9,
        "the id is readable, so it is echoed: {reply:?}"
    );
    match reply.frame {
        Some(Frame::Error(e)) => assert_eq!(e.code, "bad_request"),
        other => panic!("want error bad_request, got {other:?}"),
    }
    client.proto_ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_json_is_delivered_verbatim() {
    let node = Node::start("node-verbatim", &[]).await;
    let mut sub = WsClient::connect_json(&node.ws_url()).await;
    sub.subscribe("v").await;
    let mut proto = WsClient::connect_proto(&node.ws_url()).await;
    proto.proto_subscribe("v").await;
    let mut publisher = WsClient::connect_json(&node.ws_url()).await;

    // Numbers past f64 precision and escapes: `data` is any JSON value, passed through.
    let big = "123456789012345678901234567890";
    let pi = "3.14159265358979323846264338327950288";
    let raw = format!(
        r#"{{"type":"publish","id":1,"channel":"v","data":{{"big":{big},"pi":{pi},"s":"\u00e9\ud83d\ude00"}}}}"#
    );
    publisher.send_text(&raw).await;
    let reply = publisher.recv_json().await;
    assert_eq!(reply["type"], "published", "{reply}");

    let text = sub.recv_text().await;
    assert!(
        text.contains(big),
        "big integer altered in delivery: {text}"
    );
    assert!(
        text.contains(pi),
        "long decimal altered in delivery: {text}"
    );
    let m: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(m["data"]["s"], "é😀");
    let bytes = proto.recv_frame_message().await.data;
    let proto_text = String::from_utf8_lossy(&bytes);
    assert!(
        proto_text.contains(big),
        "big integer altered for proto: {proto_text}"
    );

    // The same through the API.
    let body = format!(r#"{{"channel":"v","data":[{big},{pi}]}}"#);
    let r = node
        .internal_raw("POST", "/api/v1/publish", &[], Some(body.as_bytes()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = sub.recv_text().await;
    assert!(
        text.contains(big) && text.contains(pi),
        "API publish altered numbers: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_control_frames() {
    let node = Node::start("node-control", &[]).await;

    // A ping is answered with a pong carrying the same payload (RFC 6455 5.5.3).
    let mut raw = RawWs::connect(node.public_addr(), Some(JSON_PROTOCOL)).await;
    raw.recv_type("welcome").await;
    raw.send_frame(true, opcode::PING, b"are you there").await;
    match raw.read(RECV_TIMEOUT).await {
        RawRead::Frame(f) if f.opcode == opcode::PONG => {
            assert_eq!(f.payload, b"are you there");
        }
        other => panic!("want a pong, got {other:?}"),
    }
    // A ping between the fragments of a message is allowed and answered.
    let command = br#"{"type":"ping","id":7}"#;
    raw.send_frame(false, opcode::TEXT, &command[..10]).await;
    raw.send_frame(true, opcode::PING, b"mid").await;
    raw.send_frame(true, opcode::CONTINUATION, &command[10..])
        .await;
    let mut got_pong_frame = false;
    let mut got_reply = false;
    while !(got_pong_frame && got_reply) {
        match raw.read(RECV_TIMEOUT).await {
            RawRead::Frame(f) if f.opcode == opcode::PONG => {
                assert_eq!(f.payload, b"mid");
                got_pong_frame = true;
            }
            RawRead::Frame(f) if f.opcode == opcode::TEXT => {
                assert_eq!(f.json(), json!({"type": "pong", "id": 7}));
                got_reply = true;
            }
            other => panic!("want the pong frame and the pong reply, got {other:?}"),
        }
    }

    // A client close is echoed, then the server ends the connection.
    raw.send_frame(true, opcode::CLOSE, &1000u16.to_be_bytes())
        .await;
    match raw.read(RECV_TIMEOUT).await {
        RawRead::Frame(f) if f.opcode == opcode::CLOSE => assert_eq!(f.close_code(), 1000),
        other => panic!("want the close echo, got {other:?}"),
    }
    match raw.read(RECV_TIMEOUT).await {
        RawRead::Eof | RawRead::Error(_) => {}
        other => panic!("want the end of the connection, got {other:?}"),
    }
    node.wait_metric_with(
        "switchboard_disconnects_total",
        &[("reason", "client_closed")],
        ">= 1",
        |v| v >= 1.0,
    )
    .await;
    node.wait_metric("switchboard_connections", "== 0", |v| v == 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_subscribed_is_delivered() {
    // Once a client holds `subscribed`, the subscription is in effect: a publish it
    // causes afterwards must reach it. Several clients race subscribe-then-publish on
    // fresh channels so a window between the reply and the subscription shows up.
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 250;
    // A stress test of the subscribe race, not of the per-connection limits.
    let node = Node::start(
        "node-sub-race",
        &[
            "--client-rate",
            "100000",
            "--client-burst",
            "100000",
            "--max-subscriptions",
            "100000",
        ],
    )
    .await;
    // Background traffic keeps the node's threads busy, as in production.
    let stop = stop_flag();
    let mut noise = Vec::new();
    for n in 0..2 {
        let url = node.ws_url();
        let stop = stop.clone();
        noise.push(tokio::spawn(async move {
            let mut listener = WsClient::connect_json(&url).await;
            listener.subscribe(&format!("noise:{n}")).await;
            let mut talker = WsClient::connect_json(&url).await;
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                talker.publish_ok(&format!("noise:{n}"), json!(sent)).await;
                assert_eq!(listener.recv_json().await["data"], sent);
                sent += 1;
            }
        }));
    }
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = node.ws_url();
            let internal = node.internal_addr();
            tokio::spawn(async move {
                let mut client = WsClient::connect_json(&url).await;
                let mut publisher = WsClient::connect_json(&url).await;
                for r in 0..ROUNDS {
                    let ch = format!("race:{c}:{r}");
                    client.subscribe(&ch).await;
                    if r % 2 == 0 {
                        publisher.publish_ok(&ch, json!(r)).await;
                    } else {
                        let body =
                            serde_json::to_vec(&json!({"channel": ch, "data": r})).expect("json");
                        let response = switchboard_testkit::http::request(
                            internal,
                            "POST",
                            "/api/v1/publish",
                            &[],
                            Some(&body),
                        )
                        .await;
                        assert_eq!(response.status, 200);
                    }
                    let m = client.recv_json().await;
                    assert_eq!(
                        m,
                        json!({"type": "message", "channel": ch, "data": r}),
                        "publish right after `subscribed` to {ch}"
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("racing client");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in noise {
        task.await.expect("noise task");
    }
}

fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cut_anywhere_and_commands_sent_together() {
    let node = Node::start("node-framing", &[]).await;
    let mut raw = RawWs::connect(node.public_addr(), Some(JSON_PROTOCOL)).await;
    raw.recv_type("welcome").await;

    // Three commands in one write are answered in order.
    let mut burst = Vec::new();
    for id in 1..=3 {
        let ping = json!({"type": "ping", "id": id}).to_string();
        burst.extend(encode_frame(true, opcode::TEXT, ping.as_bytes()));
    }
    raw.send_raw(&burst, burst.len()).await;
    for id in 1..=3 {
        assert_eq!(raw.recv_json().await, json!({"type": "pong", "id": id}));
    }

    // A frame written one byte at a time (header included) is still one command.
    let subscribe = json!({"type": "subscribe", "id": 4, "channel": "cut"}).to_string();
    raw.send_raw(&encode_frame(true, opcode::TEXT, subscribe.as_bytes()), 1)
        .await;
    assert_eq!(
        raw.recv_json().await,
        json!({"type": "subscribed", "id": 4, "channel": "cut"})
    );

    // A large publish with a 16-bit length, cut into 7-byte writes, arrives whole.
    let text = "x".repeat(3000);
    let publish = json!({"type": "publish", "id": 5, "channel": "cut", "data": text}).to_string();
    raw.send_raw(&encode_frame(true, opcode::TEXT, publish.as_bytes()), 7)
        .await;
    let mut published = false;
    let mut message = None;
    while !(published && message.is_some()) {
        let v = raw.recv_json().await;
        match v["type"].as_str() {
            Some("published") => published = true,
            Some("message") => message = Some(v),
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(message.unwrap()["data"], json!(text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_reading_gets_everything_in_order() {
    // More than the kernel's socket buffers hold: the node must queue frames behind the
    // full socket and write them as the client reads again, losing and reordering nothing.
    const MESSAGES: usize = 2000;
    let node = Node::start("node-pause", &["--outbound-queue", "4096"]).await;
    let mut raw =
        RawWs::connect_with_recv_buffer(node.public_addr(), Some(JSON_PROTOCOL), Some(4096)).await;
    raw.recv_type("welcome").await;
    raw.send_text(&json!({"type": "subscribe", "id": 1, "channel": "pause"}).to_string())
        .await;
    raw.recv_type("subscribed").await;

    let pad = "p".repeat(4096);
    for i in 0..MESSAGES {
        node.publish("pause", json!({"i": i, "pad": pad})).await;
    }
    for i in 0..MESSAGES {
        let v = raw.recv_json().await;
        assert_eq!(v["type"], "message", "{v}");
        assert_eq!(v["data"]["i"], i, "message {i} missing or out of order");
    }
    assert_eq!(
        node.metric("switchboard_slow_consumer_disconnects_total")
            .await,
        0.0
    );
    assert!(
        node.metric("switchboard_frames_queued_total").await > 0.0,
        "the socket never filled: the test did not exercise the queue"
    );
    // Still a working connection.
    raw.send_text(r#"{"type":"ping","id":9}"#).await;
    assert_eq!(raw.recv_json().await, json!({"type": "pong", "id": 9}));
}
