//! Presence in the Redis backplane against a real `redis-server`: entries no live
//! node vouches for are dropped, and what Redis loses is written back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_backplane::redis::{RedisBackplane, RedisConfig};
use switchboard_backplane::{Backplane, Inbox, InboxLane, NodeStats, PresenceMember};
use switchboard_testkit::{RedisServer, eventually};

const INTERVAL: Duration = Duration::from_millis(100);

fn start(redis: &RedisServer, node: &str) -> (Backplane, Vec<InboxLane>) {
    let (inbox, lanes) = Inbox::new(1, 1024);
    let backplane = RedisBackplane::start(
        RedisConfig {
            url: redis.url(),
            prefix: "switchboard".into(),
            node_id: node.into(),
            registry_interval: INTERVAL,
            ping_interval: Duration::from_millis(50),
        },
        inbox,
        Arc::new(NodeStats::default),
    )
    .unwrap();
    (Backplane::Redis(Arc::new(backplane)), lanes)
}

fn member(conn: &str, node: &str) -> PresenceMember {
    PresenceMember {
        conn: conn.into(),
        user: "u".into(),
        node: node.into(),
        info: String::new(),
    }
}

/// Waits until the presence of `channel` has `want` members (5 s at most).
async fn wait_count(backplane: &Backplane, channel: &str, want: usize) {
    eventually(
        &format!("{want} members in the presence of {channel}"),
        Duration::from_secs(5),
        || async {
            match backplane.presence(channel).await.map(|m| m.len()) {
                Ok(n) if n == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_drops_what_no_live_node_vouches_for_and_rewrites_what_redis_lost() {
    let redis = RedisServer::start().await;
    let (n1, _lanes) = start(&redis, "n1");
    n1.claim_node_id().await.unwrap();

    // Entries no live node vouches for: one long expired, one written by an
    // earlier incarnation of n1 itself (a restart under the same id).
    let key = "switchboard:members:{x}";
    let added: i64 = redis
        .query(
            ::redis::cmd("ZADD")
                .arg(key)
                .arg(1)
                .arg(r#"{"conn":"c_dead","user":"","node":"ghost","inc":"i0"}"#)
                .arg(99_999_999_999_999u64)
                .arg(r#"{"conn":"c_old","user":"","node":"n1","inc":"i0"}"#),
        )
        .await;
    assert_eq!(added, 2);
    n1.presence_add("x", &member("c_new", "n1")).await.unwrap();
    let members = n1.presence("x").await.unwrap();
    assert_eq!(members, [member("c_new", "n1")]);
    let left: i64 = redis.query(::redis::cmd("ZCARD").arg(key)).await;
    assert_eq!(left, 1, "and they are gone from Redis");

    // Many members over several channels (more than one script call for `big`).
    for i in 0..600 {
        n1.presence_add("big", &member(&format!("c_{i:04}"), "n1"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        n1.presence_add("small", &member(&format!("s_{i}"), "n1"))
            .await
            .unwrap();
    }
    wait_count(&n1, "big", 600).await;

    // Redis loses everything: the next heartbeats write it all back.
    redis.flushall().await;
    wait_count(&n1, "big", 600).await;
    wait_count(&n1, "small", 3).await;
    wait_count(&n1, "x", 1).await;

    // Removed members stay removed across heartbeats.
    for i in 0..300 {
        n1.presence_remove("big", &format!("c_{i:04}"))
            .await
            .unwrap();
    }
    wait_count(&n1, "big", 300).await;
    // Nothing may happen now, and a quiet time is the only way to see that: four
    // heartbeat intervals, in which a heartbeat that rewrote removed members would
    // have brought them back.
    tokio::time::sleep(INTERVAL * 4).await;
    assert_eq!(n1.presence("big").await.unwrap().len(), 300);
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backplane_with_the_same_id_is_refused_while_the_first_beats() {
    let redis = RedisServer::start().await;
    let (first, _a) = start(&redis, "twin");
    first.claim_node_id().await.unwrap();
    let (second, _b) = start(&redis, "twin");
    let started = Instant::now();
    let refused = second.claim_node_id().await;
    assert!(
        matches!(
            &refused,
            Err(switchboard_backplane::BackplaneError::NodeIdInUse { node_id, .. }) if node_id == "twin"
        ),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < INTERVAL * 10,
        "decided within about two intervals: {:?}",
        started.elapsed()
    );
    second.shutdown().await;

    // Once the first one is gone (deregistered), the id is free at once.
    first.shutdown().await;
    let (third, _c) = start(&redis, "twin");
    third.claim_node_id().await.unwrap();
    third.shutdown().await;
}
