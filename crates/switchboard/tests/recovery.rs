//! Recovery: a client that comes back with `recover: {epoch, offset}` gets
//! exactly what it missed, then the live stream, with no gap and no duplicate at the
//! seam; when that cannot be done it is told so (`recovered: false`), never silently
//! given a gap. Reconnects to the same node, to another one, after its node was
//! SIGKILLed, and across Redis restarts with and without data.
//!
//! Convention: message number `n` is published with data `{"n": n}`, and on a fresh
//! channel it gets offset `n`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_testkit::{Node, RedisServer, WsClient, eventually, unique_channel};

/// The exact push of message `n` on `channel` in `epoch`.
fn message(channel: &str, n: u64, epoch: &str) -> Value {
    json!({"type": "message", "channel": channel, "data": {"n": n}, "offset": n, "epoch": epoch})
}

/// Subscribes without `recover` and returns the channel's epoch, checking the reply.
async fn subscribe_fresh(client: &mut WsClient, channel: &str, newest: u64) -> String {
    let reply = client.subscribe(channel).await;
    assert_eq!(reply["offset"], newest, "subscribed: {reply}");
    assert_eq!(
        reply["recovered"], false,
        "subscribed without recover: {reply}"
    );
    let epoch = reply["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("subscribed on a history channel without an epoch: {reply}"))
        .to_owned();
    assert_eq!(
        epoch.is_empty(),
        newest == 0,
        "the empty epoch exactly while there is no history: {reply}"
    );
    epoch
}

/// The epoch of a channel that had no history when the test subscribed (reads
/// create none): learnt from the first message or publish answer that names
/// it, and the same from then on.
#[derive(Clone, Default)]
struct Learnt(Arc<std::sync::Mutex<String>>);

impl Learnt {
    fn check(&self, epoch: &str) {
        assert!(!epoch.is_empty(), "a message or publish without an epoch");
        let mut known = self.0.lock().unwrap();
        if known.is_empty() {
            *known = epoch.to_owned();
        } else {
            assert_eq!(*known, epoch, "one epoch throughout");
        }
    }

    fn get(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// The epoch a channel's history has now, by the server API.
async fn epoch_now(node: &Node, channel: &str) -> String {
    let body = node.history_api(channel, "?limit=1").await.json();
    body["epoch"].as_str().unwrap_or_default().to_owned()
}

/// Asserts the next frames are exactly messages `from..=to` of `channel` in `epoch`.
async fn expect_messages(client: &mut WsClient, channel: &str, from: u64, to: u64, epoch: &str) {
    for n in from..=to {
        let m = client.recv_json().await;
        assert_eq!(
            m,
            message(channel, n, epoch),
            "{}: expected message {n} of {from}..={to}",
            client.describe()
        );
    }
}

/// Subscribes with `recover` and asserts `recovered: true` with the given newest offset.
async fn recover_ok(client: &mut WsClient, channel: &str, epoch: &str, from: u64, newest: u64) {
    let reply = client.subscribe_recover(channel, epoch, from).await;
    assert_eq!(
        (&reply["recovered"], &reply["epoch"], &reply["offset"]),
        (&json!(true), &json!(epoch), &json!(newest)),
        "{}: recover from {epoch}/{from}: {reply}",
        client.describe()
    );
}

/// A client sees 1..=3, goes away, misses 4..=6, comes back on `second` with
/// `recover` and gets 4..=6 then the live 7, and nothing else.
async fn reconnect_story(first: &Node, second: &Node, publisher: &Node) {
    let ch = unique_channel("hist:back");
    let mut client = WsClient::connect_json(&first.ws_url()).await;
    subscribe_fresh(&mut client, &ch, 0).await;
    for n in 1..=3 {
        publisher.publish(&ch, json!({"n": n})).await;
    }
    let epoch = epoch_now(publisher, &ch).await;
    expect_messages(&mut client, &ch, 1, 3, &epoch).await;
    drop(client);

    for n in 4..=6 {
        publisher.publish(&ch, json!({"n": n})).await;
    }
    let mut client = WsClient::connect_json(&second.ws_url()).await;
    recover_ok(&mut client, &ch, &epoch, 3, 6).await;
    expect_messages(&mut client, &ch, 4, 6, &epoch).await;
    publisher.publish(&ch, json!({"n": 7})).await;
    expect_messages(&mut client, &ch, 7, 7, &epoch).await;
    client.ping_pong().await;

    // Once more, closing politely this time, and nothing missed: recovered, nothing
    // replayed, live again.
    client.close(1000).await;
    drop(client);
    let mut client = WsClient::connect_json(&first.ws_url()).await;
    recover_ok(&mut client, &ch, &epoch, 7, 7).await;
    client.ping_pong().await;
    publisher.publish(&ch, json!({"n": 8})).await;
    expect_messages(&mut client, &ch, 8, 8, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_reconnecting_to_the_same_node() {
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
    reconnect_story(&a, &a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_reconnecting_to_another_node() {
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
    reconnect_story(&a, &b, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_on_the_in_process_backplane() {
    let node = Node::builder("node-memory").namespaces().start().await;
    reconnect_story(&node, &node, &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_refused_when_it_cannot_be_complete() {
    let redis = RedisServer::start().await;
    let node = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    // `small` keeps 5 messages: after 8 publishes it holds 4..=8.
    let ch = unique_channel("small:refused");
    let mut first = WsClient::connect_json(&node.ws_url()).await;
    subscribe_fresh(&mut first, &ch, 0).await;
    for n in 1..=8 {
        node.publish(&ch, json!({"n": n})).await;
    }
    let epoch = epoch_now(&node, &ch).await;
    expect_messages(&mut first, &ch, 1, 8, &epoch).await;

    // The oldest position still recoverable: the one just before the oldest kept.
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    recover_ok(&mut client, &ch, &epoch, 3, 8).await;
    expect_messages(&mut client, &ch, 4, 8, &epoch).await;
    client.ping_pong().await;

    // Already up to date: recovered, nothing replayed.
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    recover_ok(&mut client, &ch, &epoch, 8, 8).await;
    client.ping_pong().await;

    // Refusals: fell out of the history, another epoch, a position from the future,
    // and no `recover` at all. Each says `recovered: false`, names the real epoch
    // and newest offset, and replays nothing.
    let cases: [(&str, Option<(&str, u64)>); 4] = [
        ("fell out of the history", Some((&epoch, 2))),
        ("another epoch", Some(("not-the-epoch", 5))),
        ("an offset beyond the newest", Some((&epoch, 9))),
        ("no recover", None),
    ];
    let mut refused = Vec::new();
    for (what, recover) in cases {
        let mut client = WsClient::connect_json(&node.ws_url()).await;
        let reply = match recover {
            Some((e, m)) => client.subscribe_recover(&ch, e, m).await,
            None => client.subscribe(&ch).await,
        };
        assert_eq!(
            (&reply["recovered"], &reply["epoch"], &reply["offset"]),
            (&json!(false), &json!(epoch), &json!(8)),
            "{what}: {reply}"
        );
        client.ping_pong().await;
        refused.push(client);
    }
    // Each of them is live from 9 on.
    node.publish(&ch, json!({"n": 9})).await;
    for client in refused.iter_mut().chain([&mut first]) {
        expect_messages(client, &ch, 9, 9, &epoch).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_on_another_node_after_the_first_is_killed() {
    let redis = RedisServer::start().await;
    let n1 = Node::builder("node-1")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let n2 = Node::builder("node-2")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let n3 = Node::builder("node-3")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let mut n1 = n1;
    let ch = unique_channel("hist:killed");

    let mut client = WsClient::connect_json(&n1.ws_url()).await;
    let mut witness = WsClient::connect_json(&n3.ws_url()).await;
    subscribe_fresh(&mut client, &ch, 0).await;
    subscribe_fresh(&mut witness, &ch, 0).await;
    for n in 1..=3 {
        n2.publish(&ch, json!({"n": n})).await;
    }
    let epoch = epoch_now(&n2, &ch).await;
    expect_messages(&mut client, &ch, 1, 3, &epoch).await;

    // Its node dies without a word; the client's connection is simply gone.
    n1.kill().await;
    drop(client);
    for n in 4..=6 {
        n2.publish(&ch, json!({"n": n})).await;
    }

    // It comes back on node-3 and misses nothing.
    let mut client = WsClient::connect_json(&n3.ws_url()).await;
    assert_eq!(client.welcome["node"], "node-3");
    recover_ok(&mut client, &ch, &epoch, 3, 6).await;
    expect_messages(&mut client, &ch, 4, 6, &epoch).await;
    n2.publish(&ch, json!({"n": 7})).await;
    expect_messages(&mut client, &ch, 7, 7, &epoch).await;
    // The witness on node-3 saw one unbroken stream.
    expect_messages(&mut witness, &ch, 1, 7, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_data_is_reported_as_a_new_epoch() {
    let mut redis = RedisServer::start().await;
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
    let ch = unique_channel("hist:amnesia");

    // A watcher on node-b stays connected through the restart.
    let mut watcher = WsClient::connect_json(&b.ws_url()).await;
    subscribe_fresh(&mut watcher, &ch, 0).await;
    let mut client = WsClient::connect_json(&a.ws_url()).await;
    subscribe_fresh(&mut client, &ch, 0).await;
    for n in 1..=3 {
        a.publish(&ch, json!({"n": n})).await;
    }
    let epoch = epoch_now(&a, &ch).await;
    expect_messages(&mut client, &ch, 1, 3, &epoch).await;
    expect_messages(&mut watcher, &ch, 1, 3, &epoch).await;
    drop(client);

    redis.restart().await;
    assert_eq!(redis.dbsize().await, 0, "the restarted Redis is empty");
    for node in [&a, &b] {
        node.wait_readyz(200, Duration::from_secs(30)).await;
    }
    redis.wait_numsub(&ch, 1).await;
    // The watcher's node found the history it delivered from gone, and says so.
    assert_eq!(
        watcher.recv_json().await,
        json!({"type": "missed", "channel": ch, "reason": "history"}),
        "watcher after Redis lost everything"
    );

    // Recovering from the lost epoch: refused, nothing replayed.
    let mut client = WsClient::connect_json(&a.ws_url()).await;
    let reply = client.subscribe_recover(&ch, &epoch, 3).await;
    assert_eq!(
        reply["recovered"], false,
        "recover after Redis lost everything: {reply}"
    );
    assert_eq!(reply["epoch"], "", "no history after the loss: {reply}");
    client.ping_pong().await;
    // The history says so too.
    let response = b.history_api(&ch, "").await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["epoch"], "", "{body}");
    assert_eq!(body["messages"], json!([]), "{body}");

    // The next publish starts a new epoch: the watcher, which never
    // disconnected, sees the epoch change instead of a silent jump.
    let (offset, e) = a.publish_offset(&ch, json!({"n": "after"})).await;
    assert!(!e.is_empty() && e != epoch, "a new epoch: {e:?}");
    assert_eq!(offset, 1);
    let want = json!({"type": "message", "channel": ch, "data": {"n": "after"}, "offset": offset, "epoch": e});
    assert_eq!(watcher.recv_json().await, want, "watcher");
    assert_eq!(client.recv_json().await, want, "recovered-false client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_data_keeps_epochs_and_offsets() {
    let mut redis = RedisServer::start_persistent().await;
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
    let ch = unique_channel("hist:durable");

    let mut watcher = WsClient::connect_json(&b.ws_url()).await;
    subscribe_fresh(&mut watcher, &ch, 0).await;
    let mut client = WsClient::connect_json(&a.ws_url()).await;
    subscribe_fresh(&mut client, &ch, 0).await;
    for n in 1..=3 {
        a.publish(&ch, json!({"n": n})).await;
    }
    let epoch = epoch_now(&a, &ch).await;
    expect_messages(&mut client, &ch, 1, 3, &epoch).await;
    drop(client);
    for n in 4..=5 {
        b.publish(&ch, json!({"n": n})).await;
    }
    expect_messages(&mut watcher, &ch, 1, 5, &epoch).await;

    // SIGKILL and restart: the append-only file brings everything back.
    redis.restart().await;
    assert!(
        redis.dbsize().await > 0,
        "the restarted Redis reloaded its data"
    );
    for node in [&a, &b] {
        node.wait_readyz(200, Duration::from_secs(30)).await;
    }
    redis.wait_numsub(&ch, 1).await;

    let mut client = WsClient::connect_json(&b.ws_url()).await;
    recover_ok(&mut client, &ch, &epoch, 3, 5).await;
    expect_messages(&mut client, &ch, 4, 5, &epoch).await;
    let (offset, e) = a.publish_offset(&ch, json!({"n": 6})).await;
    assert_eq!(
        (offset, e.as_str()),
        (6, epoch.as_str()),
        "offsets go on in the same epoch"
    );
    expect_messages(&mut client, &ch, 6, 6, &epoch).await;
    expect_messages(&mut watcher, &ch, 6, 6, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_and_no_duplicate_at_the_seam_under_a_steady_stream() {
    const SESSIONS: usize = 7;
    const PER_SESSION: usize = 25;
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
    let ch = unique_channel("hist:seam");

    let mut client = WsClient::connect_json(&a.ws_url()).await;
    subscribe_fresh(&mut client, &ch, 0).await;
    let epoch = Learnt::default();

    // A publisher publishes through node-b's API, one after another, until told to
    // stop; message i (from 0) must get offset i + 1.
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, last, ch, epoch) = (stop.clone(), last.clone(), ch.clone(), epoch.clone());
        let addr = b.internal_addr();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = serde_json::to_vec(&json!({"channel": ch, "data": {"i": i}})).unwrap();
                let r = switchboard_testkit::http::request(
                    addr,
                    "POST",
                    "/api/v1/publish",
                    &[],
                    Some(&body),
                )
                .await;
                assert_eq!(r.status, 200, "publish {i}: {}", r.text());
                let answer = r.json();
                assert_eq!(answer["offset"], i + 1, "publish {i}: {answer}");
                epoch.check(answer["epoch"].as_str().unwrap_or_default());
                i += 1;
                last.store(i, Ordering::Relaxed);
            }
            i
        })
    };

    let mut seen: Vec<u64> = Vec::new();
    let check = |m: &Value, seen: &mut Vec<u64>| {
        assert_eq!(m["channel"], ch.as_str(), "{m}");
        epoch.check(m["epoch"].as_str().unwrap_or_default());
        let offset = m["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset: {m}"));
        assert_eq!(
            m["data"],
            json!({"i": offset - 1}),
            "payload of offset {offset}"
        );
        seen.push(offset);
    };
    for session in 0..SESSIONS {
        // Read part of the stream (the rest is in flight when the client goes away).
        for m in client.recv_channel_messages(&ch, PER_SESSION).await {
            check(&m, &mut seen);
        }
        let position = *seen.last().expect("read something");
        if session % 2 == 0 {
            drop(client);
        } else {
            client.close(1000).await;
            drop(client);
        }
        // While it is away the stream goes on: it misses a few.
        eventually(
            "the publisher to publish past the client's position",
            Duration::from_secs(10),
            || async {
                let now = last.load(Ordering::Relaxed);
                if now >= position + 3 {
                    Ok(())
                } else {
                    Err(format!("{now}"))
                }
            },
        )
        .await;
        let node = if session % 2 == 0 { &b } else { &a };
        client = WsClient::connect_json(&node.ws_url()).await;
        let reply = client.subscribe_recover(&ch, &epoch.get(), position).await;
        assert_eq!(
            reply["recovered"], true,
            "session {session}: recover from {position}: {reply}"
        );
        assert_eq!(reply["epoch"], epoch.get(), "{reply}");
        assert!(
            reply["offset"].as_u64().is_some_and(|n| n >= position),
            "session {session}: newest offset before our position: {reply}"
        );
    }
    for m in client.recv_channel_messages(&ch, PER_SESSION).await {
        check(&m, &mut seen);
    }
    stop.store(true, Ordering::Relaxed);
    let total = tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .expect("publisher stops")
        .expect("publisher task");
    assert_eq!(total, last.load(Ordering::Relaxed));
    while seen.last().copied().unwrap_or(0) < total {
        let m = client.take_json(|v| v["type"] == "message").await;
        check(&m, &mut seen);
    }
    client.ping_pong().await;

    let want: Vec<u64> = (1..=total).collect();
    if seen != want {
        let first_bad = seen
            .iter()
            .zip(&want)
            .position(|(s, w)| s != w)
            .unwrap_or(want.len().min(seen.len()));
        panic!(
            "the client's offsets over {} sessions are not exactly 1..={total}: from index {first_bad} it saw {:?}",
            SESSIONS + 1,
            &seen[first_bad.saturating_sub(3)..(first_bad + 5).min(seen.len())]
        );
    }
}

/// Sends `command` with a fresh id and returns its reply and, in order, the frames that
/// arrived before it.
async fn request_collect(client: &mut WsClient, mut command: Value) -> (Value, Vec<Value>) {
    let id = client.next_id();
    command["id"] = json!(id);
    client.send_json(&command).await;
    client.recv_until(|v| v["id"] == id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_racing_a_recovering_subscribe_is_seen_exactly_once() {
    const ROUNDS: u64 = 400;
    // Not about the command rate: lift it.
    let unlimited = ["--client-rate", "100000", "--client-burst", "100000"];
    let redis = RedisServer::start().await;
    let a = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .args(unlimited)
        .start()
        .await;
    let b = Node::builder("node-b")
        .redis(&redis)
        .namespaces()
        .args(unlimited)
        .start()
        .await;
    let ch = unique_channel("hist:race");
    // Someone else keeps node-a subscribed, so live messages flow there while the
    // client's subscription is still reading its history.
    let mut anchor = WsClient::connect_json(&a.ws_url()).await;
    subscribe_fresh(&mut anchor, &ch, 0).await;
    let epoch = Learnt::default();

    let mut client = WsClient::connect_json(&a.ws_url()).await;
    subscribe_fresh(&mut client, &ch, 0).await;
    let mut seen: Vec<u64> = Vec::new();
    let absorb = |frames: Vec<Value>, seen: &mut Vec<u64>| {
        for m in frames {
            assert_eq!(
                (&m["type"], &m["channel"]),
                (&json!("message"), &json!(ch)),
                "{m}"
            );
            epoch.check(m["epoch"].as_str().unwrap_or_default());
            let offset = m["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("no offset: {m}"));
            assert_eq!(m["data"], json!({"n": offset}), "payload of {offset}");
            seen.push(offset);
        }
    };
    for round in 1..=ROUNDS {
        let (reply, before) =
            request_collect(&mut client, json!({"type": "unsubscribe", "channel": ch})).await;
        assert_eq!(reply["type"], "unsubscribed", "{reply}");
        absorb(before, &mut seen);
        let position = seen.last().copied().unwrap_or(0);
        // The publish races the subscribe; from node-a or node-b in turn.
        let publisher = if round % 2 == 0 { &a } else { &b };
        let subscribe = json!({
            "type": "subscribe", "channel": ch,
            "recover": {"epoch": epoch.get(), "offset": position},
        });
        let ((reply, before), (offset, _)) = tokio::join!(
            request_collect(&mut client, subscribe),
            publisher.publish_offset(&ch, json!({"n": round}))
        );
        assert_eq!(offset, round, "one publish per round");
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(
            reply["recovered"], true,
            "round {round}: recover from {position}: {reply}"
        );
        absorb(before, &mut seen);
    }
    // Read the rest of the last period, then nothing more may come.
    while seen.last().copied().unwrap_or(0) < ROUNDS {
        let m = client.recv_json().await;
        absorb(vec![m], &mut seen);
    }
    client.ping_pong().await;
    let (_, before) =
        request_collect(&mut client, json!({"type": "unsubscribe", "channel": ch})).await;
    absorb(before, &mut seen);

    let want: Vec<u64> = (1..=ROUNDS).collect();
    if seen != want {
        let at = seen
            .iter()
            .zip(&want)
            .position(|(s, w)| s != w)
            .unwrap_or(want.len().min(seen.len()));
        panic!(
            "over {ROUNDS} recovering subscribes raced by a publish, the client must see 1..={ROUNDS} exactly once; from index {at} it saw {:?}",
            &seen[at.saturating_sub(3)..(at + 5).min(seen.len())]
        );
    }
    expect_messages(&mut anchor, &ch, 1, ROUNDS, &epoch.get()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_and_history_over_the_proto_subprotocol() {
    use switchboard_proto::client::{
        HistoryRequest, StreamPosition, SubscribeRequest, client_frame::Command,
        server_frame::Frame,
    };
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
    let ch = unique_channel("hist:proto");
    let mut json_client = WsClient::connect_json(&a.ws_url()).await;
    subscribe_fresh(&mut json_client, &ch, 0).await;
    for n in 1..=5 {
        a.publish(&ch, json!({"n": n})).await;
    }
    let epoch = epoch_now(&a, &ch).await;

    let mut proto = WsClient::connect_proto(&b.ws_url()).await;
    let id = proto
        .send_command(Command::Subscribe(SubscribeRequest {
            channel: ch.clone(),
            recover: Some(StreamPosition {
                epoch: epoch.clone(),
                offset: 2,
            }),
        }))
        .await;
    let reply = proto.recv_frame().await;
    assert_eq!(reply.id, id, "{reply:?}");
    match reply.frame {
        Some(Frame::Subscribed(s)) => {
            assert_eq!(s.epoch.as_deref(), Some(epoch.as_str()), "{s:?}");
            assert_eq!((s.offset, s.recovered), (Some(5), Some(true)), "{s:?}");
        }
        other => panic!("proto subscribe with recover: {other:?}"),
    }
    for n in 3..=5u64 {
        let m = proto.recv_frame_message().await;
        assert_eq!(
            (m.offset, m.epoch.as_deref()),
            (Some(n), Some(epoch.as_str())),
            "{m:?}"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&m.data).expect("JSON bytes"),
            json!({"n": n})
        );
    }

    let id = proto
        .send_command(Command::History(HistoryRequest {
            channel: ch.clone(),
            limit: Some(2),
            since: None,
        }))
        .await;
    let reply = proto.recv_frame().await;
    assert_eq!(reply.id, id, "{reply:?}");
    match reply.frame {
        Some(Frame::History(h)) => {
            assert_eq!(
                (h.channel.as_str(), h.epoch.as_str(), h.offset),
                (ch.as_str(), epoch.as_str(), 5)
            );
            let offsets: Vec<Option<u64>> = h.messages.iter().map(|m| m.offset).collect();
            assert_eq!(offsets, [Some(4), Some(5)], "{h:?}");
        }
        other => panic!("proto history: {other:?}"),
    }
    proto.proto_ping_pong().await;
}

/// A recovery far larger than the outbound queue (and the socket's buffers)
/// streams at the pace the client reads, page by page, while the channel goes
/// on live: the client gets every message once, in order, and is never cut
/// off as a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_larger_than_the_outbound_queue_streams_at_the_clients_pace() {
    const BACKLOG: u64 = 2_000;
    const LIVE: u64 = 300;
    let node = Node::builder("node-pace")
        .namespaces()
        .args(["--outbound-queue", "32"])
        .start()
        .await;
    let ch = unique_channel("hist:pace");
    // 4 KiB each: the backlog (8 MB) is far more than the queue and the
    // kernel's socket buffers hold.
    let pad = "x".repeat(4096);
    let (_, epoch) = node.publish_offset(&ch, json!({"n": 1, "pad": pad})).await;
    for n in 2..=BACKLOG {
        node.publish(&ch, json!({"n": n, "pad": pad})).await;
    }

    let mut client = WsClient::connect_json(&node.ws_url()).await;
    let reply = client.subscribe_recover(&ch, &epoch, 0).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    // The channel goes on while the client catches up.
    let live = {
        let (node_api, ch, pad) = (node.internal_addr(), ch.clone(), pad.clone());
        tokio::spawn(async move {
            for n in BACKLOG + 1..=BACKLOG + LIVE {
                let body =
                    serde_json::to_vec(&json!({"channel": ch, "data": {"n": n, "pad": pad}}))
                        .unwrap();
                let r = switchboard_testkit::http::request(
                    node_api,
                    "POST",
                    "/api/v1/publish",
                    &[],
                    Some(&body),
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        })
    };
    let mut next = 1;
    while next <= BACKLOG + LIVE {
        let m = client.recv_json().await;
        assert_eq!(m["type"], "message", "{}: {m}", client.describe());
        assert_eq!(
            (m["offset"].as_u64(), m["data"]["n"].as_u64()),
            (Some(next), Some(next)),
            "{}: message {next} next, in order, once",
            client.describe()
        );
        next += 1;
    }
    live.await.unwrap();
    client.ping_pong().await;
    assert_eq!(
        node.metric("switchboard_slow_consumer_disconnects_total")
            .await,
        0.0,
        "nobody was cut off"
    );
}

/// After Redis loses a channel's history while the node stays connected
/// (FLUSHALL), the next epoch starts again at offset 1: a subscriber whose
/// seam was set at a higher offset of the old epoch still gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_below_the_old_offset_is_delivered() {
    let redis = RedisServer::start().await;
    let node = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .start()
        .await;
    let ch = unique_channel("hist:wiped");
    for n in 1..=5 {
        node.publish(&ch, json!({"n": n})).await;
    }
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    let epoch = subscribe_fresh(&mut client, &ch, 5).await;
    let mut recovering = WsClient::connect_json(&node.ws_url()).await;
    recover_ok(&mut recovering, &ch, &epoch, 3, 5).await;
    expect_messages(&mut recovering, &ch, 4, 5, &epoch).await;

    redis.flushall().await;
    let (offset, new_epoch) = node.publish_offset(&ch, json!({"n": 1})).await;
    assert_eq!(offset, 1);
    assert_ne!(new_epoch, epoch);
    for c in [&mut client, &mut recovering] {
        assert_eq!(
            c.recv_json().await,
            message(&ch, 1, &new_epoch),
            "{}: the new epoch's first message",
            c.describe()
        );
    }
}
