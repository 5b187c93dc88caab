//! Faults injected while publishers run, and the accounting that must hold
//! after each: every publish the node acknowledged reached every subscriber
//! (live, or repaired from history), or that subscriber was told it may have
//! missed it (a `missed` push, or a new epoch announced by one). Nothing
//! acknowledged is lost silently.
//!
//! Each story runs two nodes on one real Redis, subscribers of a history
//! channel and of a plain channel on both nodes, and publishers through both
//! nodes' server APIs, while the fault happens; then it publishes a final
//! marker and counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_testkit::{Node, RedisServer, WsClient, eventually, unique_channel};
use tokio_tungstenite::tungstenite::Message;

/// One acknowledged publish: its sequence number and when it was sent (Redis
/// may have carried it out any time after that).
#[derive(Clone, Copy, Debug)]
struct Ack {
    seq: u64,
    sent: Instant,
}

/// Publishes `{"seq": n}` through the given APIs in turn until stopped, as fast
/// as answers come; returns the acknowledged ones. A refusal (503) is fine and
/// is not counted; any other answer fails the test.
fn spawn_publisher(
    apis: Vec<SocketAddr>,
    channel: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<(Vec<Ack>, u64)> {
    tokio::spawn(async move {
        let (mut acks, mut refused) = (Vec::new(), 0u64);
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let api = apis[seq as usize % apis.len()];
            let body =
                serde_json::to_vec(&json!({"channel": channel, "data": {"seq": seq}})).unwrap();
            let sent = Instant::now();
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                switchboard_testkit::http::request(
                    api,
                    "POST",
                    "/api/v1/publish",
                    &[],
                    Some(&body),
                ),
            )
            .await;
            match answer {
                Ok(r) if r.status == 200 => {
                    acks.push(Ack { seq, sent });
                    acked.store(acks.len(), Ordering::Relaxed);
                }
                Ok(r) if r.status == 503 => {
                    refused += 1;
                    // Do not spin while the node says no.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(r) => panic!("publish {seq}: unexpected answer {} {}", r.status, r.text()),
                Err(_) => panic!("publish {seq}: no answer within 10 s (a publish must not hang)"),
            }
        }
        (acks, refused)
    })
}

/// What one subscriber saw: messages by sequence number (with their offset),
/// and the times at which it was told it may have missed something.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<(u64, Option<u64>, Option<String>)>,
    missed: Vec<(Instant, String)>,
}

/// Reads a subscriber until it has the marker message `{"seq": 0}`.
async fn collect(mut client: WsClient, channel: String) -> Seen {
    let mut seen = Seen::default();
    loop {
        let frame = client.recv_message_within(Duration::from_secs(60)).await;
        let text = match frame {
            Some(Message::Text(t)) => t.to_string(),
            other => panic!("{}: subscriber got {other:?}", client.describe()),
        };
        let m: Value = serde_json::from_str(&text).unwrap();
        match m["type"].as_str() {
            Some("message") => {
                assert_eq!(m["channel"], channel.as_str(), "{m}");
                let seq = m["data"]["seq"].as_u64().expect("seq");
                if seq == 0 {
                    return seen;
                }
                seen.messages.push((
                    seq,
                    m["offset"].as_u64(),
                    m["epoch"].as_str().map(str::to_owned),
                ));
            }
            Some("missed") => {
                assert_eq!(m["channel"], channel.as_str(), "{m}");
                seen.missed
                    .push((Instant::now(), m["reason"].as_str().unwrap().to_owned()));
            }
            _ => panic!("{}: unexpected frame {m}", client.describe()),
        }
    }
}

/// The accounting of one subscriber: how many acknowledged publishes it got,
/// how many it was told it may have missed, and the ones lost silently.
struct Account {
    delivered: usize,
    signalled: usize,
    lost: Vec<u64>,
}

fn account(acks: &[Ack], seen: &Seen) -> Account {
    let got: HashMap<u64, usize> = seen.messages.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.0).or_default() += 1;
        m
    });
    assert!(
        got.values().all(|&n| n == 1),
        "a message delivered twice: {:?}",
        got.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    let mut account = Account {
        delivered: 0,
        signalled: 0,
        lost: Vec::new(),
    };
    for ack in acks {
        if got.contains_key(&ack.seq) {
            account.delivered += 1;
        } else if seen.missed.iter().any(|(at, _)| *at >= ack.sent) {
            // Published before the subscriber heard it may have missed messages.
            account.signalled += 1;
        } else {
            account.lost.push(ack.seq);
        }
    }
    account
}

/// History channels: offsets increase by exactly one within an epoch.
fn assert_contiguous(seen: &Seen, who: &str) {
    let mut last: Option<(&str, u64)> = None;
    for (seq, offset, epoch) in &seen.messages {
        let (Some(offset), Some(epoch)) = (offset, epoch) else {
            panic!("{who}: message {seq} without offset or epoch");
        };
        if let Some((e, o)) = last
            && e == epoch.as_str()
        {
            assert_eq!(*offset, o + 1, "{who}: offsets jump at message {seq}");
        }
        last = Some((epoch, *offset));
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL, then a restart that reloads the data (append-only file).
    RestartWithData,
    /// SIGKILL, then a restart with nothing.
    RestartEmpty,
    /// SIGSTOP for a while, then SIGCONT.
    Hang,
    /// `CLIENT KILL TYPE pubsub`: every node's subscriber connection dropped.
    KillPubsub,
}

/// The story: subscribers on both nodes, publishers on both nodes, the fault,
/// recovery, a final marker, and the accounting.
async fn fault_story(fault: Fault) {
    let mut redis = match fault {
        Fault::RestartWithData => RedisServer::start_persistent().await,
        _ => RedisServer::start().await,
    };
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
    let hist = unique_channel("hist:fault");
    let plain = unique_channel("plain-fault");

    let mut readers = Vec::new();
    for (node, channel) in [(&a, &hist), (&b, &hist), (&a, &plain), (&b, &plain)] {
        let mut client = WsClient::connect_json(&node.ws_url()).await;
        client.subscribe(channel).await;
        readers.push((
            format!("{} on {}", channel, node.id()),
            channel.clone(),
            tokio::spawn(collect(client, channel.clone())),
        ));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let apis = vec![a.internal_addr(), b.internal_addr()];
    let acked = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let publishers = [
        spawn_publisher(apis.clone(), hist.clone(), stop.clone(), acked[0].clone()),
        spawn_publisher(apis.clone(), plain.clone(), stop.clone(), acked[1].clone()),
    ];
    // Let some traffic through before the fault.
    eventually(
        "traffic before the fault",
        Duration::from_secs(10),
        || async {
            let n = a.metric("switchboard_messages_delivered_total").await;
            if n >= 50.0 {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    )
    .await;

    match fault {
        Fault::RestartWithData | Fault::RestartEmpty => {
            redis.kill();
            a.wait_readyz(503, Duration::from_secs(10)).await;
            redis.restart().await;
        }
        Fault::Hang => {
            redis.pause();
            // Long enough for both nodes to declare the link dead.
            a.wait_readyz(503, Duration::from_secs(15)).await;
            b.wait_readyz(503, Duration::from_secs(15)).await;
            redis.resume();
        }
        Fault::KillPubsub => {
            let killed: i64 = redis
                .query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
                .await;
            assert_eq!(killed, 2, "one pub/sub connection per node");
        }
    }
    for node in [&a, &b] {
        node.wait_readyz(200, Duration::from_secs(30)).await;
        eventually(
            "the node to count its reconnect",
            Duration::from_secs(10),
            || async {
                let n = node.metric("switchboard_backplane_reconnects_total").await;
                if n >= 1.0 { Ok(()) } else { Err(n.to_string()) }
            },
        )
        .await;
    }
    // Some traffic after the fault too.
    let delivered = a.metric("switchboard_messages_delivered_total").await;
    eventually(
        "traffic after the fault",
        Duration::from_secs(20),
        || async {
            let n = a.metric("switchboard_messages_delivered_total").await;
            if n >= delivered + 50.0 {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    )
    .await;
    // And each publisher acknowledged after the fault, whatever the machine's
    // pace: at least 50 in all, 25 of them since the links came back.
    let since: Vec<usize> = acked.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    eventually(
        "acknowledged publishes after the fault",
        Duration::from_secs(30),
        || async {
            let now: Vec<usize> = acked.iter().map(|n| n.load(Ordering::Relaxed)).collect();
            if now.iter().zip(&since).all(|(n, s)| *n >= (s + 25).max(50)) {
                Ok(())
            } else {
                Err(format!("{now:?} (at the links' return: {since:?})"))
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut acks: HashMap<String, Vec<Ack>> = HashMap::new();
    for (publisher, channel) in publishers.into_iter().zip([&hist, &plain]) {
        let (list, _refused) = publisher.await.unwrap();
        assert!(
            list.len() >= 50,
            "{channel}: only {} acknowledged",
            list.len()
        );
        acks.insert(channel.clone(), list);
    }
    for channel in [&hist, &plain] {
        a.publish(channel, json!({"seq": 0})).await;
    }

    let mut summary = Vec::new();
    for (who, channel, reader) in readers {
        let seen = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap_or_else(|_| panic!("{who}: the marker never came"))
            .unwrap();
        let account = account(&acks[&channel], &seen);
        if channel == hist {
            assert_contiguous(&seen, &who);
            match fault {
                // History survived: everything arrives, live or repaired; no excuse needed.
                Fault::RestartWithData | Fault::Hang | Fault::KillPubsub => {
                    assert_eq!(account.signalled, 0, "{who}: {:?}", seen.missed);
                    assert!(seen.missed.is_empty(), "{who}: {:?}", seen.missed);
                }
                // History was lost with Redis: said so, as such.
                Fault::RestartEmpty => {
                    assert!(
                        seen.missed.iter().all(|(_, r)| r == "history"),
                        "{who}: {:?}",
                        seen.missed
                    );
                }
            }
        } else {
            assert!(
                seen.missed.iter().all(|(_, r)| r == "backplane"),
                "{who}: {:?}",
                seen.missed
            );
            assert!(
                !seen.missed.is_empty(),
                "{who}: a plain channel through an outage is told"
            );
        }
        assert!(
            account.lost.is_empty(),
            "{fault:?}: {who} lost {} acknowledged messages silently (first {:?}); delivered {}, signalled {}",
            account.lost.len(),
            &account.lost[..account.lost.len().min(10)],
            account.delivered,
            account.signalled
        );
        summary.push(format!(
            "{who}: delivered {} signalled {}",
            account.delivered, account.signalled
        ));
    }
    eprintln!("{fault:?}: {}", summary.join("; "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_a_redis_restart_with_data() {
    fault_story(Fault::RestartWithData).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_data_is_signalled_never_silent() {
    fault_story(Fault::RestartEmpty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_a_redis_hang() {
    fault_story(Fault::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_redis_drops_the_pubsub_connections() {
    fault_story(Fault::KillPubsub).await;
}

/// A burst that fills the fan-out lanes costs latency only: the node stops
/// reading Redis until its lanes have room, keeps its pub/sub link, and every
/// acknowledged message of every channel arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_fills_a_fanout_lane_drops_nothing_and_keeps_the_link() {
    const SUBSCRIBERS: usize = 40;
    const PUBLISHERS: usize = 20;
    const EACH: u64 = 100; // within a connection's burst allowance (200)
    let redis = RedisServer::start().await;
    // Tiny lanes, so that the burst fills them on any machine.
    let lanes = ["--fanout-lane-capacity", "4"];
    let a = Node::builder("node-a")
        .redis(&redis)
        .args(lanes)
        .start()
        .await;
    let b = Node::builder("node-b")
        .redis(&redis)
        .args(lanes)
        .start()
        .await;
    let hot = unique_channel("hot");
    let quiet = unique_channel("quiet");

    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let node = if i % 2 == 0 { &a } else { &b };
        let mut client = WsClient::connect_json(&node.ws_url()).await;
        client.subscribe(&hot).await;
        readers.push(tokio::spawn(collect(client, hot.clone())));
    }
    let mut quiet_sub = WsClient::connect_json(&b.ws_url()).await;
    quiet_sub.subscribe(&quiet).await;
    let quiet_reader = tokio::spawn(collect(quiet_sub, quiet.clone()));

    // The quiet channel's publisher runs through the burst.
    let stop = Arc::new(AtomicBool::new(false));
    let quiet_publisher = spawn_publisher(
        vec![a.internal_addr()],
        quiet.clone(),
        stop.clone(),
        Arc::new(AtomicUsize::new(0)),
    );

    // Every publisher connection sends its whole burst at once (pipelined).
    let mut bursts = Vec::new();
    for p in 0..PUBLISHERS {
        let node = if p % 2 == 0 { &a } else { &b };
        let mut client = WsClient::connect_json(&node.ws_url()).await;
        bursts.push(tokio::spawn({
            let hot = hot.clone();
            async move {
                for i in 0..EACH {
                    let seq = 1 + p as u64 * EACH + i;
                    client
                        .send_json(&json!({"type": "publish", "id": seq, "channel": hot, "data": {"seq": seq}}))
                        .await;
                }
                let mut acked = Vec::new();
                while acked.len() < EACH as usize {
                    let reply = client.recv_json().await;
                    assert_eq!(reply["type"], "published", "burst publish: {reply}");
                    acked.push(reply["id"].as_u64().unwrap());
                }
                acked
            }
        }));
    }
    let mut acked = Vec::new();
    for burst in bursts {
        acked.extend(burst.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (quiet_acks, _) = quiet_publisher.await.unwrap();
    a.publish(&hot, json!({"seq": 0})).await;
    a.publish(&quiet, json!({"seq": 0})).await;

    acked.sort_unstable();
    for (i, reader) in readers.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap_or_else(|_| panic!("hot subscriber {i}: the marker never came"))
            .unwrap();
        let mut got: Vec<u64> = seen.messages.iter().map(|m| m.0).collect();
        got.sort_unstable();
        assert_eq!(
            got, acked,
            "hot subscriber {i} got every acknowledged message once"
        );
        assert!(seen.missed.is_empty(), "{:?}", seen.missed);
    }
    let seen = quiet_reader.await.unwrap();
    let quiet_account = account(&quiet_acks, &seen);
    assert!(
        quiet_account.lost.is_empty() && quiet_account.signalled == 0,
        "the quiet channel lost nothing to the burst: lost {:?}",
        quiet_account.lost
    );
    for node in [&a, &b] {
        assert_eq!(
            node.metric("switchboard_backplane_reconnects_total").await,
            0.0,
            "{}: the burst cost no reconnect",
            node.id()
        );
    }
    let waits = a
        .metric("switchboard_backplane_lane_wait_seconds_count")
        .await
        + b.metric("switchboard_backplane_lane_wait_seconds_count")
            .await;
    assert!(
        waits > 0.0,
        "the burst did fill a lane (else this test proves nothing)"
    );
}
