//! Limits: message rate, subscriptions per connection, connections per node,
//! new connections per IP, channel name length (and message size, counted). Each is
//! answered as the contract says, counted in `switchboard_limit_rejections_total`, and
//! in each case the node stays up and a bystander keeps working.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_testkit::ws::{JSON_PROTOCOL, Upgrade};
use switchboard_testkit::{Node, WsClient, eventually, run_switchboard, unique_channel};

const REJECTIONS: &str = "switchboard_limit_rejections_total";

/// A bystander subscribed to its own channel, and the way to check on it.
struct Bystander {
    client: WsClient,
    channel: String,
    seq: u64,
}

impl Bystander {
    async fn join(node: &Node) -> Bystander {
        let mut client = WsClient::connect_json(&node.ws_url()).await;
        let channel = unique_channel("bystander");
        client.subscribe(&channel).await;
        Bystander {
            client,
            channel,
            seq: 0,
        }
    }

    /// The node is ready and still delivers to the bystander, who still gets replies.
    async fn assert_fine(&mut self, node: &Node, after: &str) {
        self.seq += 1;
        node.publish(&self.channel, json!({"seq": self.seq})).await;
        assert_eq!(
            self.client.recv_json().await,
            json!({"type": "message", "channel": self.channel, "data": {"seq": self.seq}}),
            "bystander after {after}"
        );
        self.client.ping_pong().await;
    }
}

fn assert_error(reply: &Value, code: &str, what: &str) {
    assert_eq!(
        (&reply["type"], &reply["code"]),
        (&json!("error"), &json!(code)),
        "{what}: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_is_limited_then_abuse_is_disconnected_with_4029() {
    const BURST: u64 = 20;
    let node = Node::start(
        "node-rate",
        // One command a second once the burst is spent: slow enough that timing
        // cannot blur the count.
        &["--client-rate", "1", "--client-burst", &BURST.to_string()],
    )
    .await;
    let mut bystander = Bystander::join(&node).await;
    let ch = unique_channel("rated");
    let mut watcher = WsClient::connect_json(&node.ws_url()).await;
    watcher.subscribe(&ch).await;

    // 30 publishes at once: the burst goes through, the rest are refused and not
    // executed.
    let mut abuser = WsClient::connect_json(&node.ws_url()).await;
    for i in 1..=30u64 {
        abuser
            .send_json(&json!({"type": "publish", "id": i, "channel": ch, "data": i}))
            .await;
    }
    let mut published = Vec::new();
    let mut refused = 0;
    for i in 1..=30u64 {
        let reply = abuser.recv_json().await;
        assert_eq!(reply["id"], i, "replies in command order: {reply}");
        match reply["type"].as_str() {
            Some("published") => published.push(i),
            _ => {
                assert_error(&reply, "rate_limited", &format!("publish {i}"));
                refused += 1;
            }
        }
    }
    assert!(
        (BURST..=BURST + 2).contains(&(published.len() as u64)),
        "the burst of {BURST} (and hardly more) goes through: {published:?}"
    );
    assert!(refused >= 8, "{refused} refused");
    for i in &published {
        assert_eq!(
            watcher.recv_json().await["data"],
            *i,
            "only executed publishes"
        );
    }
    watcher.ping_pong().await;
    node.wait_metric_with(
        REJECTIONS,
        &[("limit", "message_rate")],
        ">= refused",
        |v| v >= f64::from(refused),
    )
    .await;
    bystander.assert_fine(&node, "rate_limited").await;

    // Keeping it up: rejected commands fill a second bucket; when it runs out the
    // connection is closed with 4029. (One command at a time, so nothing of ours is
    // left unread when the node closes.)
    let mut more_refused = 0;
    let mut disconnect = None;
    for i in 100..1100u64 {
        abuser.send_json(&json!({"type": "ping", "id": i})).await;
        let (reply, _) = abuser
            .recv_until(|v| v["id"] == i || v["type"] == "disconnect")
            .await;
        match reply["type"].as_str() {
            Some("disconnect") => {
                disconnect = Some(reply);
                break;
            }
            Some("pong") => {}
            _ => {
                assert_error(&reply, "rate_limited", &format!("ping {i}"));
                more_refused += 1;
            }
        }
    }
    let disconnect = disconnect.expect("no 4029 after 1000 commands far beyond the rate");
    assert!(more_refused >= 1, "more rate_limited before the disconnect");
    assert_eq!(disconnect["code"], 4029, "{disconnect}");
    assert_eq!(disconnect["reconnect"], true, "{disconnect}");
    let (close, _) = abuser.recv_close().await;
    assert_eq!(close, 4029);
    node.wait_metric_with(
        "switchboard_disconnects_total",
        &[("reason", "rate_limit")],
        "== 1",
        |v| v == 1.0,
    )
    .await;

    bystander.assert_fine(&node, "the 4029").await;
    watcher.ping_pong().await;
    let mut newcomer = WsClient::connect_json(&node.ws_url()).await;
    newcomer.publish_ok(&ch, json!("newcomer")).await;
    assert_eq!(watcher.recv_json().await["data"], "newcomer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_connection_are_limited() {
    let node = Node::start("node-subs", &["--max-subscriptions", "3"]).await;
    let mut bystander = Bystander::join(&node).await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    for ch in ["s1", "s2", "s3"] {
        client.subscribe(ch).await;
    }
    let reply = client
        .request(json!({"type": "subscribe", "channel": "s4"}))
        .await;
    assert_error(&reply, "limit_exceeded", "a fourth subscription");
    assert!(reply["id"].is_u64(), "the id is echoed: {reply}");
    // Not subscribed to s4: nothing arrives from it.
    node.publish("s4", json!("no")).await;
    client.ping_pong().await;
    node.wait_metric_with(REJECTIONS, &[("limit", "subscriptions")], ">= 1", |v| {
        v >= 1.0
    })
    .await;

    // Freeing one makes room; the limit is per connection.
    client.unsubscribe("s1").await;
    client.subscribe("s4").await;
    let mut other = WsClient::connect_json(&node.ws_url()).await;
    for ch in ["s1", "s2", "s3"] {
        other.subscribe(ch).await;
    }
    node.publish("s4", json!("yes")).await;
    assert_eq!(client.recv_json().await["data"], "yes");
    bystander.assert_fine(&node, "limit_exceeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_node_are_limited() {
    let node = Node::start("node-full", &["--max-connections", "3"]).await;
    let mut bystander = Bystander::join(&node).await;
    let second = WsClient::connect_json(&node.ws_url()).await;
    let _third = WsClient::connect_json(&node.ws_url()).await;

    // Full: upgrades are refused with 503 and /readyz says why.
    for _ in 0..3 {
        match WsClient::try_upgrade(&node.ws_url(), &[JSON_PROTOCOL], &[]).await {
            Upgrade::Refused(503, _) => {}
            other => panic!("upgrade at the connection limit: want 503, got {other:?}"),
        }
    }
    node.wait_readyz(503, Duration::from_secs(5)).await;
    let readyz = node.internal_raw("GET", "/readyz", &[], None).await;
    assert!(
        readyz.text().contains("at connection limit"),
        "/readyz reason: {:?}",
        readyz.text()
    );
    node.wait_metric_with(REJECTIONS, &[("limit", "connections")], ">= 3", |v| {
        v >= 3.0
    })
    .await;
    // Health and the API are not connections.
    let health = node.public_raw("GET", "/healthz", &[], None).await;
    assert_eq!(health.status, 200);
    bystander.assert_fine(&node, "refused upgrades").await;

    // One leaves: ready again, and a new connection gets in.
    drop(second);
    node.wait_readyz(200, Duration::from_secs(5)).await;
    let mut newcomer = WsClient::connect_json(&node.ws_url()).await;
    newcomer.ping_pong().await;
    // Full again.
    node.wait_readyz(503, Duration::from_secs(5)).await;
    match WsClient::try_upgrade(&node.ws_url(), &[JSON_PROTOCOL], &[]).await {
        Upgrade::Refused(503, _) => {}
        other => panic!("full again: want 503, got {other:?}"),
    }
    bystander.assert_fine(&node, "full again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_ip_are_rate_limited() {
    // 5 per second, burst 10.
    let node = Node::start("node-iprate", &["--ip-connect-rate", "5"]).await;
    let mut bystander = Bystander::join(&node).await;

    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..25 {
        match WsClient::try_upgrade(&node.ws_url(), &[JSON_PROTOCOL], &[]).await {
            Upgrade::Accepted(_) => accepted += 1,
            Upgrade::Refused(429, _) => refused += 1,
            other => panic!("a connection burst from one IP: want 101 or 429, got {other:?}"),
        }
    }
    assert!(
        (9..=14).contains(&accepted),
        "a burst of about 10 gets in ({accepted} did, {refused} refused)"
    );
    assert!(refused >= 10, "the rest are refused with 429 ({refused})");
    node.wait_metric_with(
        REJECTIONS,
        &[("limit", "ip_connect_rate")],
        ">= refused",
        |v| v >= f64::from(refused),
    )
    .await;
    bystander.assert_fine(&node, "429s").await;
    assert_eq!(node.readyz_status().await, Some(200));

    // The bucket refills.
    let url = node.ws_url();
    eventually(
        "a new connection from the same IP to be accepted again",
        Duration::from_secs(5),
        || async {
            match WsClient::try_upgrade(&url, &[JSON_PROTOCOL], &[]).await {
                Upgrade::Accepted(_) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    bystander.assert_fine(&node, "the refill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_names_longer_than_the_limit_are_bad_requests() {
    let node = Node::start("node-chanlen", &["--max-channel-length", "16"]).await;
    let mut bystander = Bystander::join(&node).await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    let longest = "a".repeat(16);
    let too_long = "b".repeat(17);

    client.subscribe(&longest).await;
    client.publish_ok(&longest, json!("fits")).await;
    assert_eq!(client.recv_message_push().await["data"], "fits");

    let reply = client
        .request(json!({"type": "subscribe", "channel": too_long}))
        .await;
    assert_error(&reply, "bad_request", "subscribe to 17 bytes");
    let reply = client.publish(&too_long, json!("no")).await;
    assert_error(&reply, "bad_request", "publish to 17 bytes");
    let response = node
        .api(
            "POST",
            "/api/v1/publish",
            Some(&json!({"channel": too_long, "data": 1})),
        )
        .await;
    assert_eq!(
        response.status,
        400,
        "API publish to 17 bytes: {}",
        response.text()
    );
    assert_eq!(response.error_code(), "bad_request");
    node.wait_metric_with(REJECTIONS, &[("limit", "channel_length")], ">= 2", |v| {
        v >= 2.0
    })
    .await;
    client.ping_pong().await;
    bystander.assert_fine(&node, "long channel names").await;

    // The setting itself is 1..=255.
    for bad in ["0", "256"] {
        let out = run_switchboard(&["--max-channel-length", bad], &[]).await;
        assert_eq!(
            out.status.code(),
            Some(64),
            "--max-channel-length {bad}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("max_channel_length") || out.stderr.contains("max-channel-length"),
            "the error names the setting: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_counted_as_a_limit() {
    let node = Node::start("node-size", &["--max-message-size", "1024"]).await;
    let mut bystander = Bystander::join(&node).await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    let big = json!({"type": "publish", "channel": "x", "data": "z".repeat(2000)});
    client.send_json(&big).await;
    client.expect_disconnect(1009).await;
    node.wait_metric_with(REJECTIONS, &[("limit", "message_size")], ">= 1", |v| {
        v >= 1.0
    })
    .await;
    bystander.assert_fine(&node, "an oversized message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_count_against_the_rate_too() {
    let node = Node::start(
        "node-rate-junk",
        &["--client-rate", "1", "--client-burst", "5"],
    )
    .await;
    let mut bystander = Bystander::join(&node).await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    for _ in 0..8 {
        client.send_text("this is not JSON").await;
    }
    let mut codes = Vec::new();
    for _ in 0..8 {
        let reply = client.recv_json().await;
        assert_eq!(reply["type"], "error", "{reply}");
        codes.push(reply["code"].as_str().unwrap_or_default().to_owned());
    }
    let bad = codes.iter().filter(|c| *c == "bad_request").count();
    assert!(
        (5..=6).contains(&bad) && codes[..bad].iter().all(|c| c == "bad_request"),
        "the burst of 5 is answered bad_request, the rest rate_limited: {codes:?}"
    );
    assert!(
        codes[bad..].iter().all(|c| c == "rate_limited"),
        "beyond the burst, malformed messages are rate_limited: {codes:?}"
    );
    node.wait_metric_with(REJECTIONS, &[("limit", "message_rate")], ">= 2", |v| {
        v >= 2.0
    })
    .await;
    bystander
        .assert_fine(&node, "malformed messages over the rate")
        .await;
}
