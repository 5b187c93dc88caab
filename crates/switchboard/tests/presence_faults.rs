//! Presence that tells the truth under faults, and node ids held by one live
//! process at a time.
//!
//! Every node here runs with a 0.5 s registry interval, so the documented bound
//! (three registry intervals) is 1.5 s; each test waits for the truth with some
//! slack for a loaded machine on top, and asserts how long convergence took.

use std::time::Duration;

use serde_json::Value;
use switchboard_testkit::{
    Node, NodeBuilder, RedisServer, WsClient, eventually, run_switchboard, unique_channel,
};
use tokio::time::Instant;

/// The registry interval of every node in these tests, in seconds (flag text and value).
const INTERVAL: &str = "0.5";
const INTERVAL_S: f64 = 0.5;

/// The documented bound on convergence: three registry intervals.
fn bound() -> Duration {
    Duration::from_secs_f64(3.0 * INTERVAL_S)
}

/// Slack for process scheduling and Redis round trips on a busy machine.
const SLACK: Duration = Duration::from_secs(3);

/// The exit code of a node refused for a node id held by another live node.
const EXIT_CONFIG: i32 = 64;

fn node(redis: &RedisServer, id: &str) -> NodeBuilder {
    Node::builder(id)
        .redis(redis)
        .namespaces()
        .args(["--registry-interval", INTERVAL])
}

/// The sorted connection ids of a presence answer.
fn conns_of(body: &Value) -> Vec<String> {
    let mut conns: Vec<String> = body["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members array: {body}"))
        .iter()
        .map(|m| m["conn"].as_str().unwrap_or_default().to_owned())
        .collect();
    conns.sort();
    conns
}

fn conns(clients: &[&WsClient]) -> Vec<String> {
    let mut c: Vec<String> = clients.iter().map(|c| c.conn_id()).collect();
    c.sort();
    c
}

/// Waits until `GET /api/v1/channels/{channel}/presence` on `node` lists exactly
/// `want`; returns how long that took.
async fn wait_presence(node: &Node, channel: &str, want: &[String], timeout: Duration) -> Duration {
    let start = Instant::now();
    eventually(
        &format!("presence of {channel} on {} to be {want:?}", node.id()),
        timeout,
        || async {
            let response = node.presence_api(channel).await;
            if response.status != 200 {
                return Err(format!("{} {}", response.status, response.text()));
            }
            let got = conns_of(&response.json());
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_its_id_leaves_no_dead_members() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "pf-a").start().await;
    let mut b = node(&redis, "pf-b").start().await;
    let ch = unique_channel("pres:restart");

    let mut on_a = WsClient::connect_json(&a.ws_url()).await;
    let mut on_b = WsClient::connect_json(&b.ws_url()).await;
    on_a.subscribe(&ch).await;
    on_b.subscribe(&ch).await;
    wait_presence(&a, &ch, &conns(&[&on_a, &on_b]), SLACK).await;

    // The pod dies and comes back under the same id (its hostname) at once: a
    // dead predecessor is no duplicate, so it starts.
    b.kill().await;
    let killed = Instant::now();
    drop(on_b);
    let b2 = node(&redis, "pf-b").start().await;
    let mut on_b2 = WsClient::connect_json(&b2.ws_url()).await;
    on_b2.subscribe(&ch).await;

    let want = conns(&[&on_a, &on_b2]);
    wait_presence(&a, &ch, &want, bound() + SLACK).await;
    wait_presence(&b2, &ch, &want, SLACK).await;
    let took = killed.elapsed();
    assert!(
        took <= bound() + SLACK,
        "dead members listed for {took:?} after the kill"
    );
    assert_eq!(a.cluster_ids().await, ["pf-a", "pf-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_leaves_while_redis_hangs_is_gone_once_it_resumes() {
    let redis = RedisServer::start().await;
    let a = node(&redis, "pf-a").start().await;
    let b = node(&redis, "pf-b").start().await;
    let ch = unique_channel("pres:hang");

    let mut on_a = WsClient::connect_json(&a.ws_url()).await;
    // `stays` keeps node-b subscribed in Redis, so the leave is about presence alone.
    let mut stays = WsClient::connect_json(&b.ws_url()).await;
    let mut leaver = WsClient::connect_json(&b.ws_url()).await;
    for client in [&mut on_a, &mut stays, &mut leaver] {
        client.subscribe(&ch).await;
    }
    wait_presence(&a, &ch, &conns(&[&on_a, &stays, &leaver]), SLACK).await;

    let failed = [("op", "presence")];
    let before = b
        .metric_with("switchboard_backplane_errors_total", &failed)
        .await;
    redis.pause();
    drop(leaver);
    // The removal has been tried, and has failed, while Redis hung.
    b.wait_metric_with(
        "switchboard_backplane_errors_total",
        &failed,
        "to count the failed presence removal",
        |v| v > before,
    )
    .await;
    redis.resume();
    let resumed = Instant::now();

    let took = wait_presence(&a, &ch, &conns(&[&on_a, &stays]), bound() + SLACK).await;
    assert!(
        took <= bound() + SLACK,
        "the leaver was listed for {took:?} after Redis resumed"
    );
    wait_presence(&b, &ch, &conns(&[&on_a, &stays]), SLACK).await;
    assert!(resumed.elapsed() < bound() + 2 * SLACK);
    on_a.ping_pong().await;
    stays.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_members_come_back_after_flushall_and_after_an_empty_restart() {
    let mut redis = RedisServer::start().await;
    let a = node(&redis, "pf-a").start().await;
    let b = node(&redis, "pf-b").start().await;
    let ch = unique_channel("pres:flush");

    let mut on_a = WsClient::connect_json(&a.ws_url()).await;
    let mut on_b = WsClient::connect_json(&b.ws_url()).await;
    on_a.subscribe(&ch).await;
    on_b.subscribe(&ch).await;
    let everyone = conns(&[&on_a, &on_b]);
    wait_presence(&a, &ch, &everyone, SLACK).await;

    redis.flushall().await;
    let took = wait_presence(&a, &ch, &everyone, bound() + SLACK).await;
    assert!(took <= bound() + SLACK, "FLUSHALL: back after {took:?}");
    assert_eq!(
        b.cluster_ids().await,
        ["pf-a", "pf-b"],
        "the registry heals too"
    );

    // A restart without data: the same, once the nodes are connected again.
    redis.restart().await;
    a.wait_ready().await;
    b.wait_ready().await;
    let took = wait_presence(&b, &ch, &everyone, bound() + SLACK).await;
    assert!(took <= bound() + SLACK, "restart: back after {took:?}");
    wait_presence(&a, &ch, &everyone, SLACK).await;
    // The channel keeps no history: both were told messages may have been missed.
    on_a.expect_missed(&[&ch], "backplane").await;
    on_b.expect_missed(&[&ch], "backplane").await;
    on_a.ping_pong().await;
    on_b.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_node_with_the_same_id_refuses_to_start() {
    let redis = RedisServer::start().await;
    let first = node(&redis, "pf-dup").start().await;
    let url = redis.url();
    let out = run_switchboard(
        &[
            "--redis-url",
            &url,
            "--node-id",
            "pf-dup",
            "--registry-interval",
            INTERVAL,
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "exit status; stderr:\n{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("listening"),
        "it never listened: {}",
        out.stdout
    );
    for needle in ["\"pf-dup\"", "held by another live node", "--node-id"] {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} in stderr:\n{}",
            out.stderr
        );
    }
    // The first one is untouched.
    first.wait_ready().await;
    assert_eq!(first.cluster_ids().await, ["pf-dup"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_finds_its_id_taken_while_running_stops_loudly() {
    let redis = RedisServer::start().await;
    let mut frozen = node(&redis, "pf-twin")
        .args(["--drain-timeout", "2"])
        .start()
        .await;
    let observer = node(&redis, "pf-observer").start().await;
    let ch = unique_channel("pres:twin");
    let mut old_member = WsClient::connect_json(&frozen.ws_url()).await;
    old_member.subscribe(&ch).await;

    // Frozen for longer than the claim window, it looks dead: a new process
    // takes the id over.
    frozen.pause();
    let successor = node(&redis, "pf-twin").start().await;
    let mut new_member = WsClient::connect_json(&successor.ws_url()).await;
    new_member.subscribe(&ch).await;
    wait_presence(&observer, &ch, &conns(&[&new_member]), bound() + SLACK).await;

    // Thawed, its next heartbeat finds the id held by the successor: it stops
    // with the configuration exit code instead of fighting over the id.
    frozen.resume();
    let status = frozen.wait_exit(Duration::from_secs(40)).await;
    assert_eq!(
        status.code(),
        Some(EXIT_CONFIG),
        "stderr:\n{}",
        frozen.stderr()
    );
    let stderr = frozen.stderr();
    assert!(
        stderr.contains("pf-twin") && stderr.contains("held by another live node"),
        "stderr:\n{stderr}"
    );
    // The successor keeps the id, its entry and its members.
    successor.wait_ready().await;
    eventually("the successor to stay in the cluster", SLACK, || async {
        let ids = observer.cluster_ids().await;
        if ids == ["pf-observer", "pf-twin"] {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    wait_presence(&observer, &ch, &conns(&[&new_member]), SLACK).await;
    new_member.ping_pong().await;
}
