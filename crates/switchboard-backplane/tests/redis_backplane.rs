//! The Redis backplane against a real `redis-server` on a free port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_backplane::envelope::{PayloadEncoding, for_channel};
use switchboard_backplane::redis::{RedisBackplane, RedisConfig};
use switchboard_backplane::{Backplane, BackplaneError, Inbox, InboxLane, NodeStats, Topic};

/// A redis-server of this test's own, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("switchboard-backplane-test-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            child: None,
            port,
            dir,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server not found: apt-get install -y redis-server");
        self.child = Some(child);
        wait_for("redis-server to answer PING", || {
            self.cli(&["PING"]) == "PONG"
        });
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn numsub(&self, channel: &str) -> String {
        let name = format!("switchboard:ch:{{{channel}}}");
        self.cli(&["PUBSUB", "NUMSUB", &name])
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_owned()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A node's backplane, and the Redis implementation behind it (for its figures).
fn start(redis: &Redis, node: &str) -> (Backplane, Arc<RedisBackplane>, Vec<InboxLane>) {
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
    tokio::time::timeout(Duration::from_secs(5), lane.recv())
        .await
        .expect("an envelope within 5 s")
        .expect("inbox open")
        .payload
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
    let redis = Redis::start();
    let (backplane, inner, mut lanes) = start(&redis, "a");
    wait_for("the backplane to connect", || backplane.is_up());

    backplane.subscribe(Topic::Channel("news")).await.unwrap();
    assert_eq!(redis.numsub("news"), "1");
    backplane
        .publish(&envelope("news", b"one"), None)
        .await
        .unwrap();
    assert_eq!(&received(&mut lanes[0]).await[..], b"one");

    // Many health checks later the connection is still the first one: a
    // subscribed connection answers PING with a list, and that is healthy.
    let from = inner.pings_answered();
    wait_for("five answered PINGs", || inner.pings_answered() >= from + 5);
    assert_eq!(backplane.connection_generation(), 1);

    backplane.unsubscribe(Topic::Channel("news")).await.unwrap();
    assert_eq!(redis.numsub("news"), "0");

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
    let mut redis = Redis::start();
    let (backplane, _, mut lanes) = start(&redis, "a");
    wait_for("the backplane to connect", || backplane.is_up());
    backplane.subscribe(Topic::Channel("a")).await.unwrap();
    backplane.subscribe(Topic::Channel("b")).await.unwrap();

    redis.kill();
    wait_for("the backplane to notice", || !backplane.is_up());
    assert!(matches!(
        backplane.publish(&envelope("a", b"lost"), None).await,
        Err(BackplaneError::Unavailable(_))
    ));
    assert!(matches!(
        backplane.subscribe(Topic::Channel("c")).await,
        Err(BackplaneError::Unavailable(_))
    ));

    redis.spawn();
    wait_for("the backplane to reconnect", || backplane.is_up());
    assert_eq!(backplane.connection_generation(), 2);
    assert_eq!(
        (redis.numsub("a"), redis.numsub("b"), redis.numsub("c")),
        ("1".into(), "1".into(), "0".into())
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
    let redis = Redis::start();
    let (a, _, _a_lanes) = start(&redis, "a");
    let (b, _, mut b_lanes) = start(&redis, "b");
    wait_for("both to connect", || a.is_up() && b.is_up());
    b.subscribe(Topic::Channel("x")).await.unwrap();
    a.publish(&envelope("x", b"from a"), None).await.unwrap();
    assert_eq!(&received(&mut b_lanes[0]).await[..], b"from a");
    let mut ids = Vec::new();
    for _ in 0..500 {
        ids = a.nodes().await.unwrap().into_iter().map(|n| n.id).collect();
        if ids.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ids, ["a", "b"]);
    a.shutdown().await;
    b.shutdown().await;
}
