//! Users: `POST /api/v1/send` reaches every connection of one user on every
//! node and nobody else; `POST /api/v1/disconnect` by user or by connection closes
//! them with 4100 wherever they are.

use serde_json::{Value, json};
use switchboard_testkit::jwt::{SECRET, user_token};
use switchboard_testkit::{HttpResponse, Node, RedisServer, WsClient, unique_channel};

/// Nodes accept HS256 tokens and anonymous connections alike.
const AUTH: [&str; 4] = ["--jwt-secret", SECRET, "--allow-anonymous", "true"];

async fn cluster(redis: &RedisServer) -> [Node; 3] {
    [
        Node::builder("node-a")
            .redis(redis)
            .args(AUTH)
            .start()
            .await,
        Node::builder("node-b")
            .redis(redis)
            .args(AUTH)
            .start()
            .await,
        Node::builder("node-c")
            .redis(redis)
            .args(AUTH)
            .start()
            .await,
    ]
}

async fn as_user(node: &Node, user: &str) -> WsClient {
    let client = WsClient::connect_with_token(&node.ws_url(), &user_token(user)).await;
    assert_eq!(client.welcome["user"], user, "welcome: {}", client.welcome);
    client
}

/// Asserts the API answer is `200 {}`.
fn assert_ok_empty(response: &HttpResponse, what: &str) {
    assert_eq!(response.status, 200, "{what}: {}", response.text());
    assert_eq!(response.json(), json!({}), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_every_connection_of_the_user_on_every_node() {
    let redis = RedisServer::start().await;
    let [a, b, c] = cluster(&redis).await;
    let mut alice = vec![
        as_user(&a, "alice").await,
        as_user(&a, "alice").await,
        as_user(&b, "alice").await,
    ];
    let mut alice_proto =
        WsClient::connect_proto(&format!("{}?token={}", c.ws_url(), user_token("alice"))).await;
    let mut bob = as_user(&b, "bob").await;
    // Someone whose user id merely starts like alice's.
    let mut alicia = as_user(&c, "alice2").await;
    let mut anon = WsClient::connect_json(&c.ws_url()).await;
    // A subscriber of a channel named like the user sees nothing either.
    anon.subscribe("alice").await;

    assert_ok_empty(
        &c.send_to_user("alice", json!({"hi": 1})).await,
        "send to alice",
    );
    let want = json!({"type": "message", "user": "alice", "data": {"hi": 1}});
    for client in &mut alice {
        assert_eq!(client.recv_json().await, want, "{}", client.describe());
    }
    let m = alice_proto.recv_frame_message().await;
    assert_eq!(m.user, "alice", "proto user message {m:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&m.data).expect("JSON bytes"),
        json!({"hi": 1})
    );
    for client in [&mut bob, &mut alicia, &mut anon] {
        client.ping_pong().await;
    }

    // Another user, from another node.
    assert_ok_empty(&a.send_to_user("bob", json!("psst")).await, "send to bob");
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "message", "user": "bob", "data": "psst"})
    );
    for client in alice.iter_mut().chain([&mut alicia, &mut anon]) {
        client.ping_pong().await;
    }
    alice_proto.proto_ping_pong().await;

    // Nobody connected as that user: still accepted, nothing delivered.
    assert_ok_empty(&b.send_to_user("nobody", json!(1)).await, "send to nobody");
    // An empty or missing user: 400.
    for body in [json!({"user": "", "data": 1}), json!({"data": 1})] {
        let response = b.api("POST", "/api/v1/send", Some(&body)).await;
        assert_eq!(response.status, 400, "send {body}: {}", response.text());
        assert_eq!(response.error_code(), "bad_request");
    }
    for client in alice.iter_mut().chain([&mut bob, &mut alicia, &mut anon]) {
        client.ping_pong().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_on_the_in_process_backplane() {
    let node = Node::builder("node-memory").args(AUTH).start().await;
    let mut alice1 = as_user(&node, "alice").await;
    let mut alice2 = WsClient::connect_with_bearer(&node.ws_url(), &user_token("alice")).await;
    let mut bob = as_user(&node, "bob").await;
    assert_ok_empty(&node.send_to_user("alice", json!([1, 2])).await, "send");
    let want = json!({"type": "message", "user": "alice", "data": [1, 2]});
    assert_eq!(alice1.recv_json().await, want);
    assert_eq!(alice2.recv_json().await, want);
    bob.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_disconnect_by_user_and_by_conn_across_nodes() {
    let redis = RedisServer::start().await;
    let [a, b, c] = cluster(&redis).await;
    let ch = unique_channel("still-here");
    let mut alice_a = as_user(&a, "alice").await;
    let mut alice_b = as_user(&b, "alice").await;
    let mut bob = as_user(&a, "bob").await;
    let mut carol = as_user(&b, "carol").await;
    let mut anon = WsClient::connect_json(&c.ws_url()).await;
    bob.subscribe(&ch).await;

    // By user, from a node where alice has one of her two connections.
    assert_ok_empty(
        &a.disconnect_api(json!({"user": "alice"})).await,
        "disconnect alice",
    );
    for client in [&mut alice_a, &mut alice_b] {
        let push = client.expect_disconnect(4100).await;
        assert_eq!(
            push,
            json!({"type": "disconnect", "code": 4100, "reason": "disconnected by the server API", "reconnect": false}),
            "{}",
            client.describe()
        );
    }
    for client in [&mut bob, &mut carol, &mut anon] {
        client.ping_pong().await;
    }

    // By connection, from a node the connection is not on.
    let carol_conn = carol.conn_id();
    assert_ok_empty(
        &c.disconnect_api(json!({"conn": carol_conn})).await,
        "disconnect carol's connection",
    );
    let push = carol.expect_disconnect(4100).await;
    assert_eq!(push["reconnect"], false, "{push}");
    // An anonymous connection, by connection, from its own node.
    let anon_conn = anon.conn_id();
    assert_ok_empty(
        &c.disconnect_api(json!({"conn": anon_conn})).await,
        "disconnect the anonymous connection",
    );
    anon.expect_disconnect(4100).await;

    // Unknown targets: accepted, nothing happens.
    assert_ok_empty(&b.disconnect_api(json!({"user": "nobody"})).await, "nobody");
    assert_ok_empty(
        &b.disconnect_api(json!({"conn": "c_01AAAAAAAAAAAAAAAAAAAAAAAA"}))
            .await,
        "no such connection",
    );

    // Bob was never touched and still receives.
    bob.ping_pong().await;
    b.publish(&ch, json!("for bob")).await;
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "message", "channel": ch, "data": "for bob"})
    );
    // Being disconnected is no ban: alice may come back.
    let mut again = as_user(&c, "alice").await;
    again.ping_pong().await;
    a.wait_metric("switchboard_connections", "== 1 (bob)", |v| v == 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_before_an_api_disconnect_are_written_first() {
    let node = Node::builder("node-memory").args(AUTH).start().await;
    let ch = unique_channel("last-words");
    let mut alice = as_user(&node, "alice").await;
    alice.subscribe(&ch).await;
    for i in 0..50 {
        node.publish(&ch, json!(i)).await;
    }
    assert_ok_empty(
        &node.disconnect_api(json!({"user": "alice"})).await,
        "disconnect alice",
    );
    for i in 0..50 {
        let m = alice.recv_json().await;
        assert_eq!(
            m,
            json!({"type": "message", "channel": ch, "data": i}),
            "message {i} of 50, published before the disconnect"
        );
    }
    alice.expect_disconnect(4100).await;
}

/// Messages sent to a user while the user's node was cut off from Redis are
/// not kept anywhere: the user is told (`missed` with `user`), never left to
/// guess; an anonymous connection has no user topic and is told nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_told_when_messages_sent_to_it_may_have_been_missed() {
    let redis = RedisServer::start().await;
    let a = Node::builder("node-a")
        .redis(&redis)
        .args(AUTH)
        .start()
        .await;
    let mut alice = as_user(&a, "alice").await;
    let mut anon = WsClient::connect_json(&a.ws_url()).await;
    let killed: i64 = redis
        .query(::redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
        .await;
    assert_eq!(killed, 1);
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "missed", "user": "alice", "reason": "backplane"})
    );
    assert_ok_empty(
        &a.send_to_user("alice", json!("after")).await,
        "send after the reconnect",
    );
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "message", "user": "alice", "data": "after"})
    );
    anon.ping_pong().await;
}
