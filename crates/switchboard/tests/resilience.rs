//! What a node does when things go wrong around it: Redis dies and comes back, a
//! client stops reading, a client stops answering pings.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_testkit::raw_ws::{RawRead, opcode};
use switchboard_testkit::ws::JSON_PROTOCOL;
use switchboard_testkit::{Node, RawWs, RedisServer, WsClient, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_and_recovery() {
    let mut redis = RedisServer::start().await;
    let a = Node::start_on(&redis, "node-a", &[]).await;
    let b = Node::start_on(&redis, "node-b", &[]).await;
    let ch = "live";

    let mut sub_a = WsClient::connect_json(&a.ws_url()).await;
    let mut sub_b = WsClient::connect_json(&b.ws_url()).await;
    let mut publisher = WsClient::connect_json(&a.ws_url()).await;
    sub_a.subscribe(ch).await;
    sub_b.subscribe(ch).await;
    a.publish(ch, json!("before")).await;
    assert_eq!(sub_a.recv_json().await["data"], "before");
    assert_eq!(sub_b.recv_json().await["data"], "before");
    assert_eq!(a.metric("switchboard_backplane_up").await, 1.0);
    let reconnects_a = a.metric("switchboard_backplane_reconnects_total").await;
    let reconnects_b = b.metric("switchboard_backplane_reconnects_total").await;

    redis.kill();

    for node in [&a, &b] {
        node.wait_readyz(503, Duration::from_secs(10)).await;
        let r = node.internal_raw("GET", "/readyz", &[], None).await;
        assert!(
            r.text().contains("backplane"),
            "/readyz reason names the backplane: {:?}",
            r.text()
        );
        node.wait_metric("switchboard_backplane_up", "== 0", |v| v == 0.0)
            .await;
    }

    // A client publish is refused, and says so.
    let reply = publisher.publish(ch, json!("lost-client")).await;
    assert_eq!(reply["type"], "error", "publish with Redis down: {reply}");
    assert_eq!(
        reply["code"], "unavailable",
        "publish with Redis down: {reply}"
    );
    // An API publish is refused with 503.
    let body = json!({"channel": ch, "data": "lost-api"});
    let r = a.api("POST", "/api/v1/publish", Some(&body)).await;
    assert_eq!(r.status, 503, "API publish with Redis down: {}", r.text());
    assert_eq!(r.error_code(), "unavailable");
    // Clients stay connected and the node still answers them.
    sub_a.ping_pong().await;
    sub_b.ping_pong().await;
    publisher.ping_pong().await;

    redis.restart().await;

    for node in [&a, &b] {
        node.wait_readyz(200, Duration::from_secs(30)).await;
        node.wait_metric("switchboard_backplane_up", "== 1", |v| v == 1.0)
            .await;
    }
    // Both nodes resubscribed for their still-connected subscribers, and told
    // them that messages published meanwhile may have been missed (the channel
    // keeps no history to repair from).
    redis.wait_numsub(ch, 2).await;
    sub_a.expect_missed(&[ch], "backplane").await;
    sub_b.expect_missed(&[ch], "backplane").await;

    // Delivery resumes, local and cross-node; nothing refused during the outage shows up.
    a.publish(ch, json!("after-api-a")).await;
    assert_eq!(sub_a.recv_json().await["data"], "after-api-a");
    assert_eq!(sub_b.recv_json().await["data"], "after-api-a");
    publisher.publish_ok(ch, json!("after-client-a")).await;
    assert_eq!(sub_a.recv_json().await["data"], "after-client-a");
    assert_eq!(sub_b.recv_json().await["data"], "after-client-a");
    b.publish(ch, json!("after-api-b")).await;
    assert_eq!(sub_a.recv_json().await["data"], "after-api-b");
    assert_eq!(sub_b.recv_json().await["data"], "after-api-b");

    assert!(
        a.metric("switchboard_backplane_reconnects_total").await > reconnects_a,
        "node-a counted its backplane reconnect"
    );
    assert!(
        b.metric("switchboard_backplane_reconnects_total").await > reconnects_b,
        "node-b counted its backplane reconnect"
    );

    // New subscriptions after the outage work too.
    let mut late = WsClient::connect_json(&b.ws_url()).await;
    late.subscribe("late").await;
    a.publish("late", json!("hello late")).await;
    assert_eq!(late.recv_json().await["data"], "hello late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_and_the_rest_keep_flowing() {
    let node = Node::start("node-slow", &["--outbound-queue", "64"]).await;
    slow_consumer_story(&node, &node, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_on_redis_does_not_hold_up_the_backplane() {
    let redis = RedisServer::start().await;
    let node = Node::start_on(&redis, "node-slow", &["--outbound-queue", "64"]).await;
    let other = Node::start_on(&redis, "node-other", &[]).await;
    // The flood comes in over Redis, published on the other node.
    slow_consumer_story(&node, &other, Some(&other)).await;
}

/// A raw client on `node` stops reading while `publish_on` floods its channel with
/// 16 KiB messages; healthy subscribers on `node` (and on `also_on`) get everything.
async fn slow_consumer_story(node: &Node, publish_on: &Node, also_on: Option<&Node>) {
    const CH: &str = "flood";
    const MAX_MESSAGES: u64 = 4000;
    let baseline_kib = node.rss_kib();

    let mut slow =
        RawWs::connect_with_recv_buffer(node.public_addr(), Some(JSON_PROTOCOL), Some(4096)).await;
    slow.recv_type("welcome").await;
    slow.send_text(&json!({"type": "subscribe", "id": 1, "channel": CH}).to_string())
        .await;
    let reply = slow.recv_type("subscribed").await;
    assert_eq!(reply["id"], 1);
    // From here on the slow client reads nothing until the flood is over.

    let mut collectors = Vec::new();
    for healthy_node in std::iter::once(node).chain(also_on) {
        let mut healthy = WsClient::connect_json(&healthy_node.ws_url()).await;
        healthy.subscribe(CH).await;
        let where_ = healthy_node.id().to_owned();
        collectors.push(tokio::spawn(async move {
            let mut next = 0u64;
            loop {
                let m = healthy.recv_json().await;
                assert_eq!(
                    m["type"], "message",
                    "healthy subscriber on {where_} got {m}"
                );
                if m["data"] == "done" {
                    return next;
                }
                assert_eq!(
                    m["data"]["i"], next,
                    "healthy subscriber on {where_} missed or reordered"
                );
                next += 1;
            }
        }));
    }

    let pad = "x".repeat(16 * 1024);
    let mut published = 0u64;
    let mut max_kib = baseline_kib;
    let mut tripped_at = None;
    while published < MAX_MESSAGES {
        publish_on
            .publish(CH, json!({"i": published, "pad": pad}))
            .await;
        published += 1;
        if published.is_multiple_of(16) {
            max_kib = max_kib.max(node.rss_kib());
            if tripped_at.is_none()
                && node
                    .metric("switchboard_slow_consumer_disconnects_total")
                    .await
                    >= 1.0
            {
                tripped_at = Some(published);
            }
        }
        // Keep going a little after the cut, to show the healthy one is unaffected.
        if tripped_at.is_some_and(|t| published >= t + 64) {
            break;
        }
    }
    let tripped_at = tripped_at.unwrap_or_else(|| {
        panic!("no slow-consumer disconnect after {published} messages of 16 KiB with --outbound-queue 64")
    });
    publish_on.publish(CH, json!("done")).await;
    for collector in collectors {
        let received = tokio::time::timeout(Duration::from_secs(60), collector)
            .await
            .expect("healthy subscriber did not get everything within 60 s")
            .expect("healthy subscriber task");
        assert_eq!(
            received, published,
            "healthy subscriber received every message"
        );
    }
    assert_eq!(
        node.metric("switchboard_slow_consumer_disconnects_total")
            .await,
        1.0,
        "exactly one slow consumer"
    );
    assert_eq!(
        node.metric_with(
            "switchboard_disconnects_total",
            &[("reason", "slow_consumer")]
        )
        .await,
        1.0
    );
    let grown_mib = max_kib.saturating_sub(baseline_kib) / 1024;
    assert!(
        grown_mib < 200,
        "RSS grew by {grown_mib} MiB while flooding (baseline {baseline_kib} KiB, max {max_kib} KiB)"
    );

    // The slow client reads again: whatever was already in flight, then either
    // `disconnect` 4008 + close 4008, or the end of the connection.
    let mut messages = 0u64;
    let outcome = loop {
        match slow.read(Duration::from_secs(10)).await {
            RawRead::Frame(f) if f.opcode == opcode::TEXT => {
                let v = f.json();
                match v["type"].as_str() {
                    Some("message") => messages += 1,
                    Some("disconnect") => {
                        assert_eq!(v["code"], 4008, "slow consumer disconnect: {v}");
                        assert_eq!(v["reconnect"], true, "slow consumer may reconnect: {v}");
                        match slow.read(Duration::from_secs(10)).await {
                            RawRead::Frame(c) if c.opcode == opcode::CLOSE => {
                                assert_eq!(c.close_code(), 4008, "close code after {v}");
                            }
                            other => {
                                panic!("after the disconnect push want close 4008, got {other:?}")
                            }
                        }
                        break "disconnect 4008";
                    }
                    _ => panic!("slow client got unexpected {v}"),
                }
            }
            RawRead::Frame(f) if f.opcode == opcode::PING => {}
            RawRead::Frame(f) if f.opcode == opcode::CLOSE => {
                panic!("close {} without a disconnect push first", f.close_code())
            }
            RawRead::Frame(f) => panic!("slow client got opcode {}", f.opcode),
            RawRead::Eof | RawRead::Error(_) => break "connection closed",
        }
    };
    eprintln!(
        "slow consumer cut after {tripped_at} messages; it then read {messages} and saw {outcome}; RSS {baseline_kib} -> {max_kib} KiB"
    );
    assert!(
        messages < published,
        "the slow client ({outcome}) must not have received the whole flood ({messages} of {published}, cut at {tripped_at})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_closes_a_silent_client() {
    let node = Node::start("node-hb-silent", &["--heartbeat", "0.5"]).await;
    let mut raw = RawWs::connect(node.public_addr(), Some(JSON_PROTOCOL)).await;
    let started = Instant::now();
    let welcome = raw.recv_json().await;
    assert_eq!(welcome["type"], "welcome");

    // Read (never write, so never pong) until the server gives up on us.
    let mut pings = 0;
    let mut disconnect: Option<Value> = None;
    loop {
        match raw.read(Duration::from_secs(10)).await {
            RawRead::Frame(f) if f.opcode == opcode::PING => pings += 1,
            RawRead::Frame(f) if f.opcode == opcode::TEXT => {
                let v = f.json();
                assert_eq!(v["type"], "disconnect", "silent client got {v}");
                disconnect = Some(v);
            }
            RawRead::Frame(f) if f.opcode == opcode::CLOSE => {
                assert_eq!(f.close_code(), 1001, "heartbeat close code");
                break;
            }
            other => panic!("expected disconnect + close 1001, got {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let disconnect = disconnect.expect("a disconnect push before the close");
    assert_eq!(disconnect["code"], 1001);
    assert_eq!(disconnect["reason"], "heartbeat timeout");
    assert!(pings >= 1, "the server pinged before giving up");
    assert!(
        elapsed >= Duration::from_millis(800),
        "closed after {elapsed:?}, before two 0.5 s intervals had passed"
    );
    assert!(
        elapsed <= Duration::from_secs(4),
        "closed only after {elapsed:?} with --heartbeat 0.5"
    );
    node.wait_metric_with(
        "switchboard_disconnects_total",
        &[("reason", "heartbeat_timeout")],
        "== 1",
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_responsive_client() {
    let node = Node::start("node-hb-alive", &["--heartbeat", "0.5"]).await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    client.subscribe("hb").await;

    // Six intervals of reading; tungstenite answers each ping with a pong.
    let pings = client.idle_for(Duration::from_secs(3)).await;
    assert!(
        pings >= 4,
        "expected a ping every 0.5 s, saw {pings} in 3 s"
    );

    client.ping_pong().await;
    node.publish("hb", json!("still here")).await;
    assert_eq!(client.recv_json().await["data"], "still here");
    assert_eq!(
        node.metric_with(
            "switchboard_disconnects_total",
            &[("reason", "heartbeat_timeout")]
        )
        .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_client_frame_is_a_sign_of_life() {
    let node = Node::start("node-hb-chatty", &["--heartbeat", "0.5"]).await;
    let mut raw = RawWs::connect(node.public_addr(), Some(JSON_PROTOCOL)).await;
    raw.recv_type("welcome").await;

    // Never a pong, but a command every 0.25 s: that is life enough for 3 s (6 intervals).
    let started = Instant::now();
    let mut cadence = tokio::time::interval(Duration::from_millis(250));
    let mut id = 0;
    while started.elapsed() < Duration::from_secs(3) {
        cadence.tick().await;
        id += 1;
        raw.send_text(&json!({"type": "ping", "id": id}).to_string())
            .await;
        let reply = raw.recv_json().await;
        assert_eq!(
            reply,
            json!({"type": "pong", "id": id}),
            "still alive at {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        node.metric_with(
            "switchboard_disconnects_total",
            &[("reason", "heartbeat_timeout")]
        )
        .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_changes_during_an_outage_are_honoured_after_it() {
    let mut redis = RedisServer::start().await;
    let a = Node::start_on(&redis, "node-a", &[]).await;
    let b = Node::start_on(&redis, "node-b", &[]).await;

    let mut keeper = WsClient::connect_json(&a.ws_url()).await;
    keeper.subscribe("keep").await;
    let mut leaver = WsClient::connect_json(&a.ws_url()).await;
    leaver.subscribe("leave").await;
    let mut remote = WsClient::connect_json(&b.ws_url()).await;
    remote.subscribe("keep").await;
    remote.subscribe("leave").await;
    assert_eq!(redis.numsub("keep").await, 2);
    assert_eq!(redis.numsub("leave").await, 2);

    for outage in 1..=2 {
        redis.kill();
        a.wait_readyz(503, Duration::from_secs(10)).await;
        b.wait_readyz(503, Duration::from_secs(10)).await;

        // Unsubscribing is local and always answered.
        if outage == 1 {
            leaver.unsubscribe("leave").await;
        }
        // Subscribing may be refused as unavailable, or accepted and honoured later.
        let mut newcomer = WsClient::connect_json(&a.ws_url()).await;
        let id = newcomer.next_id();
        let ch = format!("new{outage}");
        newcomer
            .send_json(&json!({"type": "subscribe", "id": id, "channel": ch}))
            .await;
        let reply = newcomer.recv_json().await;
        let accepted = match reply["type"].as_str() {
            Some("subscribed") => true,
            Some("error") => {
                assert_eq!(
                    reply["code"], "unavailable",
                    "subscribe during outage: {reply}"
                );
                false
            }
            _ => panic!("subscribe during outage: {reply}"),
        };

        redis.restart().await;
        a.wait_readyz(200, Duration::from_secs(30)).await;
        b.wait_readyz(200, Duration::from_secs(30)).await;

        redis.wait_numsub("keep", 2).await;
        redis.wait_numsub(&ch, i64::from(accepted)).await;
        // Subscribers through the outage are told they may have missed messages.
        keeper.expect_missed(&["keep"], "backplane").await;
        remote.expect_missed(&["keep", "leave"], "backplane").await;
        assert_eq!(
            redis.numsub("leave").await,
            1,
            "node-a's only subscriber of `leave` left during outage 1: only node-b resubscribes"
        );

        b.publish("keep", json!(outage)).await;
        assert_eq!(keeper.recv_json().await["data"], outage);
        assert_eq!(remote.recv_json().await["data"], outage);
        b.publish("leave", json!(outage)).await;
        assert_eq!(remote.recv_json().await["data"], outage);
        leaver.ping_pong().await;
        if accepted {
            b.publish(&ch, json!("welcome back")).await;
            assert_eq!(newcomer.recv_json().await["data"], "welcome back");
        } else {
            // Refused, so it may subscribe again now.
            newcomer.subscribe(&ch).await;
            b.publish(&ch, json!("welcome back")).await;
            assert_eq!(newcomer.recv_json().await["data"], "welcome back");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_even_when_its_queue_never_fills() {
    // A low message rate never fills a 4,096-frame queue, but a socket that takes no byte
    // for 10 s means a client that is gone or stuck: the node ends it as a slow consumer
    // rather than hold its frames forever.
    let node = Node::start("node-stall", &["--outbound-queue", "4096"]).await;
    let mut stuck =
        RawWs::connect_with_recv_buffer(node.public_addr(), Some(JSON_PROTOCOL), Some(4096)).await;
    stuck.recv_type("welcome").await;
    stuck
        .send_text(&json!({"type": "subscribe", "id": 1, "channel": "stall"}).to_string())
        .await;
    stuck.recv_type("subscribed").await;
    let mut healthy = WsClient::connect_json(&node.ws_url()).await;
    healthy.subscribe("stall").await;

    // Enough to fill the kernel's buffers (the socket then takes nothing), far below the queue.
    let pad = "s".repeat(16 * 1024);
    let mut sent = 0u64;
    while node.metric("switchboard_frames_queued_total").await < 1.0 {
        assert!(sent < 2000, "the stuck client's socket never filled");
        for _ in 0..50 {
            node.publish("stall", json!({"i": sent, "pad": pad})).await;
            sent += 1;
        }
    }
    for i in 0..sent {
        let m = healthy.recv_json().await;
        assert_eq!(
            m["data"]["i"], i,
            "the healthy subscriber missed or reordered"
        );
    }
    // The stall limit is 10 s from the last byte the socket took; allow it 20.
    eventually(
        "the stuck client is cut off as a slow consumer",
        Duration::from_secs(20),
        || async {
            let v = node
                .metric_with(
                    "switchboard_disconnects_total",
                    &[("reason", "slow_consumer")],
                )
                .await;
            if v == 1.0 {
                Ok(())
            } else {
                Err(format!("{v}"))
            }
        },
    )
    .await;
    assert_eq!(
        node.metric("switchboard_slow_consumer_disconnects_total")
            .await,
        1.0
    );
    // The healthy one is still served.
    node.publish("stall", json!({"i": sent})).await;
    assert_eq!(healthy.recv_json().await["data"]["i"], sent);
}
