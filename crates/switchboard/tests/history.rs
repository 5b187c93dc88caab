//! History: offsets and epochs in replies, pushes and API answers; the
//! `history` command and `GET /api/v1/channels/{c}/history` with `limit` and `since`;
//! retention and expiry; on Redis and on the in-process backplane alike.
//!
//! Convention: message number `n` is published with data `{"n": n}`, and on a fresh
//! channel it gets offset `n`.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_proto::client::server_frame::Frame;
use switchboard_testkit::{Node, RedisServer, WsClient, eventually, offsets, unique_channel};

/// Asserts a `history` reply (command or API) for `channel` in `epoch` with newest
/// offset `newest`, holding exactly messages `want` (offsets, oldest first).
fn assert_history(
    reply: &Value,
    channel: &str,
    epoch: &str,
    newest: u64,
    want: &[u64],
    what: &str,
) {
    assert_eq!(reply["channel"], channel, "{what}: {reply}");
    assert_eq!(reply["epoch"], epoch, "{what}: {reply}");
    assert_eq!(reply["offset"], newest, "{what}: {reply}");
    let messages = reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no messages array: {reply}"));
    assert_eq!(offsets(messages), want, "{what}: offsets of {reply}");
    for m in messages {
        assert_eq!(m["channel"], channel, "{what}: {m}");
        assert_eq!(m["data"], json!({"n": m["offset"]}), "{what}: {m}");
        if let Some(e) = m.get("epoch") {
            assert_eq!(e, epoch, "{what}: {m}");
        }
    }
}

/// The exact push of message `n` on `channel` in `epoch`.
fn message(channel: &str, n: u64, epoch: &str) -> Value {
    json!({"type": "message", "channel": channel, "data": {"n": n}, "offset": n, "epoch": epoch})
}

/// The epoch of a `subscribed` reply, after checking its history fields. A
/// channel that has no history yet has the empty epoch (reads create nothing).
fn subscribed_epoch(reply: &Value, newest: u64) -> String {
    assert_eq!(reply["offset"], newest, "subscribed: {reply}");
    assert_eq!(
        reply["recovered"], false,
        "subscribed without recover: {reply}"
    );
    let epoch = reply["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("subscribed on a history channel without an epoch: {reply}"));
    assert_eq!(
        epoch.is_empty(),
        newest == 0,
        "the empty epoch exactly while there is no history: {reply}"
    );
    epoch.to_owned()
}

/// `GET /api/v1/channels/{channel}/history{query}`, asserting 200; the body.
async fn get_history(node: &Node, channel: &str, query: String) -> Value {
    let response = node.history_api(channel, &query).await;
    assert_eq!(
        response.status,
        200,
        "GET history of {channel}{query}: {}",
        response.text()
    );
    response.json()
}

/// Percent-encodes a query value.
fn q(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_in_replies_pushes_and_api_answers_across_nodes() {
    let redis = RedisServer::start().await;
    let a = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let b = Node::builder("node-b")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let ch = unique_channel("hist:offsets");

    // Subscribing to a fresh history channel: the empty epoch (no history
    // exists yet, and reading creates none), newest offset 0, nothing recovered.
    let mut sub_a = WsClient::connect_json(&a.ws_url()).await;
    let mut sub_b = WsClient::connect_json(&b.ws_url()).await;
    assert_eq!(subscribed_epoch(&sub_a.subscribe(&ch).await, 0), "");
    assert_eq!(subscribed_epoch(&sub_b.subscribe(&ch).await, 0), "");
    let mut proto_b = WsClient::connect_proto(&b.ws_url()).await;
    proto_b.proto_subscribe(&ch).await;

    // 1: a client publish on A answers its offset; the first publish makes the epoch.
    let mut publisher = WsClient::connect_json(&a.ws_url()).await;
    let reply = publisher.publish_ok(&ch, json!({"n": 1})).await;
    assert_eq!(reply["offset"], 1, "published: {reply}");
    let first = get_history(&a, &ch, String::new()).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty(), "{first}");
    // 2: an API publish on B answers offset and epoch.
    let answer = b.publish(&ch, json!({"n": 2})).await;
    assert_eq!(
        answer,
        json!({"offset": 2, "epoch": epoch}),
        "API publish answer"
    );
    // 3: a broadcast result carries the offset; a channel without history has none.
    let plain = unique_channel("plain");
    let body = json!({"channels": [ch, plain], "data": {"n": 3}});
    let response = a.api("POST", "/api/v1/broadcast", Some(&body)).await;
    assert_eq!(response.status, 200, "broadcast: {}", response.text());
    let results = response.json()["results"].clone();
    let result_of = |c: &str| {
        results
            .as_array()
            .and_then(|r| r.iter().find(|e| e["channel"] == c).cloned())
            .unwrap_or_else(|| panic!("no broadcast result for {c}: {results}"))
    };
    assert_eq!(result_of(&ch)["offset"], 3, "broadcast results: {results}");
    assert!(
        result_of(&plain).get("offset").is_none(),
        "no history, no offset: {results}"
    );

    // Every subscriber, on either node, sees 1, 2, 3 with offset and epoch.
    for sub in [&mut sub_a, &mut sub_b] {
        for n in 1..=3 {
            assert_eq!(
                sub.recv_json().await,
                message(&ch, n, &epoch),
                "{}",
                sub.describe()
            );
        }
    }
    for n in 1..=3u64 {
        let m = proto_b.recv_frame_message().await;
        assert_eq!(m.offset, Some(n), "proto message {m:?}");
        assert_eq!(
            m.epoch.as_deref(),
            Some(epoch.as_str()),
            "proto message {m:?}"
        );
    }
    // A proto publish answers its offset too.
    let reply = proto_b.proto_publish(&ch, br#"{"n":4}"#).await;
    match reply.frame {
        Some(Frame::Published(p)) => assert_eq!(p.offset, Some(4), "{p:?}"),
        other => panic!("proto publish: {other:?}"),
    }
    assert_eq!(sub_a.recv_json().await, message(&ch, 4, &epoch));

    // A channel without history: no offset, no epoch anywhere.
    let mut plain_sub = WsClient::connect_json(&b.ws_url()).await;
    let reply = plain_sub.subscribe(&plain).await;
    for key in ["epoch", "offset", "recovered"] {
        assert!(reply.get(key).is_none(), "no history, no {key}: {reply}");
    }
    let reply = publisher.publish_ok(&plain, json!("x")).await;
    assert!(
        reply.get("offset").is_none(),
        "no history, no offset: {reply}"
    );
    assert_eq!(
        a.publish(&plain, json!("y")).await,
        json!({}),
        "API publish without history"
    );
    for data in ["x", "y"] {
        assert_eq!(
            plain_sub.recv_json().await,
            json!({"type": "message", "channel": plain, "data": data})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_command_and_api_on_redis() {
    let redis = RedisServer::start().await;
    let a = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let b = Node::builder("node-b")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    history_story(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_command_and_api_on_the_in_process_backplane() {
    let node = Node::builder("node-memory").namespaces().start().await;
    history_story(&node, &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_newest_messages_on_redis() {
    let redis = RedisServer::start().await;
    let node = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    retention_story(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_newest_messages_on_the_in_process_backplane() {
    let node = Node::builder("node-memory").namespaces().start().await;
    retention_story(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_expires_after_its_ttl_on_redis() {
    let redis = RedisServer::start().await;
    let node = Node::builder("node-a")
        .redis(&redis)
        .config_toml(BRIEF_TOML)
        .start()
        .await;
    expiry_story(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_expires_after_its_ttl_on_the_in_process_backplane() {
    let node = Node::builder("node-memory")
        .config_toml(BRIEF_TOML)
        .start()
        .await;
    expiry_story(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_forbidden_where_the_namespace_keeps_none() {
    let node = Node::builder("node-a").namespaces().start().await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    // `pres` keeps presence but no history; `plain` is in no namespace.
    for ch in ["pres:room", "plain"] {
        let reply = client.history(ch, None, None).await;
        assert_eq!(reply["type"], "error", "history of {ch}: {reply}");
        assert_eq!(reply["code"], "forbidden", "history of {ch}: {reply}");
        let response = node.history_api(ch, "").await;
        assert_eq!(
            response.status,
            403,
            "GET history of {ch}: {}",
            response.text()
        );
        assert_eq!(response.error_code(), "forbidden");
        // Subscribing there is fine and carries no history fields.
        let reply = client.subscribe(ch).await;
        assert!(reply.get("epoch").is_none(), "{reply}");
    }
    // A bad channel name is a 400 on the API.
    for bad in ["bad!name", &"x".repeat(256)] {
        let response = node.history_api(bad, "").await;
        assert_eq!(
            response.status,
            400,
            "GET history of {bad:?}: {}",
            response.text()
        );
        assert_eq!(response.error_code(), "bad_request");
    }
    client.ping_pong().await;
}

/// A namespace whose history lives one second after the last publish.
const BRIEF_TOML: &str = r#"
[namespaces.brief]
history_size = 100
history_ttl = 1
"#;

/// Ten messages published on `publish_on`, read back from `query_on` through the
/// `history` command and the API, with every combination of `limit` and `since`.
async fn history_story(publish_on: &Node, query_on: &Node) {
    let ch = unique_channel("hist:story");
    let mut client = WsClient::connect_json(&query_on.ws_url()).await;

    // Before any publish: the empty epoch, offset 0, no messages.
    let reply = client.history(&ch, None, None).await;
    assert_eq!(
        reply["type"], "history",
        "history of a fresh channel: {reply}"
    );
    assert_history(&reply, &ch, "", 0, &[], "fresh channel");
    let response = query_on.history_api(&ch, "").await;
    assert_eq!(response.status, 200, "GET history: {}", response.text());
    assert_history(
        &response.json(),
        &ch,
        "",
        0,
        &[],
        "GET history of a fresh channel",
    );

    let mut epoch = String::new();
    for n in 1..=10 {
        let (offset, e) = publish_on.publish_offset(&ch, json!({"n": n})).await;
        if n == 1 {
            assert!(!e.is_empty(), "the first publish makes the epoch");
            epoch = e.clone();
        }
        assert_eq!((offset, e.as_str()), (n, epoch.as_str()), "publish {n}");
    }
    let all: Vec<u64> = (1..=10).collect();

    // The command: the id is echoed; without `since` the newest `limit`.
    let id = client.next_id();
    client
        .send_json(&json!({"type": "history", "id": id, "channel": ch}))
        .await;
    let reply = client.recv_json().await;
    assert_eq!(
        (&reply["type"], &reply["id"]),
        (&json!("history"), &json!(id)),
        "{reply}"
    );
    assert_history(&reply, &ch, &epoch, 10, &all, "history");
    let reply = client.history(&ch, Some(3), None).await;
    assert_history(&reply, &ch, &epoch, 10, &[8, 9, 10], "history limit 3");
    // With `since` in the same epoch: what came after it, the oldest `limit` of it.
    let reply = client.history(&ch, None, Some((&epoch, 4))).await;
    assert_history(&reply, &ch, &epoch, 10, &[5, 6, 7, 8, 9, 10], "since 4");
    let reply = client.history(&ch, Some(2), Some((&epoch, 4))).await;
    assert_history(&reply, &ch, &epoch, 10, &[5, 6], "since 4 limit 2");
    let reply = client.history(&ch, None, Some((&epoch, 10))).await;
    assert_history(&reply, &ch, &epoch, 10, &[], "since the newest");
    let reply = client.history(&ch, None, Some((&epoch, 0))).await;
    assert_history(&reply, &ch, &epoch, 10, &all, "since 0");
    // With `since` from another epoch: as without `since`.
    let reply = client.history(&ch, None, Some(("not-the-epoch", 4))).await;
    assert_history(&reply, &ch, &epoch, 10, &all, "since another epoch");
    let reply = client
        .history(&ch, Some(3), Some(("not-the-epoch", 4)))
        .await;
    assert_history(
        &reply,
        &ch,
        &epoch,
        10,
        &[8, 9, 10],
        "since another epoch, limit 3",
    );

    // The API, the same answers.
    let get = |query: String| get_history(query_on, &ch, query);
    assert_history(&get(String::new()).await, &ch, &epoch, 10, &all, "GET");
    assert_history(
        &get("?limit=3".into()).await,
        &ch,
        &epoch,
        10,
        &[8, 9, 10],
        "GET limit 3",
    );
    let since = format!("?since_epoch={}&since_offset=4", q(&epoch));
    assert_history(
        &get(since.clone()).await,
        &ch,
        &epoch,
        10,
        &[5, 6, 7, 8, 9, 10],
        "GET since 4",
    );
    assert_history(
        &get(format!("{since}&limit=2")).await,
        &ch,
        &epoch,
        10,
        &[5, 6],
        "GET since 4 limit 2",
    );
    assert_history(
        &get("?since_epoch=not-the-epoch&since_offset=4&limit=3".into()).await,
        &ch,
        &epoch,
        10,
        &[8, 9, 10],
        "GET since another epoch, limit 3",
    );

    // Reading history changes nothing: the next publish is 11 in the same epoch.
    let (offset, e) = publish_on.publish_offset(&ch, json!({"n": 11})).await;
    assert_eq!((offset, e.as_str()), (11, epoch.as_str()));
    client.ping_pong().await;
}

/// `small` keeps 5 messages: after 8 publishes, 4..=8.
async fn retention_story(node: &Node) {
    let ch = unique_channel("small:retained");
    let mut sub = WsClient::connect_json(&node.ws_url()).await;
    assert_eq!(subscribed_epoch(&sub.subscribe(&ch).await, 0), "");
    let (_, epoch) = node.publish_offset(&ch, json!({"n": 1})).await;
    for n in 2..=8 {
        node.publish(&ch, json!({"n": n})).await;
    }
    // Live subscribers get everything, whatever the history keeps.
    for n in 1..=8 {
        assert_eq!(sub.recv_json().await, message(&ch, n, &epoch));
    }
    let reply = sub.history(&ch, None, None).await;
    assert_history(&reply, &ch, &epoch, 8, &[4, 5, 6, 7, 8], "history of small");
    let reply = sub.history(&ch, Some(2), None).await;
    assert_history(&reply, &ch, &epoch, 8, &[7, 8], "history of small, limit 2");
    // `since` older than what is kept: what is kept after it.
    let reply = sub.history(&ch, None, Some((&epoch, 1))).await;
    assert_history(&reply, &ch, &epoch, 8, &[4, 5, 6, 7, 8], "since 1 of small");
    let response = node.history_api(&ch, "?limit=100").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_history(
        &response.json(),
        &ch,
        &epoch,
        8,
        &[4, 5, 6, 7, 8],
        "GET history of small",
    );
}

/// `brief` history lives a second after its last publish; then it is gone (it
/// reads as the empty epoch), recovery from the old epoch is refused, and the
/// next publish starts a new epoch.
async fn expiry_story(node: &Node) {
    let ch = unique_channel("brief:gone");
    let mut sub = WsClient::connect_json(&node.ws_url()).await;
    assert_eq!(subscribed_epoch(&sub.subscribe(&ch).await, 0), "");
    let (_, epoch) = node.publish_offset(&ch, json!({"n": 1})).await;
    for n in 2..=3 {
        node.publish(&ch, json!({"n": n})).await;
    }
    let seen = sub.recv_channel_messages(&ch, 3).await;
    assert_eq!(offsets(&seen), [1, 2, 3]);
    let reply = sub.history(&ch, None, None).await;
    assert_history(&reply, &ch, &epoch, 3, &[1, 2, 3], "history before expiry");

    let new_epoch = eventually(
        "the history of a brief channel to expire (history_ttl = 1)",
        Duration::from_secs(10),
        || async {
            let response = node.history_api(&ch, "").await;
            let body = response.json();
            match body["epoch"].as_str() {
                Some(e) if e != epoch => Ok((e.to_owned(), body)),
                _ => Err(body.to_string()),
            }
        },
    )
    .await;
    let (new_epoch, body) = new_epoch;
    assert_eq!(
        body["messages"],
        json!([]),
        "an expired history is empty: {body}"
    );

    assert_eq!(new_epoch, "", "an expired history reads as none: {body}");
    // Recovering from the lost epoch: refused, nothing replayed, no epoch named.
    let mut late = WsClient::connect_json(&node.ws_url()).await;
    let reply = late.subscribe_recover(&ch, &epoch, 3).await;
    assert_eq!(
        reply["recovered"], false,
        "recover from an expired epoch: {reply}"
    );
    assert_eq!(reply["epoch"], new_epoch.as_str(), "{reply}");
    late.ping_pong().await;
    // The next publish starts a new epoch, seen by both subscribers.
    let (offset, e) = node.publish_offset(&ch, json!({"n": "after"})).await;
    assert!(
        !e.is_empty() && e != epoch,
        "a publish after expiry starts a new epoch: {e:?} after {epoch:?}"
    );
    assert_eq!(offset, 1, "a new epoch starts at 1");
    for client in [&mut sub, &mut late] {
        let m = client.recv_json().await;
        assert_eq!(
            m,
            json!({"type": "message", "channel": ch, "data": {"n": "after"}, "offset": offset, "epoch": e}),
            "{}",
            client.describe()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_names_in_api_paths_may_be_percent_encoded() {
    let node = Node::builder("node-encoded").namespaces().start().await;
    let plain = node
        .internal_raw("GET", "/api/v1/channels/chat:x/history", &[], None)
        .await;
    let encoded = node
        .internal_raw("GET", "/api/v1/channels/chat%3Ax/history", &[], None)
        .await;
    assert_eq!(
        (plain.status, encoded.status),
        (200, 200),
        "{}",
        encoded.text()
    );
    let plain: serde_json::Value = serde_json::from_str(&plain.text()).expect("json");
    let encoded: serde_json::Value = serde_json::from_str(&encoded.text()).expect("json");
    assert_eq!(encoded["channel"], "chat:x");
    assert_eq!(encoded["epoch"], plain["epoch"], "the same channel");
    let bad = node
        .internal_raw("GET", "/api/v1/channels/chat%zz/history", &[], None)
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_publishes_reaches_every_subscriber_once_in_offset_order() {
    // Publishes arriving faster than a node fans them out pile up in its lanes and go
    // out in runs (several messages to a subscriber in one write): nothing may be lost,
    // repeated or reordered by that, on either node.
    const MESSAGES: u64 = 300;
    let redis = RedisServer::start().await;
    let a = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let b = Node::builder("node-b")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let ch = unique_channel("hist:burst");
    let mut subscribers = Vec::new();
    for node in [&a, &b] {
        for _ in 0..5 {
            let mut client = WsClient::connect_json(&node.ws_url()).await;
            client.subscribe(&ch).await;
            subscribers.push(client);
        }
    }

    // All at once, half through each node.
    let publishes = (1..=MESSAGES).map(|n| {
        let node = if n % 2 == 0 { &a } else { &b };
        node.publish(&ch, json!({"n": n}))
    });
    futures_util::future::join_all(publishes).await;

    for (i, client) in subscribers.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < MESSAGES as usize {
            let m = client.recv_json().await;
            assert_eq!(m["type"], "message", "subscriber {i}: {m}");
            got.push(m["offset"].as_u64().expect("offset"));
        }
        let want: Vec<u64> = (1..=MESSAGES).collect();
        assert_eq!(
            got, want,
            "subscriber {i}: offsets lost, repeated or reordered"
        );
    }
    for node in [&a, &b] {
        let received = node.metric("switchboard_backplane_received_total").await;
        let runs = node.metric("switchboard_fanout_runs_total").await;
        assert!(
            runs >= 1.0 && runs <= received,
            "runs {runs}, received {received}"
        );
    }
}

/// Subscribing to, and reading the history of, a history channel nobody has
/// published to writes nothing to Redis: a client cannot make the node create
/// keys by naming channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_channel_that_has_no_history_creates_no_key() {
    let redis = RedisServer::start().await;
    let node = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    for i in 0..20 {
        let ch = unique_channel(&format!("hist:never-{i}"));
        let reply = client.subscribe(&ch).await;
        assert_eq!(
            (&reply["epoch"], &reply["offset"]),
            (&json!(""), &json!(0)),
            "{reply}"
        );
        let reply = client.history(&ch, None, None).await;
        assert_eq!(reply["messages"], json!([]), "{reply}");
        assert_eq!(node.history_api(&ch, "").await.status, 200);
        let reply = client.subscribe_recover(&format!("{ch}-r"), "", 0).await;
        assert_eq!(reply["recovered"], true, "nothing to recover: {reply}");
    }
    let keys: Vec<String> = redis.query(::redis::cmd("KEYS").arg("*never*")).await;
    assert!(keys.is_empty(), "keys were created: {keys:?}");
}
