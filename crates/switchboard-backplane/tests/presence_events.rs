//! What presence changes mean, cluster-wide, against a real `redis-server`: two
//! nodes on one Redis, each transition (a channel's first and last member, a
//! user's first and last connection) told to exactly one of them, counts and
//! channel lists, and the departures of members whose node died.

use std::sync::Arc;
use std::time::Duration;

use switchboard_backplane::redis::{RedisBackplane, RedisConfig};
use switchboard_backplane::{
    Backplane, Departure, Inbox, InboxLane, Joined, Left, NodeStats, PresenceMember,
};
use switchboard_testkit::{RedisServer, eventually};
use tokio::sync::mpsc::Receiver;

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

/// Two nodes on one Redis, each holding its id.
async fn two_nodes(redis: &RedisServer) -> [(Backplane, Vec<InboxLane>); 2] {
    let n1 = start(redis, "n1");
    let n2 = start(redis, "n2");
    n1.0.claim_node_id().await.unwrap();
    n2.0.claim_node_id().await.unwrap();
    [n1, n2]
}

fn member(conn: &str, user: &str, node: &str) -> PresenceMember {
    PresenceMember {
        conn: conn.into(),
        user: user.into(),
        node: node.into(),
        info: if user.is_empty() {
            String::new()
        } else {
            format!(r#"{{"name":"{user}"}}"#)
        },
    }
}

fn joined(channel_was_empty: bool, user_was_absent: bool) -> Joined {
    Joined {
        channel_was_empty,
        user_was_absent,
    }
}

fn left(user: &str, channel_now_empty: bool, user_now_absent: bool) -> Option<Left> {
    Some(Left {
        user: user.into(),
        channel_now_empty,
        user_now_absent,
    })
}

fn departure(
    channel: &str,
    user: &str,
    channel_now_empty: bool,
    user_now_absent: bool,
) -> Departure {
    Departure {
        channel: channel.into(),
        user: user.into(),
        channel_now_empty,
        user_now_absent,
    }
}

/// Receives departures until `want` of them have come (10 s at most).
async fn departures(rx: &mut Receiver<Departure>, want: usize) -> Vec<Departure> {
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(d)) => got.push(d),
            other => panic!(
                "{} departures of {want} came: {got:?} ({other:?})",
                got.len()
            ),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_first_join_and_last_leave_are_told_once_across_nodes() {
    let redis = RedisServer::start().await;
    let [(n1, _l1), (n2, _l2)] = two_nodes(&redis).await;
    let room = "app:presence-room";

    assert_eq!(
        n1.presence_join(room, &member("c_1", "u", "n1"))
            .await
            .unwrap(),
        joined(true, true)
    );
    assert_eq!(
        n2.presence_join(room, &member("c_2", "u", "n2"))
            .await
            .unwrap(),
        joined(false, false),
        "u is there already, on n1"
    );
    assert_eq!(
        n2.presence_join(room, &member("c_3", "v", "n2"))
            .await
            .unwrap(),
        joined(false, true)
    );
    assert_eq!(
        n1.presence_join(room, &member("c_4", "", "n1"))
            .await
            .unwrap(),
        joined(false, false),
        "an anonymous member is no user"
    );
    assert_eq!(n1.presence_counts(room).await.unwrap(), (4, 2));
    assert_eq!(n2.presence_counts(room).await.unwrap(), (4, 2));
    let members = n2.presence(room).await.unwrap();
    assert_eq!(
        members,
        [
            member("c_1", "u", "n1"),
            member("c_2", "u", "n2"),
            member("c_3", "v", "n2"),
            member("c_4", "", "n1")
        ],
        "with their user info"
    );

    assert_eq!(
        n2.presence_leave(room, "c_1").await.unwrap(),
        None,
        "n1's member"
    );
    assert_eq!(
        n1.presence_leave(room, "c_1").await.unwrap(),
        left("u", false, false),
        "u is still there, on n2"
    );
    assert_eq!(
        n1.presence_leave(room, "c_1").await.unwrap(),
        None,
        "left already"
    );
    assert_eq!(
        n2.presence_leave(room, "c_2").await.unwrap(),
        left("u", false, true)
    );
    assert_eq!(
        n1.presence_leave(room, "c_4").await.unwrap(),
        left("", false, false)
    );
    assert_eq!(
        n2.presence_leave(room, "c_3").await.unwrap(),
        left("v", true, true)
    );
    assert_eq!(n1.presence_counts(room).await.unwrap(), (0, 0));

    // The native calls still work, and say nothing.
    n1.presence_add(room, &member("c_5", "w", "n1"))
        .await
        .unwrap();
    assert_eq!(n2.presence_counts(room).await.unwrap(), (1, 1));
    n1.presence_remove(room, "c_5").await.unwrap();
    assert_eq!(n2.presence_counts(room).await.unwrap(), (0, 0));

    // User ids that JSON escapes, and one that is part of another's.
    for user in [r#"a"b\c/d"#, "é\u{1}", "us"] {
        let other = n2
            .presence_join(room, &member("c_x", "user", "n2"))
            .await
            .unwrap();
        assert_eq!(other, joined(true, true));
        let first = n1
            .presence_join(room, &member("c_6", user, "n1"))
            .await
            .unwrap();
        let second = n2
            .presence_join(room, &member("c_7", user, "n2"))
            .await
            .unwrap();
        assert_eq!(
            (first, second),
            (joined(false, true), joined(false, false)),
            "{user:?}"
        );
        assert_eq!(n1.presence_counts(room).await.unwrap(), (3, 2));
        assert_eq!(
            n1.presence_leave(room, "c_6").await.unwrap(),
            left(user, false, false)
        );
        assert_eq!(
            n2.presence_leave(room, "c_7").await.unwrap(),
            left(user, false, true)
        );
        assert_eq!(
            n2.presence_leave(room, "c_x").await.unwrap(),
            left("user", true, true)
        );
    }
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_joins_and_leaves_tell_each_transition_to_exactly_one() {
    let redis = RedisServer::start().await;
    let [(n1, _l1), (n2, _l2)] = two_nodes(&redis).await;
    let room = "race";
    const EACH: usize = 20;
    let joins = |node: Backplane, name: &'static str| async move {
        let mut calls = Vec::new();
        for i in 0..EACH {
            let node = node.clone();
            calls.push(tokio::spawn(async move {
                node.presence_join(room, &member(&format!("{name}_{i}"), "u", name))
                    .await
                    .unwrap()
            }));
        }
        let mut out = Vec::new();
        for call in calls {
            out.push(call.await.unwrap());
        }
        out
    };
    let (a, b) = tokio::join!(joins(n1.clone(), "n1"), joins(n2.clone(), "n2"));
    let all: Vec<Joined> = a.into_iter().chain(b).collect();
    assert_eq!(all.iter().filter(|j| j.channel_was_empty).count(), 1);
    assert_eq!(all.iter().filter(|j| j.user_was_absent).count(), 1);
    assert_eq!(
        n1.presence_counts(room).await.unwrap(),
        (2 * EACH as u64, 1)
    );

    let leaves = |node: Backplane, name: &'static str| async move {
        let mut calls = Vec::new();
        for i in 0..EACH {
            let node = node.clone();
            calls.push(tokio::spawn(async move {
                node.presence_leave(room, &format!("{name}_{i}"))
                    .await
                    .unwrap()
                    .expect("a member of this node")
            }));
        }
        let mut out = Vec::new();
        for call in calls {
            out.push(call.await.unwrap());
        }
        out
    };
    let (a, b) = tokio::join!(leaves(n1.clone(), "n1"), leaves(n2.clone(), "n2"));
    let all: Vec<Left> = a.into_iter().chain(b).collect();
    assert_eq!(all.iter().filter(|l| l.channel_now_empty).count(), 1);
    assert_eq!(all.iter().filter(|l| l.user_now_absent).count(), 1);
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_listed_by_prefix_with_their_counts_from_every_node() {
    let redis = RedisServer::start().await;
    let [(n1, _l1), (n2, _l2)] = two_nodes(&redis).await;
    n1.presence_join("app:presence-a", &member("c_1", "u", "n1"))
        .await
        .unwrap();
    n2.presence_join("app:presence-a", &member("c_2", "u", "n2"))
        .await
        .unwrap();
    n2.presence_join("app:presence-a", &member("c_3", "v", "n2"))
        .await
        .unwrap();
    n2.presence_join("app:public", &member("c_4", "", "n2"))
        .await
        .unwrap();
    n1.presence_join("other:x", &member("c_5", "w", "n1"))
        .await
        .unwrap();
    n1.presence_join("app:left", &member("c_6", "w", "n1"))
        .await
        .unwrap();
    n1.presence_leave("app:left", "c_6").await.unwrap();

    let want = vec![
        ("app:presence-a".to_owned(), 3, 2),
        ("app:public".to_owned(), 1, 0),
    ];
    // In a task of its own, as the gateway asks (the reads are `Send`).
    let asked = n1.clone();
    let listed = tokio::spawn(async move { asked.presence_channels("app:").await.unwrap() });
    assert_eq!(listed.await.unwrap(), want);
    let asked = n1.clone();
    let read = tokio::spawn(async move {
        let counts = asked.presence_counts("app:presence-a").await.unwrap();
        (
            counts,
            asked.presence("app:presence-a").await.unwrap().len(),
        )
    });
    assert_eq!(read.await.unwrap(), ((3, 2), 3));
    assert_eq!(n1.presence_channels("app:").await.unwrap(), want);
    assert_eq!(n2.presence_channels("app:").await.unwrap(), want);
    assert_eq!(n1.presence_channels("").await.unwrap().len(), 3);
    assert!(n1.presence_channels("nothing:").await.unwrap().is_empty());

    // Redis loses everything: the next heartbeats index the channels again.
    redis.flushall().await;
    eventually(
        "the channels back in the list",
        Duration::from_secs(5),
        || async {
            match n1.presence_channels("app:").await {
                Ok(c) if c == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // A channel left empty leaves the index once its members' expiry has passed.
    for (node, conn) in [(&n1, "c_1"), (&n2, "c_2"), (&n2, "c_3")] {
        node.presence_leave("app:presence-a", conn).await.unwrap();
    }
    assert_eq!(
        n1.presence_channels("app:").await.unwrap(),
        [("app:public".to_owned(), 1, 0)]
    );
    eventually(
        "the empty channel out of the index",
        Duration::from_secs(5),
        || async {
            let indexed: Vec<String> = redis
                .query(
                    ::redis::cmd("ZRANGE")
                        .arg("switchboard:presence-index")
                        .arg(0)
                        .arg(-1),
                )
                .await;
            if indexed.iter().any(|c| c == "app:presence-a") {
                Err(format!("{indexed:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    n1.shutdown().await;
    n2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_members_of_a_node_that_died_depart_once_with_the_right_flags() {
    let redis = RedisServer::start().await;
    let [(n1, _l1), (n2, _l2)] = two_nodes(&redis).await;
    let mut seen_by_n1 = n1.take_departures().expect("taken once");
    assert!(n1.take_departures().is_none());
    let mut seen_by_n2 = n2.take_departures().unwrap();

    // `room` has members on both nodes; `solo` only on n2, so no live node
    // refreshes it once n2 is gone: the sweep finds it.
    n1.presence_join("room", &member("c_1", "u", "n1"))
        .await
        .unwrap();
    n2.presence_join("room", &member("c_2", "u", "n2"))
        .await
        .unwrap();
    n2.presence_join("room", &member("c_3", "v", "n2"))
        .await
        .unwrap();
    n2.presence_join("room", &member("c_4", "v", "n2"))
        .await
        .unwrap();
    n2.presence_join("solo", &member("c_5", "x", "n2"))
        .await
        .unwrap();
    n2.presence_join("solo", &member("c_6", "", "n2"))
        .await
        .unwrap();

    // n2 dies: it stops, its members stay in Redis and expire.
    n2.shutdown().await;
    let got = departures(&mut seen_by_n1, 5).await;
    // In the order each purge removed them (by expiry, then entry text).
    let of = |channel: &str| -> Vec<Departure> {
        got.iter()
            .filter(|d| d.channel == channel)
            .cloned()
            .collect()
    };
    assert_eq!(
        of("room"),
        [
            departure("room", "u", false, false),
            departure("room", "v", false, false),
            departure("room", "v", false, true)
        ],
        "u is still on n1; only v's last connection says v is gone"
    );
    assert_eq!(
        of("solo"),
        [
            departure("solo", "x", false, true),
            departure("solo", "", true, false)
        ],
        "the last one says solo is empty"
    );

    assert_eq!(n1.presence_counts("room").await.unwrap(), (1, 1));
    assert_eq!(n1.presence_counts("solo").await.unwrap(), (0, 0));
    assert!(
        n1.presence_channels("")
            .await
            .unwrap()
            .iter()
            .all(|c| c.0 != "solo")
    );
    // Each departure is reported once. A marker member of a third node that
    // dies now expires some heartbeats later: its departure is the next
    // thing n1 reports, and no repeat of the ones above came before it.
    let (n3, _l3) = start(&redis, "n3");
    n3.claim_node_id().await.unwrap();
    n3.presence_join("marker", &member("c_7", "m", "n3"))
        .await
        .unwrap();
    n3.shutdown().await;
    assert_eq!(
        departures(&mut seen_by_n1, 1).await,
        [departure("marker", "m", true, true)],
        "the marker, and no repeat before it"
    );
    assert!(seen_by_n1.try_recv().is_err(), "nothing more");
    assert!(
        seen_by_n2.try_recv().is_err(),
        "the dead node reports nothing"
    );
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_entries_read_and_superseded_ones_depart() {
    let redis = RedisServer::start().await;
    let [(n1, _l1), (n2, _l2)] = two_nodes(&redis).await;
    let mut seen = n1.take_departures().unwrap();
    let key = "switchboard:members:{x}";
    // An entry of the format before `info` (of a node that has no registry
    // entry: its own expiry decides), and one of an earlier process of n2.
    let added: i64 = redis
        .query(
            ::redis::cmd("ZADD")
                .arg(key)
                .arg(99_999_999_999_999u64)
                .arg(r#"{"conn":"c_old","user":"u","node":"ghost","inc":"i0"}"#)
                .arg(99_999_999_999_999u64)
                .arg(r#"{"conn":"c_prev","user":"w","node":"n2","inc":"earlier"}"#),
        )
        .await;
    assert_eq!(added, 2);

    let members = n1.presence("x").await.unwrap();
    assert_eq!(
        members,
        [PresenceMember {
            conn: "c_old".into(),
            user: "u".into(),
            node: "ghost".into(),
            info: String::new(),
        }]
    );
    assert_eq!(
        departures(&mut seen, 1).await,
        [departure("x", "w", false, true)],
        "n2's earlier process no longer holds the id"
    );
    assert_eq!(n1.presence_counts("x").await.unwrap(), (1, 1));
    assert_eq!(
        n1.presence_join("x", &member("c_1", "u", "n1"))
            .await
            .unwrap(),
        joined(false, false),
        "u is there in the older entry"
    );
    n1.shutdown().await;
    n2.shutdown().await;
}
