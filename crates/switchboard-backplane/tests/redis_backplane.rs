//! The Redis backplane against a real `redis-server` on a free port: one pub/sub
//! connection kept alive by pings, interest that follows subscribers, the node
//! registry, contiguous history offsets and epochs, and what happens when Redis
//! goes away, comes back with or without its data, or drops the pub/sub connection
//! (publishes refused meanwhile, a resync marker after, everything resubscribed).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_backplane::envelope::{PayloadEncoding, for_channel};
use switchboard_backplane::redis::{RedisBackplane, RedisConfig};
use switchboard_backplane::{
    Backplane, BackplaneError, HistoryPolicy, Inbound, Inbox, InboxLane, NodeStats, Since, Topic,
};
use switchboard_testkit::{RedisServer, eventually};

/// Waits until `ok()` holds (10 s at most).
async fn wait_for(what: &str, ok: impl Fn() -> bool) {
    eventually(what, Duration::from_secs(10), || async {
        if ok() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await
}

/// A node's backplane, and the Redis implementation behind it (for its figures).
fn start(redis: &RedisServer, node: &str) -> (Backplane, Arc<RedisBackplane>, Vec<InboxLane>) {
    let (inbox, lanes) = Inbox::new(1, 1024);
    let backplane = RedisBackplane::start(
        RedisConfig {
            url: redis.url(),
            prefix: "switchboard".into(),
            node_id: node.into(),
            registry_interval: Duration::from_millis(100),
            ping_interval: Duration::from_millis(20),
        },
        inbox,
        Arc::new(|| NodeStats {
            connections: 3,
            subscriptions: 4,
        }),
    )
    .unwrap();
    let redis_backplane = Arc::new(backplane);
    (
        Backplane::Redis(redis_backplane.clone()),
        redis_backplane,
        lanes,
    )
}

async fn received(lane: &mut InboxLane) -> Bytes {
    next_envelope(lane).await.payload
}

/// The next envelope of a lane, past the resync markers of (re)connections.
async fn next_envelope(lane: &mut InboxLane) -> switchboard_backplane::Envelope {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), lane.recv())
            .await
            .expect("an envelope within 5 s")
            .expect("inbox open")
        {
            Inbound::Envelope(e) => return e,
            Inbound::Resync(_) => continue,
        }
    }
}

fn envelope(channel: &str, data: &'static [u8]) -> switchboard_backplane::Envelope {
    for_channel(
        "a",
        channel,
        Bytes::from_static(data),
        PayloadEncoding::Binary,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_one_connection_and_interest_follows_subscribers() {
    let redis = RedisServer::start().await;
    let (backplane, inner, mut lanes) = start(&redis, "a");
    wait_for("the backplane to connect", || backplane.is_up()).await;

    backplane.subscribe(Topic::Channel("news")).await.unwrap();
    assert_eq!(redis.numsub("news").await, 1);
    backplane
        .publish(&envelope("news", b"one"), None)
        .await
        .unwrap();
    assert_eq!(&received(&mut lanes[0]).await[..], b"one");

    // Many health checks later the connection is still the first one: a
    // subscribed connection answers PING with a list, and that is healthy.
    let from = inner.pings_answered();
    wait_for("five answered PINGs", || inner.pings_answered() >= from + 5).await;
    assert_eq!(backplane.connection_generation(), 1);

    backplane.unsubscribe(Topic::Channel("news")).await.unwrap();
    assert_eq!(redis.numsub("news").await, 0);

    let nodes = backplane.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (
            nodes[0].id.as_str(),
            nodes[0].connections,
            nodes[0].subscriptions
        ),
        ("a", 3, 4)
    );
    backplane.shutdown().await;
    assert!(
        backplane.nodes().await.unwrap().is_empty(),
        "a node that left is deregistered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_reported_then_everything_is_resubscribed() {
    let mut redis = RedisServer::start().await;
    let (backplane, _, mut lanes) = start(&redis, "a");
    wait_for("the backplane to connect", || backplane.is_up()).await;
    backplane.subscribe(Topic::Channel("a")).await.unwrap();
    backplane.subscribe(Topic::Channel("b")).await.unwrap();

    redis.kill();
    wait_for("the backplane to notice", || !backplane.is_up()).await;
    assert!(matches!(
        backplane.publish(&envelope("a", b"lost"), None).await,
        Err(BackplaneError::Unavailable(_))
    ));
    assert!(matches!(
        backplane.subscribe(Topic::Channel("c")).await,
        Err(BackplaneError::Unavailable(_))
    ));

    redis.restart().await;
    wait_for("the backplane to reconnect", || backplane.is_up()).await;
    assert_eq!(backplane.connection_generation(), 2);
    assert_eq!(
        (
            redis.numsub("a").await,
            redis.numsub("b").await,
            redis.numsub("c").await
        ),
        (1, 1, 0)
    );
    backplane
        .publish(&envelope("b", b"after"), None)
        .await
        .unwrap();
    assert_eq!(&received(&mut lanes[0]).await[..], b"after");
    backplane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_see_each_other_and_each_others_messages() {
    let redis = RedisServer::start().await;
    let (a, _, _a_lanes) = start(&redis, "a");
    let (b, _, mut b_lanes) = start(&redis, "b");
    wait_for("both to connect", || a.is_up() && b.is_up()).await;
    b.subscribe(Topic::Channel("x")).await.unwrap();
    a.publish(&envelope("x", b"from a"), None).await.unwrap();
    assert_eq!(&received(&mut b_lanes[0]).await[..], b"from a");
    let ids = eventually("each node to see both", Duration::from_secs(5), || async {
        let ids: Vec<String> = a.nodes().await.unwrap().into_iter().map(|n| n.id).collect();
        if ids.len() == 2 {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    assert_eq!(ids, ["a", "b"]);
    a.shutdown().await;
    b.shutdown().await;
}

const HISTORY: HistoryPolicy = HistoryPolicy {
    size: 3,
    ttl: Duration::from_secs(60),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_offsets_are_contiguous_and_the_window_slides() {
    let redis = RedisServer::start().await;
    let (backplane, _, mut lanes) = start(&redis, "a");
    wait_for("the backplane to connect", || backplane.is_up()).await;
    backplane.subscribe(Topic::Channel("h")).await.unwrap();
    let empty = backplane.history("h", HISTORY, Since::All).await.unwrap();
    assert_eq!((empty.offset, empty.first, empty.messages.len()), (0, 1, 0));
    assert_eq!(empty.epoch, "", "a read creates no history");
    let keys: Vec<String> = redis.query(::redis::cmd("KEYS").arg("*{h}*")).await;
    assert!(keys.is_empty(), "nor any key of the channel: {keys:?}");
    let mut epoch = String::new();
    for n in 1..=5u64 {
        let p = backplane
            .publish(&envelope("h", b"m"), Some(HISTORY))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.offset, n);
        if n == 1 {
            epoch = p.epoch.clone();
            assert!(!epoch.is_empty(), "the first publish makes the epoch");
        }
        assert_eq!(p.epoch, epoch);
    }
    // Live envelopes carry offset and epoch, in offset order.
    for n in 1..=5u64 {
        let e = next_envelope(&mut lanes[0]).await;
        assert_eq!((e.offset, e.epoch.as_str()), (n, epoch.as_str()));
    }
    let page = backplane.history("h", HISTORY, Since::All).await.unwrap();
    let offsets: Vec<u64> = page.messages.iter().map(|m| m.offset).collect();
    assert_eq!((page.offset, page.first, offsets), (5, 3, vec![3, 4, 5]));
    let after = backplane
        .history("h", HISTORY, Since::After(3))
        .await
        .unwrap();
    assert_eq!(
        after.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [4, 5]
    );
    assert!(after.can_recover(&epoch, 2) && !after.can_recover(&epoch, 1));
    let none = backplane
        .history("h", HISTORY, Since::Nothing)
        .await
        .unwrap();
    assert!(none.messages.is_empty());
    backplane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_data_changes_the_epoch_and_keeping_it_does_not() {
    for durable in [false, true] {
        let mut redis = if durable {
            RedisServer::start_persistent().await
        } else {
            RedisServer::start().await
        };
        let (backplane, _, _lanes) = start(&redis, "a");
        wait_for("the backplane to connect", || backplane.is_up()).await;
        let before = backplane
            .publish(&envelope("h", b"m"), Some(HISTORY))
            .await
            .unwrap()
            .unwrap();
        redis.restart().await;
        wait_for("the backplane to reconnect", || backplane.is_up()).await;
        let page = backplane.history("h", HISTORY, Since::All).await.unwrap();
        if durable {
            assert_eq!(
                (page.epoch.as_str(), page.offset),
                (before.epoch.as_str(), 1),
                "data kept"
            );
            assert!(page.can_recover(&before.epoch, 0));
        } else {
            assert_ne!(page.epoch, before.epoch, "history lost: a new epoch");
            assert_eq!(page.offset, 0);
            assert!(
                !page.can_recover(&before.epoch, 1),
                "a client cannot mistake it for nothing missed"
            );
        }
        backplane.shutdown().await;
    }
}

/// The next resync marker of a lane, skipping envelopes; waits until it is
/// resolved and returns its generation and whether resubscribing succeeded.
async fn next_resync(lane: &mut InboxLane) -> (u64, bool) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), lane.recv())
            .await
            .expect("a resync marker within 10 s")
            .expect("inbox open")
        {
            Inbound::Resync(mut r) => {
                let ready = tokio::time::timeout(Duration::from_secs(10), r.ready())
                    .await
                    .expect("the marker resolves");
                return (r.generation, ready);
            }
            Inbound::Envelope(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_refused_while_the_link_is_down_and_a_reconnect_is_marked() {
    let mut redis = RedisServer::start().await;
    let (backplane, _, mut lanes) = start(&redis, "a");
    assert_eq!(next_resync(&mut lanes[0]).await, (1, true));
    backplane.subscribe(Topic::Channel("c")).await.unwrap();
    redis.kill();
    wait_for("the link to go down", || !backplane.is_up()).await;
    match backplane.publish(&envelope("c", b"lost?"), None).await {
        Err(BackplaneError::Unavailable(why)) => assert!(why.contains("link"), "{why}"),
        other => panic!("a publish while the link is down must be refused: {other:?}"),
    }
    redis.restart().await;
    // The restarted Redis takes a publish on the pool at once; the node must
    // still refuse until its own link is back and resubscribed.
    let (generation, ready) = next_resync(&mut lanes[0]).await;
    assert!(
        generation >= 2 && ready,
        "generation {generation}, ready {ready}"
    );
    wait_for("the link to come back", || backplane.is_up()).await;
    assert_eq!(
        redis.numsub("c").await,
        1,
        "resubscribed before the marker opened"
    );
    backplane
        .publish(&envelope("c", b"after"), None)
        .await
        .unwrap();
    assert_eq!(&received(&mut lanes[0]).await[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_the_pubsub_connection_is_a_marked_reconnect() {
    let redis = RedisServer::start().await;
    let (backplane, _, mut lanes) = start(&redis, "a");
    assert_eq!(next_resync(&mut lanes[0]).await, (1, true));
    backplane.subscribe(Topic::Channel("c")).await.unwrap();
    let killed: i64 = redis
        .query(::redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
        .await;
    assert_eq!(killed, 1, "one pub/sub connection");
    assert_eq!(next_resync(&mut lanes[0]).await, (2, true));
    wait_for("the link to come back", || backplane.is_up()).await;
    backplane.publish(&envelope("c", b"x"), None).await.unwrap();
    assert_eq!(&received(&mut lanes[0]).await[..], b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lane_holds_the_reader_back_and_loses_nothing() {
    let redis = RedisServer::start().await;
    // A lane of 4 envelopes that nobody reads for now.
    let (inbox, mut lanes) = Inbox::new(1, 4);
    let backplane = Backplane::Redis(Arc::new(
        RedisBackplane::start(
            RedisConfig {
                url: redis.url(),
                prefix: "switchboard".into(),
                node_id: "a".into(),
                registry_interval: Duration::from_secs(1),
                ping_interval: Duration::from_millis(200),
            },
            inbox,
            Arc::new(NodeStats::default),
        )
        .unwrap(),
    ));
    assert_eq!(next_resync(&mut lanes[0]).await, (1, true));
    backplane.subscribe(Topic::Channel("c")).await.unwrap();
    const N: usize = 2_000;
    for i in 0..N {
        let data: &'static [u8] = Box::leak(i.to_string().into_bytes().into_boxed_slice());
        backplane.publish(&envelope("c", data), None).await.unwrap();
    }
    // Nothing happens here, and that is the point: the reader waits for lane
    // room past the whole liveness bound of a silent link (a PING after
    // 200 ms, then the 2 s command timeout), which must not count as a dead
    // connection. A duration, not an event, is what is checked.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(backplane.is_up(), "a slow fan-out must not cost the link");
    for i in 0..N {
        let got = received(&mut lanes[0]).await;
        assert_eq!(&got[..], i.to_string().as_bytes(), "message {i} in order");
    }
    assert_eq!(backplane.connection_generation(), 1, "never reconnected");
}
