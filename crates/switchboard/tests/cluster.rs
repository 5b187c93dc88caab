//! Several nodes on one real Redis: cross-node delivery, one order per channel, the
//! node registry, and Redis subscriptions that follow local subscribers.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_testkit::http;
use switchboard_testkit::{Node, RedisServer, WsClient, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_both_ways() {
    let redis = RedisServer::start().await;
    let a = Node::start_on(&redis, "node-a", &[]).await;
    let b = Node::start_on(&redis, "node-b", &[]).await;
    let mut on_a = WsClient::connect_json(&a.ws_url()).await;
    let mut on_b = WsClient::connect_json(&b.ws_url()).await;
    assert_eq!(on_a.welcome["node"], "node-a");
    assert_eq!(on_b.welcome["node"], "node-b");

    // Once `subscribed` is answered the node is subscribed in Redis: a publish on the
    // other node right after it must arrive.
    on_a.subscribe("chat:lobby").await;
    on_b.subscribe("chat:lobby").await;

    // Client publish on A reaches B (and A).
    on_a.publish_ok("chat:lobby", json!({"from": "a"})).await;
    let want = json!({"type": "message", "channel": "chat:lobby", "data": {"from": "a"}});
    assert_eq!(on_b.recv_json().await, want);
    assert_eq!(on_a.recv_message_push().await, want);

    // Client publish on B reaches A (and B).
    on_b.publish_ok("chat:lobby", json!({"from": "b"})).await;
    let want = json!({"type": "message", "channel": "chat:lobby", "data": {"from": "b"}});
    assert_eq!(on_a.recv_json().await, want);
    assert_eq!(on_b.recv_message_push().await, want);

    // API publish on either node reaches both.
    a.publish("chat:lobby", json!("api-a")).await;
    b.publish("chat:lobby", json!("api-b")).await;
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.recv_json().await["data"], "api-a");
        assert_eq!(client.recv_json().await["data"], "api-b");
    }

    // A proto subscriber on B sees a JSON client's publish on A.
    let mut proto_b = WsClient::connect_proto(&b.ws_url()).await;
    proto_b.proto_subscribe("chat:lobby").await;
    on_a.publish_ok("chat:lobby", json!({"x": 1})).await;
    let m = proto_b.recv_frame_message().await;
    assert_eq!(
        serde_json::from_slice::<Value>(&m.data).expect("JSON bytes"),
        json!({"x": 1})
    );

    // Broadcast from A reaches subscribers on B.
    let mut room_b = WsClient::connect_json(&b.ws_url()).await;
    room_b.subscribe("room:9").await;
    let body = json!({"channels": ["room:8", "room:9"], "data": "bc"});
    let response = a.api("POST", "/api/v1/broadcast", Some(&body)).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        room_b.recv_json().await,
        json!({"type": "message", "channel": "room:9", "data": "bc"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_per_channel_across_nodes_and_publishers() {
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: usize = 750;
    const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;
    const CHANNEL: &str = "ticker";

    let redis = RedisServer::start().await;
    let nodes = [
        Node::start_on(&redis, "node-1", &[]).await,
        Node::start_on(&redis, "node-2", &[]).await,
        Node::start_on(&redis, "node-3", &[]).await,
    ];

    // Two JSON subscribers per node, plus one proto subscriber on node-2.
    let mut subscribers = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let mut client = WsClient::connect_json(&node.ws_url()).await;
            client.subscribe(CHANNEL).await;
            subscribers.push((node.id().to_owned(), false, client));
        }
    }
    let mut proto = WsClient::connect_proto(&nodes[1].ws_url()).await;
    proto.proto_subscribe(CHANNEL).await;
    subscribers.push((nodes[1].id().to_owned(), true, proto));
    assert_eq!(
        redis.numsub(CHANNEL).await,
        3,
        "one Redis subscription per node"
    );

    let collectors: Vec<_> = subscribers
        .into_iter()
        .map(|(node, is_proto, mut client)| {
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(TOTAL);
                while seen.len() < TOTAL {
                    let data: Value = if is_proto {
                        let m = client.recv_frame_message().await;
                        serde_json::from_slice(&m.data).expect("JSON bytes")
                    } else {
                        let m = client.recv_json().await;
                        assert_eq!(m["type"], "message", "on {node}: {m}");
                        assert_eq!(m["channel"], CHANNEL);
                        m["data"].clone()
                    };
                    let p = data["p"].as_u64().expect("p");
                    let i = data["i"].as_u64().expect("i");
                    seen.push((p, i));
                }
                (node, seen)
            })
        })
        .collect();

    // Publishers: each its own node (round robin), each sequential, all concurrent.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let addr = nodes[p % nodes.len()].internal_addr();
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    let body = json!({"channel": CHANNEL, "data": {"p": p, "i": i}});
                    let body = serde_json::to_vec(&body).expect("json");
                    let r = http::request(addr, "POST", "/api/v1/publish", &[], Some(&body)).await;
                    assert_eq!(r.status, 200, "publish p{p} i{i}: {}", r.text());
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher task");
    }

    let mut sequences = Vec::new();
    for collector in collectors {
        let (node, seen) = tokio::time::timeout(Duration::from_secs(60), collector)
            .await
            .expect("subscribers did not receive every message within 60 s")
            .expect("collector task");
        // Exactly once each.
        let distinct: HashSet<_> = seen.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            TOTAL,
            "duplicates seen by a subscriber on {node}"
        );
        // Each publisher's messages in its own order.
        let mut next: BTreeMap<u64, u64> = BTreeMap::new();
        for &(p, i) in &seen {
            let want = next.entry(p).or_insert(0);
            assert_eq!(i, *want, "on {node}: publisher {p} out of order");
            *want += 1;
        }
        sequences.push((node, seen));
    }
    let (first_node, first) = &sequences[0];
    for (node, seq) in &sequences[1..] {
        if let Some(pos) = first.iter().zip(seq.iter()).position(|(x, y)| x != y) {
            panic!(
                "subscribers on {first_node} and {node} saw different orders from index {pos}: {:?} vs {:?}",
                &first[pos..(pos + 5).min(TOTAL)],
                &seq[pos..(pos + 5).min(TOTAL)]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lists_every_node_and_drops_a_killed_one() {
    let redis = RedisServer::start().await;
    let args = ["--registry-interval", "0.2"];
    let a = Node::start_on(&redis, "node-a", &args).await;
    let b = Node::start_on(&redis, "node-b", &args).await;
    let mut c = Node::start_on(&redis, "node-c", &args).await;
    let all = ["node-a", "node-b", "node-c"];

    for node in [&a, &b, &c] {
        eventually(
            &format!("{} to list all three nodes", node.id()),
            Duration::from_secs(5),
            || async {
                let ids = node.cluster_ids().await;
                if ids == all {
                    Ok(())
                } else {
                    Err(format!("{ids:?}"))
                }
            },
        )
        .await;
    }

    // Connections and subscriptions of each node show up in the registry.
    let mut client = WsClient::connect_json(&b.ws_url()).await;
    client.subscribe("counted").await;
    eventually(
        "node-b's entry to count 1 connection and 1 subscription",
        Duration::from_secs(5),
        || async {
            let body = a.api("GET", "/api/v1/cluster", None).await.json();
            let entry = body["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|e| e["id"] == "node-b").cloned())
                .unwrap_or(Value::Null);
            if entry["connections"] == 1 && entry["subscriptions"] == 1 {
                Ok(())
            } else {
                Err(entry.to_string())
            }
        },
    )
    .await;

    // The registry heartbeat moves last_seen forward.
    let last_seen_of_c = || async {
        let body = a.api("GET", "/api/v1/cluster", None).await.json();
        body["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|e| e["id"] == "node-c").cloned())
            .and_then(|e| e["last_seen"].as_u64())
            .expect("node-c's last_seen")
    };
    let first = last_seen_of_c().await;
    eventually(
        "node-c's last_seen to advance",
        Duration::from_secs(5),
        || async {
            let now = last_seen_of_c().await;
            if now > first {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        },
    )
    .await;

    c.kill().await;
    for node in [&a, &b] {
        eventually(
            &format!("{} to drop the killed node-c", node.id()),
            Duration::from_secs(5),
            || async {
                let ids = node.cluster_ids().await;
                if ids == ["node-a", "node-b"] {
                    Ok(())
                } else {
                    Err(format!("{ids:?}"))
                }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscription_follows_local_subscribers() {
    let redis = RedisServer::start().await;
    let a = Node::start_on(&redis, "node-a", &[]).await;
    let b = Node::start_on(&redis, "node-b", &[]).await;
    let ch = "follow";

    assert_eq!(redis.numsub(ch).await, 0);
    let mut a1 = WsClient::connect_json(&a.ws_url()).await;
    let mut a2 = WsClient::connect_json(&a.ws_url()).await;
    let mut b1 = WsClient::connect_json(&b.ws_url()).await;

    a1.subscribe(ch).await;
    assert_eq!(
        redis.numsub(ch).await,
        1,
        "subscribed in Redis once subscribed"
    );
    a2.subscribe(ch).await;
    assert_eq!(redis.numsub(ch).await, 1, "one Redis subscription per node");
    b1.subscribe(ch).await;
    assert_eq!(redis.numsub(ch).await, 2, "one Redis subscription per node");
    // Never "everything": no pattern subscriptions.
    let patterns: i64 = redis.query(::redis::cmd("PUBSUB").arg("NUMPAT")).await;
    assert_eq!(patterns, 0, "nodes must not PSUBSCRIBE");

    // a1 leaves: a2 still holds node-a's subscription, and still receives.
    a1.unsubscribe(ch).await;
    assert_eq!(redis.numsub(ch).await, 2);
    b.publish(ch, json!(1)).await;
    assert_eq!(a2.recv_json().await["data"], 1);
    assert_eq!(b1.recv_json().await["data"], 1);
    a1.ping_pong().await;

    // a2, the last subscriber on node-a, just disconnects: node-a unsubscribes.
    a2.close(1000).await;
    drop(a2);
    redis.wait_numsub(ch, 1).await;

    // Cross-node delivery to node-a's remaining non-subscriber stops; b1 still receives.
    b.publish(ch, json!(2)).await;
    assert_eq!(b1.recv_json().await["data"], 2);
    a1.ping_pong().await;

    // An abrupt disconnect (no close frame) also counts.
    let mut a3 = WsClient::connect_json(&a.ws_url()).await;
    a3.subscribe(ch).await;
    assert_eq!(redis.numsub(ch).await, 2);
    drop(a3);
    redis.wait_numsub(ch, 1).await;

    // The last subscriber anywhere unsubscribes: nobody is subscribed in Redis.
    b1.unsubscribe(ch).await;
    redis.wait_numsub(ch, 0).await;
    let left = redis.pubsub_channels("switchboard:ch:*").await;
    assert!(
        left.is_empty(),
        "no client-channel subscriptions left: {left:?}"
    );

    // Publishing with no subscriber anywhere still succeeds.
    a.publish(ch, json!(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_churn_keeps_redis_in_step() {
    const CLIENTS: usize = 8;
    const CYCLES: usize = 25;
    let redis = RedisServer::start().await;
    let a = Node::start_on(&redis, "node-a", &[]).await;
    let b = Node::start_on(&redis, "node-b", &[]).await;
    let ch = "churn";

    // Round 1: everyone churns and ends unsubscribed.
    // Round 2: everyone churns, and the even ones end subscribed.
    for round in 1..=2 {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|n| {
                let url = a.ws_url();
                tokio::spawn(async move {
                    let mut client = WsClient::connect_json(&url).await;
                    for _ in 0..CYCLES {
                        client.subscribe(ch).await;
                        client.unsubscribe(ch).await;
                    }
                    let stays = round == 2 && n % 2 == 0;
                    if stays {
                        client.subscribe(ch).await;
                    }
                    (stays, client)
                })
            })
            .collect();
        let mut clients = Vec::new();
        for task in tasks {
            clients.push(task.await.expect("churn task"));
        }
        if round == 1 {
            redis.wait_numsub(ch, 0).await;
            continue;
        }
        b.publish(ch, json!("after churn")).await;
        for (stays, client) in &mut clients {
            if *stays {
                assert_eq!(
                    client.recv_json().await["data"],
                    "after churn",
                    "a subscriber that stayed must receive a cross-node publish"
                );
            } else {
                client.ping_pong().await;
            }
        }
        assert_eq!(
            redis.numsub(ch).await,
            1,
            "node-a has local subscribers, so one Redis subscription"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_releases_every_channel() {
    let redis = RedisServer::start().await;
    let a = Node::start_on(&redis, "node-a", &[]).await;
    let mut client = WsClient::connect_json(&a.ws_url()).await;
    let mut want = Vec::new();
    for i in 0..50 {
        let ch = format!("multi:{i}");
        client.subscribe(&ch).await;
        want.push(format!("switchboard:ch:{{{ch}}}"));
    }
    want.sort();
    assert_eq!(redis.pubsub_channels("switchboard:ch:*").await, want);
    a.wait_metric("switchboard_channels", "== 50", |v| v == 50.0)
        .await;

    drop(client);
    eventually(
        "every client channel released in Redis",
        Duration::from_secs(10),
        || async {
            let left = redis.pubsub_channels("switchboard:ch:*").await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{} left", left.len()))
            }
        },
    )
    .await;
    a.wait_metric("switchboard_channels", "== 0", |v| v == 0.0)
        .await;
    a.wait_metric("switchboard_subscriptions", "== 0", |v| v == 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_client_publishes_keep_their_order_across_nodes() {
    const N: u64 = 500;
    let redis = RedisServer::start().await;
    // 500 publishes at once: above the default command burst (200), which
    // this test is not about.
    let a = Node::start_on(&redis, "node-a", &["--client-burst", "1000"]).await;
    let b = Node::start_on(&redis, "node-b", &[]).await;
    let mut sub_a = WsClient::connect_json(&a.ws_url()).await;
    let mut sub_b = WsClient::connect_json(&b.ws_url()).await;
    sub_a.subscribe("pipe").await;
    sub_b.subscribe("pipe").await;

    // Send every publish before reading any reply.
    let mut publisher = WsClient::connect_json(&a.ws_url()).await;
    for i in 0..N {
        publisher
            .send_json(&json!({"type": "publish", "id": i + 1, "channel": "pipe", "data": i}))
            .await;
    }
    let mut replied = HashSet::new();
    for _ in 0..N {
        let reply = publisher.recv_json().await;
        assert_eq!(reply["type"], "published", "{reply}");
        assert!(
            replied.insert(reply["id"].as_u64().expect("id")),
            "duplicate reply {reply}"
        );
    }
    for (node, sub) in [("node-a", &mut sub_a), ("node-b", &mut sub_b)] {
        for i in 0..N {
            let m = sub.recv_json().await;
            assert_eq!(
                m["data"], i,
                "on {node}: one connection's publishes in its order"
            );
        }
    }
}
