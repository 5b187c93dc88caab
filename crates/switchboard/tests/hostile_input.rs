//! Hostile input costs the sender only.
//!
//! Whatever bytes are published, on `switchboard.v1.proto`, on `switchboard.v1.json`
//! or through the server API, every text frame the node sends is valid UTF-8 and
//! valid JSON, so no publisher can make a JSON subscriber's connection fail; JSON
//! nested deeper than the node's limit is refused; the history API returns each
//! message as the `message` push carries it; and an API body dribbled one byte per
//! TCP segment is cut off at its deadline without pinning memory.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_proto::client::server_frame::Frame;
use switchboard_testkit::raw_ws::{RawRead, opcode};
use switchboard_testkit::ws::JSON_PROTOCOL;
use switchboard_testkit::{
    HttpResponse, Node, RECV_TIMEOUT, RawWs, RedisServer, WsClient, decode_base64, eventually,
    now_ms, unique_channel,
};

/// The node's JSON depth limit (docs/PROTOCOL.md, "Published data"): arrays and objects nested
/// at most this deep are accepted as `data`.
const MAX_JSON_DEPTH: usize = 64;

/// `depth` nested arrays around a number.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// A small deterministic generator (xorshift64*), so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Byte sequences that break UTF-8, JSON, or naive parsers.
const FRAGMENTS: &[&[u8]] = &[
    b"\xff",
    b"\xfe\xff",
    b"\xc0\xaf",         // overlong "/"
    b"\xe0\x80\xaf",     // overlong "/", three bytes
    b"\xf0\x80\x80\xaf", // overlong "/", four bytes
    b"\xc1\xbf",         // overlong, two bytes
    b"\xed\xa0\x80",     // U+D800 encoded in UTF-8 (CESU-8 / WTF-8)
    b"\xed\xbf\xbf",     // U+DFFF encoded in UTF-8
    b"\xf4\x90\x80\x80", // above U+10FFFF
    b"\xe2\x82",         // truncated sequence
    b"\x80",             // lone continuation byte
    b"\x00",             // NUL
    b"\x1f",             // a control character
    b"\xef\xbb\xbf",     // BOM
    br"\ud800",          // lone high surrogate, escaped
    br"\udc00",          // lone low surrogate, escaped
    br"\ud800\u0041",    // high surrogate followed by a non-surrogate
    br"\udbff\udbff",    // two high surrogates
    br"\ud83d\ude00",    // a valid pair
    br"\u0000",
    br"\u00e9",
    b"\"",
    b"\\",
    b"\xe2\x80\xa8", // U+2028
    "é😀".as_bytes(),
    b"plain",
];

/// Where the fragments go: `{}` is replaced by them.
const SHAPES: &[&str] = &[
    r#""{}""#,
    r#"{"k":"{}"}"#,
    r#"["{}",1]"#,
    r#"{"{}":0}"#,
    "{}",
    r#"[{"a":["{}"]}]"#,
];

/// Hostile payloads: random mixes of fragments in JSON-ish shapes, and fixed ones.
fn hostile_payloads() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed_0f51_717c_4b0a);
    let mut out: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b" ".to_vec(),
        b"null".to_vec(),
        b"123456789012345678901234567890".to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
        b"{}\x00".to_vec(),
        br#"{"a":1,"a":2}"#.to_vec(),
        br#"{"k":"\ud800"}"#.to_vec(),
        br#"{"k":"\ud83d\ude00"}"#.to_vec(),
        nested(MAX_JSON_DEPTH).into_bytes(),
        nested(MAX_JSON_DEPTH + 1).into_bytes(),
        nested(130).into_bytes(),
        nested(20_000).into_bytes(),
        format!("{}1", "[".repeat(30_000)).into_bytes(),
        format!(r#"{}"x"{}"#, r#"{"a":"#.repeat(200), "}".repeat(200)).into_bytes(),
    ];
    for _ in 0..240 {
        let shape = SHAPES[rng.below(SHAPES.len())];
        let mut middle = Vec::new();
        for _ in 0..1 + rng.below(4) {
            middle.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]);
        }
        let (before, after) = shape.split_once("{}").expect("shape has {}");
        let mut p = before.as_bytes().to_vec();
        p.extend_from_slice(&middle);
        p.extend_from_slice(after.as_bytes());
        out.push(p);
    }
    out
}

fn lossy(bytes: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
    if bytes.len() > 120 {
        format!("{shown:?}... ({} bytes)", bytes.len())
    } else {
        format!("{shown:?} {bytes:02x?}")
    }
}

/// A JSON client on a raw socket that checks every frame the node sends it: a text
/// frame must be UTF-8 and JSON; a close or a lost connection fails the test.
struct Watcher {
    ws: RawWs,
    next_id: u64,
}

impl Watcher {
    async fn connect(node: &Node) -> Watcher {
        let mut w = Watcher {
            ws: RawWs::connect(node.public_addr(), Some(JSON_PROTOCOL)).await,
            next_id: 1000,
        };
        let welcome = w.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        w
    }

    /// The next text frame, as JSON.
    async fn next(&mut self) -> Value {
        loop {
            match self.ws.read(RECV_TIMEOUT).await {
                RawRead::Frame(f) if f.opcode == opcode::TEXT => {
                    let text = std::str::from_utf8(&f.payload).unwrap_or_else(|e| {
                        panic!(
                            "a text frame that is not UTF-8 ({e}): {}",
                            lossy(&f.payload)
                        )
                    });
                    return serde_json::from_str(text).unwrap_or_else(|e| {
                        panic!("a text frame that is not JSON ({e}): {}", lossy(&f.payload))
                    });
                }
                RawRead::Frame(f) if f.opcode == opcode::PING || f.opcode == opcode::PONG => {}
                other => panic!("the JSON client lost its connection: {other:?}"),
            }
        }
    }

    /// Sends a command (text) with `id` and returns the reply carrying it; pushes
    /// read meanwhile go to `pushes`.
    async fn request(&mut self, text: &str, id: u64, pushes: &mut Vec<Value>) -> Value {
        self.ws.send_text(text).await;
        loop {
            let v = self.next().await;
            // A command too malformed to read its id is answered without one.
            let unread_id = v["type"] == "error" && v.get("id").is_none();
            if (v["id"] == id && v["type"] != "message") || unread_id {
                return v;
            }
            pushes.push(v);
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        self.next_id += 1;
        let id = self.next_id;
        let reply = self
            .request(
                &json!({"type": "subscribe", "id": id, "channel": channel}).to_string(),
                id,
                &mut Vec::new(),
            )
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    async fn history(&mut self, channel: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let reply = self
            .request(
                &json!({"type": "history", "id": id, "channel": channel, "limit": 1000})
                    .to_string(),
                id,
                &mut Vec::new(),
            )
            .await;
        assert_eq!(reply["type"], "history", "{reply}");
        reply
    }
}

/// `POST /api/v1/publish` with `data` spliced in as raw bytes.
async fn api_publish_raw(node: &Node, channel: &str, data: &[u8]) -> HttpResponse {
    let mut body = format!(r#"{{"channel":"{channel}","data":"#).into_bytes();
    body.extend_from_slice(data);
    body.push(b'}');
    node.internal_raw("POST", "/api/v1/publish", &[], Some(&body))
        .await
}

/// Checks that a push carries exactly `sent`: as `data_b64`, or as `data` when
/// `sent` is JSON (which must then parse to the same value).
fn assert_carries(push: &Value, sent: &[u8], what: &str) {
    assert_eq!(push["type"], "message", "{what}: {push}");
    if let Some(b64) = push.get("data_b64") {
        assert!(push.get("data").is_none(), "{what}: both data and data_b64");
        let got = decode_base64(b64.as_str().expect("data_b64 is a string")).expect("base64");
        assert_eq!(got, sent, "{what}: data_b64 does not carry what was sent");
    } else {
        let want: Value = serde_json::from_slice(sent).unwrap_or_else(|e| {
            panic!(
                "{what}: relayed as data although not JSON a strict parser reads ({e}): {}",
                lossy(sent)
            )
        });
        assert_eq!(push["data"], want, "{what}");
    }
}

/// Reads pushes until `n` messages of `channel` have arrived after `pushes` (checked
/// text frames all of them).
async fn collect(w: &mut Watcher, pushes: &mut Vec<Value>, channel: &str, n: usize) -> Vec<Value> {
    let count = |p: &Vec<Value>| {
        p.iter()
            .filter(|v| v["type"] == "message" && v["channel"] == channel)
            .count()
    };
    while count(pushes) < n {
        pushes.push(w.next().await);
    }
    pushes
        .iter()
        .filter(|v| v["type"] == "message" && v["channel"] == channel)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_text_frame_is_utf8_json_whatever_is_published() {
    let node = Node::builder("node-hostile")
        .namespaces()
        .args(["--max-message-size", "1048576"])
        .args(["--client-rate", "100000", "--client-burst", "100000"])
        .start()
        .await;
    let proto_ch = unique_channel("hist:proto");
    let json_ch = unique_channel("hist:json");
    let api_ch = unique_channel("hist:api");
    let mut watcher = Watcher::connect(&node).await;
    for ch in [&proto_ch, &json_ch, &api_ch] {
        watcher.subscribe(ch).await;
    }
    let mut proto = WsClient::connect_proto(&node.ws_url()).await;
    let mut json_client = Watcher::connect(&node).await;

    let payloads = hostile_payloads();
    let (mut proto_sent, mut json_sent, mut api_sent) = (Vec::new(), Vec::new(), Vec::new());
    for (i, p) in payloads.iter().enumerate() {
        let what = format!("payload {i} {}", lossy(p));
        // Protobuf: any bytes are accepted.
        let reply = proto.proto_publish(&proto_ch, p).await;
        assert!(
            matches!(reply.frame, Some(Frame::Published(_))),
            "proto publish of {what}: {reply:?}"
        );
        proto_sent.push(p.clone());

        // JSON: what a text frame can carry (UTF-8) is either accepted or refused
        // with bad_request, never relayed broken.
        if let Ok(text) = std::str::from_utf8(p) {
            let id = i as u64 + 1;
            let command =
                format!(r#"{{"type":"publish","id":{id},"channel":"{json_ch}","data":{text}}}"#);
            let reply = json_client.request(&command, id, &mut Vec::new()).await;
            match reply["type"].as_str() {
                Some("published") => json_sent.push(p.clone()),
                Some("error") => assert_eq!(reply["code"], "bad_request", "{what}: {reply}"),
                _ => panic!("json publish of {what}: {reply}"),
            }
        }

        // Server API: the same, with 200 or 400.
        let response = api_publish_raw(&node, &api_ch, p).await;
        match response.status {
            200 => api_sent.push(p.clone()),
            400 => assert_eq!(response.error_code(), "bad_request", "{what}"),
            other => panic!("API publish of {what}: {other} {}", response.text()),
        }
    }
    // What the contract says of particular payloads.
    let depth_ok = nested(MAX_JSON_DEPTH).into_bytes();
    let too_deep = nested(MAX_JSON_DEPTH + 1).into_bytes();
    let lone_surrogate = br#"{"k":"\ud800"}"#.to_vec();
    let pair = br#"{"k":"\ud83d\ude00"}"#.to_vec();
    for sent in [&json_sent, &api_sent] {
        assert!(
            sent.contains(&depth_ok),
            "JSON at the depth limit is accepted"
        );
        assert!(
            !sent.contains(&too_deep),
            "JSON over the depth limit is refused"
        );
        assert!(
            !sent.contains(&lone_surrogate),
            "a lone surrogate escape is refused"
        );
        assert!(sent.contains(&pair), "a surrogate pair is accepted");
    }

    // Everything accepted reaches the watcher, as sent, in order, in checked frames.
    let mut pushes = Vec::new();
    for (ch, sent, how) in [
        (&proto_ch, &proto_sent, "proto"),
        (&json_ch, &json_sent, "json"),
        (&api_ch, &api_sent, "api"),
    ] {
        let got = collect(&mut watcher, &mut pushes, ch, sent.len()).await;
        for (i, (push, p)) in got.iter().zip(sent.iter()).enumerate() {
            assert_carries(push, p, &format!("{how} message {i} {}", lossy(p)));
            if std::str::from_utf8(p).is_err() || p.as_slice() == too_deep.as_slice() {
                assert!(push.get("data_b64").is_some(), "{how} {i}: {push}");
            }
        }
        // History, through the client and the API, carries the same pushes.
        let by_offset = |v: &Value| v["offset"].as_u64().expect("offset");
        let reply = json_client.history(ch).await;
        let response = node.history_api(ch, "?limit=1000").await;
        assert_eq!(response.status, 200, "{}", response.text());
        let api = response.json();
        for messages in [&reply["messages"], &api["messages"]] {
            let messages = messages.as_array().expect("messages");
            assert!(!messages.is_empty(), "{how}: history is empty");
            for m in messages {
                let push = got
                    .iter()
                    .find(|p| by_offset(p) == by_offset(m))
                    .unwrap_or_else(|| panic!("{how}: history message {m} was never pushed"));
                assert_eq!(m, push, "{how}: history differs from the push");
            }
        }
    }
    assert_eq!(node.readyz_status().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proto_publisher_cannot_poison_a_json_subscriber() {
    let node = Node::builder("node-poison").namespaces().start().await;
    let ch = unique_channel("hist:poison");
    let mut browser = WsClient::connect_json(&node.ws_url()).await;
    browser.subscribe(&ch).await;
    let mut publisher = WsClient::connect_proto(&node.ws_url()).await;

    // A JSON string whose content is not UTF-8: it passes a JSON check that does
    // not look inside strings.
    let poison: &[u8] = b"\"\xff\xfe\xc0\xaf\"";
    for data in [poison, br#"{"after":"poison"}"#] {
        let reply = publisher.proto_publish(&ch, data).await;
        assert!(
            matches!(reply.frame, Some(Frame::Published(_))),
            "{reply:?}"
        );
    }
    let first = browser.recv_message_push().await;
    assert_carries(&first, poison, "the poison");
    assert!(first.get("data_b64").is_some(), "{first}");
    let second = browser.recv_message_push().await;
    assert_eq!(second["data"], json!({"after": "poison"}));

    // A subscriber that recovers from history gets the same, and so does the API.
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    let offset = first["offset"].as_u64().expect("offset");
    let mut late = WsClient::connect_json(&node.ws_url()).await;
    let reply = late.subscribe_recover(&ch, &epoch, offset - 1).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(late.recv_message_push().await, first);
    assert_eq!(late.recv_message_push().await, second);
    let history = node.history_api(&ch, "").await.json();
    assert_eq!(history["messages"], json!([first, second]));
    // And both JSON clients are still connected.
    browser.ping_pong().await;
    late.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_deeper_than_the_limit_is_refused() {
    let node = Node::builder("node-depth")
        .args(["--max-message-size", "1048576"])
        .start()
        .await;
    let ch = unique_channel("depth");
    let mut watcher = WsClient::connect_json(&node.ws_url()).await;
    watcher.subscribe(&ch).await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    let publish = |id: u64, data: &str| {
        format!(r#"{{"type":"publish","id":{id},"channel":"{ch}","data":{data}}}"#)
    };
    let deep_objects = format!(
        "{}1{}",
        r#"{"a":"#.repeat(MAX_JSON_DEPTH + 1),
        "}".repeat(MAX_JSON_DEPTH + 1)
    );

    // The client: at the limit accepted, one deeper refused, far deeper refused.
    client.send_text(&publish(1, &nested(MAX_JSON_DEPTH))).await;
    assert_eq!(client.recv_reply(1).await["type"], "published");
    let mut refused = 0;
    for (id, data) in [
        (2, nested(MAX_JSON_DEPTH + 1)),
        (3, nested(100_000)),
        (4, deep_objects.clone()),
    ] {
        client.send_text(&publish(id, &data)).await;
        let reply = client.recv_reply(id).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "bad_request", "{reply}");
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|m| m.contains(&MAX_JSON_DEPTH.to_string())),
            "the message names the limit: {reply}"
        );
        refused += 1;
    }

    // The server API: the same, as 200 and 400.
    let response = api_publish_raw(&node, &ch, nested(MAX_JSON_DEPTH).as_bytes()).await;
    assert_eq!(response.status, 200, "{}", response.text());
    for data in [nested(MAX_JSON_DEPTH + 1), nested(100_000), deep_objects] {
        let response = api_publish_raw(&node, &ch, data.as_bytes()).await;
        assert_eq!(response.status, 400, "{}", response.text());
        assert_eq!(response.error_code(), "bad_request");
        refused += 1;
    }
    // Broadcast and send read data the same way.
    let body = format!(r#"{{"channels":["{ch}"],"data":{}}}"#, nested(1000));
    let response = node
        .internal_raw("POST", "/api/v1/broadcast", &[], Some(body.as_bytes()))
        .await;
    assert_eq!(response.status, 400, "{}", response.text());
    let body = format!(r#"{{"user":"u","data":{}}}"#, nested(1000));
    let response = node
        .internal_raw("POST", "/api/v1/send", &[], Some(body.as_bytes()))
        .await;
    assert_eq!(response.status, 400, "{}", response.text());
    refused += 2;

    // On the protobuf subprotocol data is any bytes: deep JSON is relayed, but to
    // JSON clients only as data_b64.
    let mut proto = WsClient::connect_proto(&node.ws_url()).await;
    let deep = nested(MAX_JSON_DEPTH + 1);
    let reply = proto.proto_publish(&ch, deep.as_bytes()).await;
    assert!(
        matches!(reply.frame, Some(Frame::Published(_))),
        "{reply:?}"
    );

    // The watcher got exactly what was accepted, in order.
    let want: Value = serde_json::from_str(&nested(MAX_JSON_DEPTH)).unwrap();
    for who in ["client", "API"] {
        let m = watcher.recv_message_push().await;
        assert_eq!(m["data"], want, "the {who}'s message at the limit");
    }
    let m = watcher.recv_message_push().await;
    assert_carries(&m, deep.as_bytes(), "proto");
    assert!(m.get("data_b64").is_some(), "{m}");

    node.wait_metric_with(
        "switchboard_limit_rejections_total",
        &[("limit", "json_depth")],
        &format!("== {refused}"),
        |v| v == refused as f64,
    )
    .await;
    client.ping_pong().await;
    assert_eq!(node.readyz_status().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_api_returns_each_message_as_the_push_does() {
    let node = Node::builder("node-history-api")
        .namespaces()
        .args(["--max-message-size", "1048576"])
        .start()
        .await;
    let ch = unique_channel("hist:as-pushed");
    let mut proto = WsClient::connect_proto(&node.ws_url()).await;
    let sent: Vec<Vec<u8>> = vec![
        br#"{"x":1}"#.to_vec(),
        b"\x00\xff binary".to_vec(),
        b"\"\xff\"".to_vec(),
        nested(MAX_JSON_DEPTH).into_bytes(),
        nested(130).into_bytes(),
        br#""\ud83d\ude00""#.to_vec(),
    ];
    for data in &sent {
        let reply = proto.proto_publish(&ch, data).await;
        assert!(
            matches!(reply.frame, Some(Frame::Published(_))),
            "{reply:?}"
        );
    }
    let response = node.history_api(&ch, "").await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    let epoch = body["epoch"].as_str().expect("epoch");
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), sent.len(), "{body}");
    for (i, (m, data)) in messages.iter().zip(&sent).enumerate() {
        assert!(!m.is_null(), "message {i} is null: {body}");
        assert_carries(m, data, &format!("message {i}"));
        assert_eq!(m["channel"], ch.as_str());
        assert_eq!(m["epoch"], epoch);
        assert_eq!(m["offset"], i as u64 + 1);
    }
    let mut client = Watcher::connect(&node).await;
    let reply = client.history(&ch).await;
    assert_eq!(
        &reply["messages"], &body["messages"],
        "as the history reply"
    );
    for i in [1, 2, 4] {
        assert!(messages[i].get("data_b64").is_some(), "{}", messages[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_marked_json_that_is_not_utf8_reaches_json_clients_as_base64() {
    use prost::Message as _;
    use switchboard_proto::backplane::{Envelope, PayloadEncoding, Target, target::Kind};

    let redis = RedisServer::start().await;
    let node = Node::start_on(&redis, "node-foreign", &[]).await;
    let ch = unique_channel("foreign");
    let mut browser = WsClient::connect_json(&node.ws_url()).await;
    browser.subscribe(&ch).await;
    let topic = format!("switchboard:ch:{{{ch}}}");
    redis.wait_numsub(&ch, 1).await;

    // An envelope as a node of another version (or history written before
    // publishes were checked) may carry it: marked JSON, not UTF-8.
    let payload: &[u8] = b"\"\xff\xfe\"";
    let envelope = Envelope {
        id: bytes::Bytes::from_static(b"0123456789abcdef"),
        origin: "node-elsewhere".into(),
        published_us: now_ms() * 1000,
        target: Some(Target {
            kind: Some(Kind::Channel(ch.clone())),
        }),
        payload: bytes::Bytes::from_static(payload),
        encoding: PayloadEncoding::Json as i32,
        ..Default::default()
    };
    let receivers: i64 = redis
        .query(
            ::redis::cmd("PUBLISH")
                .arg(&topic)
                .arg(envelope.encode_to_vec()),
        )
        .await;
    assert_eq!(receivers, 1);
    let m = browser.recv_message_push().await;
    assert_carries(&m, payload, "the foreign envelope");
    assert!(m.get("data_b64").is_some(), "{m}");
    node.wait_metric_with(
        "switchboard_invalid_payloads_total",
        &[("reason", "not_utf8")],
        "== 1",
        |v| v == 1.0,
    )
    .await;
    // The connection lives on.
    node.publish(&ch, json!({"after": true})).await;
    assert_eq!(
        browser.recv_message_push().await["data"],
        json!({"after": true})
    );
}

/// How long the node gives an API request body (docs/PROTOCOL.md, "Server API").
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One slow-loris caller: sends a request head announcing `length` bytes of body,
/// then the body one byte per write with TCP_NODELAY (one byte per segment), until
/// the node answers or closes, or `give_up` passes. Returns when the node cut it off
/// (since the head was sent) and the status it answered, if any.
fn dribble(
    addr: std::net::SocketAddr,
    length: usize,
    give_up: Duration,
    started: Arc<AtomicBool>,
) -> (Option<Duration>, Option<u16>) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("write head");
    let t0 = Instant::now();
    started.store(true, Ordering::SeqCst);
    // The answer is read on its own thread, while this one writes.
    let mut reader = stream.try_clone().expect("clone");
    let answer = std::thread::spawn(move || {
        reader
            .set_read_timeout(Some(give_up + Duration::from_secs(5)))
            .expect("read timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
        let at = t0.elapsed();
        let status = std::str::from_utf8(&got)
            .ok()
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        (at, status)
    });
    let mut sent = 0;
    while sent < length && t0.elapsed() < give_up && !answer.is_finished() {
        if stream.write_all(b" ").is_err() {
            break;
        }
        sent += 1;
        // The slowness is the attack being simulated, not a wait for anything.
        std::thread::sleep(Duration::from_millis(1));
    }
    let (at, status) = answer.join().expect("reader thread");
    let cut = (at < give_up).then_some(at);
    (cut, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_api_body_is_cut_off_at_its_deadline_without_pinning_memory() {
    const CALLERS: usize = 4;
    let node = Node::start("node-dribble", &[]).await;
    let ch = unique_channel("dribble");
    // Settle the allocator with a few ordinary calls before the baseline.
    for i in 0..20 {
        node.publish(&ch, json!({"warm": i})).await;
    }
    let before = node.rss_kib();
    let addr = node.internal_addr();
    let give_up = BODY_READ_TIMEOUT * 3;
    let flags: Vec<Arc<AtomicBool>> = (0..CALLERS).map(|_| Arc::default()).collect();
    let callers: Vec<_> = flags
        .iter()
        .map(|started| {
            let started = started.clone();
            std::thread::spawn(move || dribble(addr, 20_000, give_up, started))
        })
        .collect();
    eventually(
        "every slow caller has sent its head",
        Duration::from_secs(10),
        || async {
            let n = flags.iter().filter(|f| f.load(Ordering::SeqCst)).count();
            if n == CALLERS {
                Ok(())
            } else {
                Err(format!("{n} of {CALLERS}"))
            }
        },
    )
    .await;

    // Meanwhile other callers are served, promptly; and memory stays put.
    let mut peak = before;
    let mut served = 0;
    while !callers.iter().all(|c| c.is_finished()) {
        let t = Instant::now();
        node.publish(&ch, json!({"served": served})).await;
        // Generous: the point is that callers are served, on a busy machine too.
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "an API call took {:?} beside the slow callers",
            t.elapsed()
        );
        served += 1;
        peak = peak.max(node.rss_kib());
        // A sample every 100 ms for as long as the slow callers last: the duration
        // is theirs, there is no event to wait for.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "node RSS: {before} KiB before the slow callers, {peak} KiB at most while they dribbled; {served} other calls served meanwhile"
    );
    assert!(served >= 3, "only {served} calls served");
    for (i, caller) in callers.into_iter().enumerate() {
        let (cut, status) = caller.join().expect("caller thread");
        eprintln!("slow caller {i}: cut off after {cut:?} with status {status:?}");
        let at = cut.unwrap_or_else(|| panic!("caller {i} was not cut off within {give_up:?}"));
        assert!(
            at >= BODY_READ_TIMEOUT - Duration::from_millis(500)
                && at < BODY_READ_TIMEOUT + Duration::from_secs(5),
            "caller {i} cut off after {at:?}, want about {BODY_READ_TIMEOUT:?}"
        );
        assert!(
            status.is_none() || status == Some(408),
            "caller {i} got status {status:?}, want 408 (or a closed connection)"
        );
    }
    // Each caller sent about ten kilobytes by then; what they pinned is about that
    // (plus a buffer of the declared 20 kB each), not an allocation per segment.
    let grown_kib = peak.saturating_sub(before);
    assert!(
        grown_kib < 16 * 1024,
        "RSS grew by {grown_kib} KiB (from {before} KiB to {peak} KiB) while {CALLERS} callers dribbled their bodies"
    );
    node.wait_metric_with(
        "switchboard_limit_rejections_total",
        &[("limit", "body_read_timeout")],
        &format!("== {CALLERS}"),
        |v| v == CALLERS as f64,
    )
    .await;
}
