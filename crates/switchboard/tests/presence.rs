//! Presence: who is subscribed to a channel, on every node, by command and
//! API; entries of a SIGKILLed node expiring with the registry; join and leave pushes;
//! `forbidden` where the namespace has presence off.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_testkit::jwt::{SECRET, user_token};
use switchboard_testkit::{Node, RedisServer, WsClient, eventually, unique_channel};

/// Nodes accept HS256 tokens and anonymous connections alike.
const AUTH: [&str; 4] = ["--jwt-secret", SECRET, "--allow-anonymous", "true"];

/// One presence entry: (conn, user, node).
type Member = (String, String, String);

/// The sorted members of a `presence` reply or API answer.
fn members_of(reply: &Value) -> Vec<Member> {
    let mut members: Vec<Member> = reply["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members array: {reply}"))
        .iter()
        .map(|m| {
            let field = |k: &str| {
                m[k].as_str()
                    .unwrap_or_else(|| panic!("member without a string {k}: {m}"))
                    .to_owned()
            };
            (field("conn"), field("user"), field("node"))
        })
        .collect();
    members.sort();
    members
}

/// This client's expected entry.
fn member(client: &WsClient) -> Member {
    (
        client.conn_id(),
        client.welcome["user"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        client.welcome["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Sorted entries of these clients.
fn members(clients: &[&WsClient]) -> Vec<Member> {
    let mut m: Vec<Member> = clients.iter().map(|c| member(c)).collect();
    m.sort();
    m
}

/// Waits until `GET /api/v1/channels/{channel}/presence` on `node` lists exactly `want`.
async fn wait_presence(node: &Node, channel: &str, want: &[Member], timeout: Duration) {
    eventually(
        &format!("presence of {channel} on {} to be {want:?}", node.id()),
        timeout,
        || async {
            let response = node.presence_api(channel).await;
            if response.status != 200 {
                return Err(format!("{} {}", response.status, response.text()));
            }
            let body = response.json();
            if body["channel"] != channel {
                return Err(body.to_string());
            }
            let got = members_of(&body);
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await
}

/// Asserts the `presence` command of `client` lists exactly `want`.
async fn assert_presence_command(client: &mut WsClient, channel: &str, want: &[Member]) {
    let reply = client.presence(channel).await;
    assert_eq!(reply["type"], "presence", "{}: {reply}", client.describe());
    assert_eq!(reply["channel"], channel, "{reply}");
    assert_eq!(
        members_of(&reply),
        want,
        "{}: presence of {channel}",
        client.describe()
    );
}

/// The exact join or leave push.
fn event(kind: &str, channel: &str, client: &WsClient) -> Value {
    let (conn, user, _node) = member(client);
    json!({"type": kind, "channel": channel, "conn": conn, "user": user})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_members_from_every_node() {
    let redis = RedisServer::start().await;
    let a = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .args(AUTH)
        .start()
        .await;
    let b = Node::builder("node-b")
        .redis(&redis)
        .namespaces()
        .args(AUTH)
        .start()
        .await;
    let c = Node::builder("node-c")
        .redis(&redis)
        .namespaces()
        .args(AUTH)
        .start()
        .await;
    let ch = unique_channel("pres:room");

    let mut alice = WsClient::connect_with_token(&a.ws_url(), &user_token("alice")).await;
    let mut anon = WsClient::connect_json(&b.ws_url()).await;
    let mut bob = WsClient::connect_with_token(&c.ws_url(), &user_token("bob")).await;
    let mut alice2 = WsClient::connect_with_token(&c.ws_url(), &user_token("alice")).await;
    assert_eq!(alice.welcome["user"], "alice");
    assert_eq!(anon.welcome["user"], "");
    // Connected but not subscribed: not a member.
    let mut onlooker = WsClient::connect_json(&a.ws_url()).await;
    onlooker.subscribe(&unique_channel("pres:elsewhere")).await;

    for client in [&mut alice, &mut anon, &mut bob, &mut alice2] {
        client.subscribe(&ch).await;
    }
    let everyone = members(&[&alice, &anon, &bob, &alice2]);
    for node in [&a, &b, &c] {
        wait_presence(node, &ch, &everyone, Duration::from_secs(5)).await;
    }
    for client in [&mut alice, &mut anon, &mut bob, &mut alice2] {
        assert_presence_command(client, &ch, &everyone).await;
    }

    // Unsubscribing leaves the list.
    bob.unsubscribe(&ch).await;
    let without_bob = members(&[&alice, &anon, &alice2]);
    for node in [&a, &b, &c] {
        wait_presence(node, &ch, &without_bob, Duration::from_secs(5)).await;
    }
    assert_presence_command(&mut anon, &ch, &without_bob).await;

    // Disconnecting leaves it too, however abruptly.
    drop(alice2);
    let left = members(&[&alice, &anon]);
    for node in [&a, &b, &c] {
        wait_presence(node, &ch, &left, Duration::from_secs(5)).await;
    }
    assert_presence_command(&mut alice, &ch, &left).await;
    // No join/leave pushes in a namespace without join_leave.
    alice.ping_pong().await;
    anon.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_killed_node_expires_with_the_registry() {
    let redis = RedisServer::start().await;
    let fast = ["--registry-interval", "0.2"];
    let a = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .args(fast)
        .start()
        .await;
    let mut b = Node::builder("node-b")
        .redis(&redis)
        .namespaces()
        .args(fast)
        .start()
        .await;
    let ch = unique_channel("pres:mortal");

    let mut on_a = WsClient::connect_json(&a.ws_url()).await;
    let mut on_b = WsClient::connect_json(&b.ws_url()).await;
    let mut on_b2 = WsClient::connect_json(&b.ws_url()).await;
    for client in [&mut on_a, &mut on_b, &mut on_b2] {
        client.subscribe(&ch).await;
    }
    wait_presence(
        &a,
        &ch,
        &members(&[&on_a, &on_b, &on_b2]),
        Duration::from_secs(5),
    )
    .await;

    // node-b dies without cleaning up; once it drops out of the registry (3 × 0.2 s)
    // its entries go.
    b.kill().await;
    drop((on_b, on_b2));
    let survivors = members(&[&on_a]);
    wait_presence(&a, &ch, &survivors, Duration::from_secs(5)).await;
    assert_presence_command(&mut on_a, &ch, &survivors).await;
    eventually(
        "node-a to drop node-b from the cluster too",
        Duration::from_secs(5),
        || async {
            let ids = a.cluster_ids().await;
            if ids == ["node-a"] {
                Ok(())
            } else {
                Err(format!("{ids:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_reach_every_subscriber_on_every_node() {
    let redis = RedisServer::start().await;
    let a = Node::builder("node-a")
        .redis(&redis)
        .namespaces()
        .args(AUTH)
        .start()
        .await;
    let b = Node::builder("node-b")
        .redis(&redis)
        .namespaces()
        .args(AUTH)
        .start()
        .await;
    // `chat` has presence and join_leave.
    let ch = unique_channel("chat:events");

    // The first subscriber sees its own join, after its `subscribed`.
    let mut x = WsClient::connect_with_token(&a.ws_url(), &user_token("alice")).await;
    let id = x.next_id();
    x.send_json(&json!({"type": "subscribe", "id": id, "channel": ch}))
        .await;
    let reply = x.recv_json().await;
    assert_eq!(
        (&reply["type"], &reply["id"]),
        (&json!("subscribed"), &json!(id)),
        "`subscribed` comes before the own join: {reply}"
    );
    assert_eq!(x.recv_json().await, event("join", &ch, &x));

    // A subscriber on the other node: both see its join.
    let mut y = WsClient::connect_json(&b.ws_url()).await;
    y.subscribe(&ch).await;
    assert_eq!(y.recv_json().await, event("join", &ch, &y));
    assert_eq!(x.recv_json().await, event("join", &ch, &y));

    // A third, on node-a again.
    let mut z = WsClient::connect_with_token(&a.ws_url(), &user_token("bob")).await;
    z.subscribe(&ch).await;
    let join_z = event("join", &ch, &z);
    for client in [&mut z, &mut x, &mut y] {
        assert_eq!(client.recv_json().await, join_z, "{}", client.describe());
    }

    // y unsubscribes: the others see it leave.
    y.unsubscribe(&ch).await;
    let leave_y = event("leave", &ch, &y);
    for client in [&mut x, &mut z] {
        assert_eq!(client.recv_json().await, leave_y, "{}", client.describe());
    }
    // z disconnects without a word: x sees it leave.
    let leave_z = event("leave", &ch, &z);
    drop(z);
    assert_eq!(x.recv_json().await, leave_z);
    x.ping_pong().await;

    // Presence agrees.
    wait_presence(&b, &ch, &members(&[&x]), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_join_or_leave_without_join_leave() {
    let node = Node::builder("node-a").namespaces().start().await;
    // `pres`: presence on, join_leave off.
    let ch = unique_channel("pres:quiet");
    let mut first = WsClient::connect_json(&node.ws_url()).await;
    first.subscribe(&ch).await;
    first.ping_pong().await;
    let mut second = WsClient::connect_json(&node.ws_url()).await;
    second.subscribe(&ch).await;
    second.ping_pong().await;
    second.unsubscribe(&ch).await;
    drop(second);
    wait_presence(&node, &ch, &members(&[&first]), Duration::from_secs(5)).await;
    first.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_on_the_in_process_backplane() {
    let node = Node::builder("node-memory").namespaces().start().await;
    let ch = unique_channel("chat:local");
    let mut x = WsClient::connect_json(&node.ws_url()).await;
    x.subscribe(&ch).await;
    assert_eq!(x.recv_json().await, event("join", &ch, &x));
    let mut y = WsClient::connect_json(&node.ws_url()).await;
    y.subscribe(&ch).await;
    assert_eq!(y.recv_json().await, event("join", &ch, &y));
    assert_eq!(x.recv_json().await, event("join", &ch, &y));
    let both = members(&[&x, &y]);
    assert_eq!(both[0].2, "node-memory");
    wait_presence(&node, &ch, &both, Duration::from_secs(5)).await;
    assert_presence_command(&mut y, &ch, &both).await;

    let leave_y = event("leave", &ch, &y);
    drop(y);
    assert_eq!(x.recv_json().await, leave_y);
    wait_presence(&node, &ch, &members(&[&x]), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_forbidden_where_it_is_off() {
    let node = Node::builder("node-a").namespaces().start().await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    // `hist` keeps history but no presence; `plain` is in no namespace.
    for ch in [unique_channel("hist:nopresence"), unique_channel("plain")] {
        client.subscribe(&ch).await;
        let reply = client.presence(&ch).await;
        assert_eq!(
            (&reply["type"], &reply["code"]),
            (&json!("error"), &json!("forbidden")),
            "presence of {ch}: {reply}"
        );
        let response = node.presence_api(&ch).await;
        assert_eq!(
            response.status,
            403,
            "GET presence of {ch}: {}",
            response.text()
        );
        assert_eq!(response.error_code(), "forbidden");
    }
    // A bad channel name is a 400.
    let response = node.presence_api("bad!name").await;
    assert_eq!(
        response.status,
        400,
        "GET presence of a bad name: {}",
        response.text()
    );
    client.ping_pong().await;
}
