//! The Pusher endpoint's own rules, and every kind of bad input on it: each is
//! answered as docs/PUSHER.md says, the node stays up, and a well-behaved
//! subscriber keeps receiving. (Compatibility with the real Pusher libraries
//! is tested with those libraries, in tests/pusher/.)

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use switchboard_testkit::{Node, RedisServer, WsClient};

const APP: [&str; 6] = [
    "--pusher-app-id",
    "app1",
    "--pusher-key",
    "app1-key",
    "--pusher-secret",
    "app1-secret",
];

/// The hex HMAC-SHA256 a Pusher app's auth endpoint would sign with.
fn sign(message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"app1-secret").expect("any key length");
    mac.update(message.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A connection to the Pusher endpoint, past `pusher:connection_established`.
struct Client {
    ws: WsClient,
    socket_id: String,
}

impl Client {
    async fn connect(node: &Node) -> Client {
        let url = format!("ws://{}/app/app1-key?protocol=7", node.public_addr());
        let mut ws = WsClient::connect_plain(&url).await;
        let first = ws.recv_json().await;
        assert_eq!(first["event"], "pusher:connection_established", "{first}");
        let data: Value = serde_json::from_str(first["data"].as_str().expect("data is a string"))
            .expect("data holds JSON");
        let socket_id = data["socket_id"].as_str().expect("socket_id").to_owned();
        assert_eq!(data["activity_timeout"], 120);
        Client { ws, socket_id }
    }

    async fn send(&mut self, event: Value) {
        self.ws.send_json(&event).await;
    }

    /// The next frame whose event is `event`; others before it are set aside.
    async fn expect(&mut self, event: &str) -> Value {
        self.ws.take_json(|v| v["event"] == event).await
    }

    async fn subscribe(&mut self, channel: &str, auth: Option<String>, data: Option<&str>) {
        let mut d = json!({ "channel": channel });
        if let Some(auth) = auth {
            d["auth"] = json!(auth);
        }
        if let Some(data) = data {
            d["channel_data"] = json!(data);
        }
        self.send(json!({ "event": "pusher:subscribe", "data": d }))
            .await;
    }

    async fn subscribed(&mut self, channel: &str) -> Value {
        let frame = self.expect("pusher_internal:subscription_succeeded").await;
        assert_eq!(frame["channel"], channel, "{frame}");
        frame
    }

    fn auth(&self, channel: &str, data: Option<&str>) -> String {
        let signed = match data {
            None => format!("{}:{channel}", self.socket_id),
            Some(d) => format!("{}:{channel}:{d}", self.socket_id),
        };
        format!("app1-key:{}", sign(&signed))
    }
}

/// A node with one Pusher app, and a watcher on public channel `watched`
/// that must never be disturbed by anyone else's bad input.
async fn node_with_watcher(id: &str) -> (Node, Client) {
    let node = Node::builder(id)
        .args(APP)
        .args(["--max-message-size", "4096"])
        .start()
        .await;
    let mut watcher = Client::connect(&node).await;
    watcher.subscribe("watched", None, None).await;
    watcher.subscribed("watched").await;
    (node, watcher)
}

/// The watcher still receives what the server publishes to its channel.
async fn assert_watcher_receives(node: &Node, watcher: &mut Client, n: u64) {
    node.publish("app1:watched", json!({ "n": n })).await;
    let event = watcher.expect("message").await;
    assert_eq!(event["channel"], "watched");
    let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["n"], n, "{event}");
}

#[tokio::test]
async fn an_unknown_key_or_protocol_version_is_closed_with_the_code_pusher_clients_act_on() {
    let node = Node::builder("pusher-refusals").args(APP).start().await;
    for (path, code) in [
        ("/app/no-such-key?protocol=7", 4001),
        ("/app/app1-key", 4008),
        ("/app/app1-key?protocol=6", 4007),
    ] {
        let url = format!("ws://{}{path}", node.public_addr());
        let mut ws = WsClient::connect_plain(&url).await;
        let error = ws.take_json(|v| v["event"] == "pusher:error").await;
        assert_eq!(error["data"]["code"], code, "{path}: {error}");
        let (close, _) = ws.recv_close().await;
        assert_eq!(close, code, "{path}");
    }
    // The endpoint is off without apps.
    let off = Node::start("pusher-off", &[]).await;
    let response = off
        .public_raw("GET", "/app/app1-key?protocol=7", &[], None)
        .await;
    assert_eq!(response.status, 404);
}

#[tokio::test]
async fn bad_frames_are_answered_with_pusher_error_and_harm_nobody() {
    let (node, mut watcher) = node_with_watcher("pusher-bad-frames").await;
    let mut client = Client::connect(&node).await;
    let bad = [
        "not json",
        "[1,2]",
        r#"{"data":{}}"#,
        r#"{"event":"pusher:subscribe"}"#,
        r#"{"event":"pusher:subscribe","data":{"auth":"x"}}"#,
        r#"{"event":"pusher:subscribe","data":"{not json"}"#,
        r#"{"event":"no-such-event","data":{}}"#,
        r#"{"event":"client-x","data":{}}"#,
    ];
    for (i, frame) in bad.iter().enumerate() {
        client.ws.send_text(frame).await;
        let error = client.expect("pusher:error").await;
        assert!(
            error["data"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{frame}: {error}"
        );
        assert_watcher_receives(&node, &mut watcher, i as u64).await;
    }
    client.ws.send_binary(vec![1, 2, 3]).await;
    client.expect("pusher:error").await;
    // Still served.
    client
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    client.expect("pusher:pong").await;
}

#[tokio::test]
async fn bad_channel_names_and_authorizations_are_subscription_errors() {
    let (node, mut watcher) = node_with_watcher("pusher-bad-subscribe").await;
    let mut client = Client::connect(&node).await;
    let cases: Vec<(&str, Option<String>, Option<&str>, u16)> = vec![
        ("has:colon", None, None, 400),
        ("", None, None, 400),
        ("private-a", None, None, 401),
        ("private-a", Some("app1-key:00".into()), None, 401),
        ("private-a", Some("other-key:00".into()), None, 401),
        ("private-a", Some("garbage".into()), None, 401),
        // Signed for another socket.
        (
            "private-a",
            Some(format!("app1-key:{}", sign("1.1:private-a"))),
            None,
            401,
        ),
        (
            "presence-a",
            Some(client.auth("presence-a", None)),
            None,
            401,
        ),
    ];
    for (i, (channel, auth, data, status)) in cases.into_iter().enumerate() {
        client.subscribe(channel, auth, data).await;
        let error = client.expect("pusher:subscription_error").await;
        assert_eq!(error["data"]["status"], status, "{channel}: {error}");
        assert_watcher_receives(&node, &mut watcher, i as u64).await;
    }
    let long = "x".repeat(165);
    client.subscribe(&long, None, None).await;
    client.expect("pusher:subscription_error").await;
    // A correct signature is accepted.
    let auth = client.auth("private-a", None);
    client.subscribe("private-a", Some(auth), None).await;
    client.subscribed("private-a").await;
}

#[tokio::test]
async fn client_events_reach_the_others_only_where_allowed_and_within_the_rate() {
    let (node, mut watcher) = node_with_watcher("pusher-client-events").await;
    let mut a = Client::connect(&node).await;
    let mut b = Client::connect(&node).await;
    for c in [&mut a, &mut b] {
        let auth = c.auth("private-room", None);
        c.subscribe("private-room", Some(auth), None).await;
        c.subscribed("private-room").await;
    }
    a.send(json!({"event": "client-typing", "channel": "private-room", "data": {"who": "a"}}))
        .await;
    let got = b.expect("client-typing").await;
    assert_eq!(got["channel"], "private-room");
    let data: Value = serde_json::from_str(got["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"who": "a"}));
    // Refused: public channel, a channel not subscribed to.
    a.send(json!({"event": "client-x", "channel": "watched", "data": {}}))
        .await;
    a.expect("pusher:error").await;
    a.send(json!({"event": "client-x", "channel": "private-other", "data": {}}))
        .await;
    a.expect("pusher:error").await;
    // Over 10 per second: 4301.
    for i in 0..30 {
        a.send(json!({"event": "client-burst", "channel": "private-room", "data": {"i": i}}))
            .await;
    }
    let limited =
        a.ws.take_json(|v| v["event"] == "pusher:error" && v["data"]["code"] == 4301)
            .await;
    assert!(limited["data"]["message"].as_str().is_some());
    // The sender never receives its own events: the marker below is the
    // first thing a gets after its own bursts (only errors came before).
    node.publish("app1:private-room", json!("marker")).await;
    loop {
        let frame = a.ws.recv_json().await;
        assert_ne!(
            frame["event"], "client-burst",
            "echoed to the sender: {frame}"
        );
        assert_ne!(
            frame["event"], "client-typing",
            "echoed to the sender: {frame}"
        );
        if frame["event"] == "message" {
            break;
        }
    }
    assert_watcher_receives(&node, &mut watcher, 99).await;
}

#[tokio::test]
async fn presence_lists_users_once_and_member_events_follow_users_across_nodes() {
    let redis = RedisServer::start().await;
    let n1 = Node::builder("pusher-presence-1")
        .redis(&redis)
        .args(APP)
        .start()
        .await;
    let n2 = Node::builder("pusher-presence-2")
        .redis(&redis)
        .args(APP)
        .start()
        .await;
    let member = |user: &str| json!({"user_id": user, "user_info": {"name": user}}).to_string();
    let mut watcher = Client::connect(&n1).await;
    let data = member("w");
    let auth = watcher.auth("presence-room", Some(&data));
    watcher
        .subscribe("presence-room", Some(auth), Some(&data))
        .await;
    let first = watcher.subscribed("presence-room").await;
    let list: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
    assert_eq!(list["presence"]["count"], 1, "{list}");

    // User u with two connections on two nodes: one member_added, one member_removed.
    let data = member("u");
    let mut u1 = Client::connect(&n1).await;
    let auth = u1.auth("presence-room", Some(&data));
    u1.subscribe("presence-room", Some(auth), Some(&data)).await;
    u1.subscribed("presence-room").await;
    let added = watcher.expect("pusher_internal:member_added").await;
    let added: Value = serde_json::from_str(added["data"].as_str().unwrap()).unwrap();
    assert_eq!(added, json!({"user_id": "u", "user_info": {"name": "u"}}));

    let mut u2 = Client::connect(&n2).await;
    let auth = u2.auth("presence-room", Some(&data));
    u2.subscribe("presence-room", Some(auth), Some(&data)).await;
    let second = u2.subscribed("presence-room").await;
    let list: Value = serde_json::from_str(second["data"].as_str().unwrap()).unwrap();
    assert_eq!(list["presence"]["count"], 2, "each user once: {list}");

    // u's first connection leaves: u is still present, nobody is told.
    drop(u1);
    // u's second leaves: member_removed, once.
    u2.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}))
        .await;
    let removed = watcher.expect("pusher_internal:member_removed").await;
    let removed: Value = serde_json::from_str(removed["data"].as_str().unwrap()).unwrap();
    assert_eq!(removed, json!({"user_id": "u"}));
    // Nothing else about u came before it (no second added, no early removal).
    n1.publish("app1:presence-room", json!("marker")).await;
    let next = watcher.ws.recv_json().await;
    assert_eq!(next["event"], "message", "no other member event: {next}");
}

#[tokio::test]
async fn the_node_protocol_meets_pusher_channels_as_documented() {
    let node = Node::builder("pusher-native").args(APP).start().await;
    let mut native = WsClient::connect_json(&node.ws_url()).await;
    // Private and presence channels of an app need a Pusher authorization.
    for channel in ["app1:private-a", "app1:presence-a"] {
        let id = native.next_id();
        native
            .send_json(&json!({"id": id, "type": "subscribe", "channel": channel}))
            .await;
        let reply = native.recv_reply(id).await;
        assert_eq!(reply["code"], "forbidden", "{channel}: {reply}");
    }
    // Publishing into an app's channel is the server APIs' (and client events').
    let id = native.next_id();
    native
        .send_json(&json!({"id": id, "type": "publish", "channel": "app1:news", "data": 1}))
        .await;
    assert_eq!(native.recv_reply(id).await["code"], "forbidden");
    // A public channel is readable; a client event... is not possible there, but a
    // server publish reaches both kinds of subscriber.
    native.subscribe("app1:news").await;
    let mut pusher = Client::connect(&node).await;
    pusher.subscribe("news", None, None).await;
    pusher.subscribed("news").await;
    node.publish("app1:news", json!({"headline": 1})).await;
    let n = native.recv_message_push().await;
    assert_eq!(n["data"], json!({"headline": 1}));
    let p = pusher.expect("message").await;
    assert_eq!(p["data"], json!("{\"headline\":1}"));
}

#[tokio::test]
async fn cache_channels_replay_the_last_event_or_say_cache_miss() {
    let node = Node::builder("pusher-cache").args(APP).start().await;
    let mut first = Client::connect(&node).await;
    first.subscribe("cache-ticker", None, None).await;
    first.subscribed("cache-ticker").await;
    first.expect("pusher:cache_miss").await;
    node.publish("app1:cache-ticker", json!({"price": 1})).await;
    node.publish("app1:cache-ticker", json!({"price": 2})).await;
    first.expect("message").await;
    let mut late = Client::connect(&node).await;
    late.subscribe("cache-ticker", None, None).await;
    late.subscribed("cache-ticker").await;
    let replay = late.expect("message").await;
    assert_eq!(
        replay["data"],
        json!("{\"price\":2}"),
        "the last event only"
    );
    node.publish("app1:cache-ticker", json!({"price": 3})).await;
    let live = late.expect("message").await;
    assert_eq!(live["data"], json!("{\"price\":3}"));
}

#[tokio::test]
async fn a_draining_node_sends_its_pusher_clients_back_at_once() {
    let node = Node::builder("pusher-drain")
        .args(APP)
        .args(["--drain-timeout", "2"])
        .start()
        .await;
    let mut client = Client::connect(&node).await;
    node.sigterm();
    let error = client.expect("pusher:error").await;
    assert_eq!(error["data"]["code"], 4200, "{error}");
    let (code, _) = client.ws.recv_close().await;
    assert_eq!(code, 4200);
}

#[tokio::test]
async fn unsigned_or_badly_signed_api_requests_are_refused() {
    let node = Node::builder("pusher-api-refusals").args(APP).start().await;
    let body = br#"{"name":"e","channel":"c","data":"x"}"#;
    for (path, status) in [
        ("/apps/app1/events", 401),
        (
            "/apps/app1/events?auth_key=app1-key&auth_timestamp=1&auth_version=1.0&auth_signature=00",
            401,
        ),
        ("/apps/nope/events", 404),
        ("/apps/app1/nothing", 404),
    ] {
        for response in [
            node.public_raw(
                "POST",
                path,
                &[("content-type", "application/json")],
                Some(body),
            )
            .await,
            node.internal_raw(
                "POST",
                path,
                &[("content-type", "application/json")],
                Some(body),
            )
            .await,
        ] {
            assert_eq!(response.status, status, "{path}: {}", response.text());
            assert!(!response.text().trim().is_empty(), "{path}: says why");
        }
    }
}

#[tokio::test]
async fn each_app_has_its_own_limits() {
    let dir = switchboard_testkit::TempDir::new("pusher-app-limits");
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        "[[pusher.apps]]\nid = \"small\"\nkey = \"small-key\"\nsecret = \"small-secret\"\nmax_connections = 1\nmax_presence_members = 1\n",
    )
    .unwrap();
    let node = Node::builder("pusher-app-limits")
        .args(APP)
        .args(["--config", config.to_str().unwrap()])
        .start()
        .await;
    let small = format!("ws://{}/app/small-key?protocol=7", node.public_addr());
    let mut first = WsClient::connect_plain(&small).await;
    let established = first.recv_json().await;
    assert_eq!(established["event"], "pusher:connection_established");
    // The small app is full; app1 is not affected.
    let mut second = WsClient::connect_plain(&small).await;
    let error = second.take_json(|v| v["event"] == "pusher:error").await;
    assert_eq!(error["data"]["code"], 4004, "{error}");
    assert_eq!(second.recv_close().await.0, 4004);
    let _app1 = Client::connect(&node).await;
    // Its place is given back when its connection ends.
    drop(first);
    switchboard_testkit::eventually(
        "the small app takes a connection again",
        std::time::Duration::from_secs(5),
        || {
            let small = small.clone();
            async move {
                let mut ws = WsClient::connect_plain(&small).await;
                let first = ws.recv_json().await;
                if first["event"] == "pusher:connection_established" {
                    Ok(())
                } else {
                    Err(format!("still refused: {first}"))
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_node_pings_in_pusher_s_own_frames() {
    let node = Node::builder("pusher-ping")
        .args(APP)
        .args(["--heartbeat", "1"])
        .start()
        .await;
    let mut client = Client::connect(&node).await;
    client.expect("pusher:ping").await;
    client
        .send(json!({"event": "pusher:pong", "data": {}}))
        .await;
    client.expect("pusher:ping").await;
}
