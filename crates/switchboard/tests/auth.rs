//! JWT authentication: every kind of bad token is refused with 401 before the
//! upgrade; good HS256, RS256 and ES256 tokens name the user in the welcome; the
//! `channels` and `publish` claims and `client_publish = false` are enforced with
//! `forbidden`; a token expiring mid-session closes the connection with 4001.
//! (The origin allow-list is covered in bad_input.rs.)

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use switchboard_testkit::jwt::{self, KeyKind, KeyPair, SECRET, claims, claims_with, hs256};
use switchboard_testkit::ws::{JSON_PROTOCOL, Upgrade};
use switchboard_testkit::{Node, TempDir, WsClient, eventually, run_switchboard, unique_channel};

/// Asserts the upgrade with `token` (by query when `bearer` is false, else by header)
/// is refused with 401 and an `unauthorized` error body.
async fn assert_refused(node: &Node, token: Option<&str>, bearer: bool, what: &str) {
    let (url, auth) = match (token, bearer) {
        (None, _) => (node.ws_url(), None),
        (Some(t), false) => (format!("{}?token={t}", node.ws_url()), None),
        (Some(t), true) => (node.ws_url(), Some(format!("Bearer {t}"))),
    };
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    match WsClient::try_upgrade(&url, &[JSON_PROTOCOL], &headers).await {
        Upgrade::Refused(401, body) => {
            let body: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{what}: 401 body is not JSON ({e}): {body:?}"));
            assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
            assert!(body["error"]["message"].is_string(), "{what}: {body}");
        }
        other => panic!("{what}: want 401 before the upgrade, got {other:?}"),
    }
}

/// Asserts the token is accepted and the welcome names `user`.
async fn assert_accepted(node: &Node, token: &str, user: &str, what: &str) -> WsClient {
    let mut client = WsClient::connect_with_token(&node.ws_url(), token).await;
    assert_eq!(client.welcome["user"], user, "{what}: {}", client.welcome);
    client.ping_pong().await;
    client
}

/// Asserts an `error` reply with `code`.
fn assert_error(reply: &Value, code: &str, what: &str) {
    assert_eq!(
        (&reply["type"], &reply["code"]),
        (&json!("error"), &json!(code)),
        "{what}: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_401_before_the_upgrade() {
    let node = Node::start("node-auth", &["--jwt-secret", SECRET]).await;
    let now = jwt::now_secs() as i64;
    let hs512 = jwt::sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims("alice", 3600),
    );
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token, anonymous not allowed", None),
        ("empty token", Some(String::new())),
        ("not a JWT", Some("not-a-jwt".into())),
        ("three garbage parts", Some("abc.def.ghi".into())),
        (
            "bad signature",
            Some(hs256(
                "another-secret-entirely-0123456789",
                &claims("alice", 3600),
            )),
        ),
        (
            "expired an hour ago",
            Some(hs256(SECRET, &claims("alice", -3600))),
        ),
        ("wrong algorithm (HS512)", Some(hs512)),
        ("alg none", Some(jwt::unsigned(&claims("alice", 3600)))),
        ("no sub", Some(hs256(SECRET, &json!({"exp": now + 3600})))),
        (
            "empty sub",
            Some(hs256(SECRET, &json!({"sub": "", "exp": now + 3600}))),
        ),
        (
            "sub not a string",
            Some(hs256(SECRET, &json!({"sub": 42, "exp": now + 3600}))),
        ),
        ("no exp", Some(hs256(SECRET, &json!({"sub": "alice"})))),
    ];
    for (what, token) in &cases {
        assert_refused(&node, token.as_deref(), false, &format!("?token=, {what}")).await;
        if let Some(token) = token.as_deref().filter(|t| !t.is_empty()) {
            assert_refused(&node, Some(token), true, &format!("Bearer, {what}")).await;
        }
    }
    // The node is fine, and a good token still gets in.
    assert_eq!(node.readyz_status().await, Some(200));
    assert_accepted(
        &node,
        &jwt::user_token("alice"),
        "alice",
        "after the refusals",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_by_query_or_by_header() {
    let node = Node::start("node-hs256", &["--jwt-secret", SECRET]).await;
    assert_accepted(&node, &jwt::user_token("alice"), "alice", "?token=").await;
    let mut client = WsClient::connect_with_bearer(&node.ws_url(), &jwt::user_token("bob")).await;
    assert_eq!(client.welcome["user"], "bob", "Bearer: {}", client.welcome);
    // Extra claims are fine.
    let token = hs256(
        SECRET,
        &claims_with(
            "carol",
            60,
            json!({"iat": jwt::now_secs(), "name": "Carol"}),
        ),
    );
    let mut carol = assert_accepted(&node, &token, "carol", "extra claims").await;
    client.ping_pong().await;
    carol.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_public_key() {
    public_key_story(KeyKind::Rsa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_public_key() {
    public_key_story(KeyKind::Ec).await;
}

/// A node with `--jwt-public-key` accepts tokens of that key only, of its algorithm only.
async fn public_key_story(kind: KeyKind) {
    let keys = KeyPair::generate(kind);
    let node = Node::builder(&format!("node-{kind:?}").to_lowercase())
        .arg("--jwt-public-key")
        .arg(keys.public_path())
        .start()
        .await;
    assert_accepted(
        &node,
        &keys.sign(&claims("alice", 3600)),
        "alice",
        "signed with the key",
    )
    .await;
    let client =
        WsClient::connect_with_bearer(&node.ws_url(), &keys.sign(&claims("bob", 60))).await;
    assert_eq!(client.welcome["user"], "bob");

    let other_same_kind = KeyPair::generate(kind);
    let other_kind = KeyPair::generate(match kind {
        KeyKind::Rsa => KeyKind::Ec,
        KeyKind::Ec => KeyKind::Rsa,
    });
    let cases = [
        ("no token", None),
        (
            "another key of the same kind",
            Some(other_same_kind.sign(&claims("alice", 3600))),
        ),
        (
            "a key of the other kind",
            Some(other_kind.sign(&claims("alice", 3600))),
        ),
        // The classic confusion: HS256 "signed" with the public key as the secret.
        (
            "HS256 with the public key as secret",
            Some(jwt::sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&keys.public_pem()),
                &claims("alice", 3600),
            )),
        ),
        (
            "HS256 with any secret",
            Some(hs256(SECRET, &claims("alice", 3600))),
        ),
        ("expired", Some(keys.sign(&claims("alice", -3600)))),
        (
            "no sub",
            Some(keys.sign(&json!({"exp": jwt::now_secs() + 3600}))),
        ),
        ("no exp", Some(keys.sign(&json!({"sub": "alice"})))),
        ("alg none", Some(jwt::unsigned(&claims("alice", 3600)))),
    ];
    for (what, token) in &cases {
        assert_refused(&node, token.as_deref(), false, &format!("{kind:?}: {what}")).await;
    }
    assert_eq!(node.readyz_status().await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_public_key_files_exit_64() {
    let dir = TempDir::new("badkey");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
    )
    .expect("write garbage key");
    let missing = dir.path().join("missing.pem");
    for path in [&garbage, &missing] {
        let path = path.to_str().expect("utf-8 path");
        let out = run_switchboard(
            &[
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "127.0.0.1:0",
                "--jwt-public-key",
                path,
            ],
            &[],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(64),
            "--jwt-public-key {path}: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains("jwt")),
            "an error line names the setting: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_alongside_tokens() {
    let node = Node::start(
        "node-mixed",
        &["--jwt-secret", SECRET, "--allow-anonymous", "true"],
    )
    .await;
    let mut anon = WsClient::connect_json(&node.ws_url()).await;
    assert_eq!(anon.welcome["user"], "", "{}", anon.welcome);
    assert_accepted(&node, &jwt::user_token("alice"), "alice", "token").await;
    // A bad token is not downgraded to anonymous.
    assert_refused(
        &node,
        Some(&hs256(
            "wrong-secret-wrong-secret-wrong",
            &claims("alice", 60),
        )),
        false,
        "bad token",
    )
    .await;
    assert_refused(
        &node,
        Some(&hs256(SECRET, &claims("alice", -3600))),
        true,
        "expired token",
    )
    .await;
    anon.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_and_publish_claims_are_enforced() {
    let node = Node::builder("node-claims")
        .namespaces()
        .args(["--jwt-secret", SECRET])
        .start()
        .await;
    let token = |extra: Value| hs256(SECRET, &claims_with("alice", 3600, extra));
    let everything = jwt::user_token("watcher");
    let mut watcher = WsClient::connect_with_token(&node.ws_url(), &everything).await;
    watcher.subscribe("room:1").await;
    watcher.subscribe("news").await;

    // Exact names and prefixes.
    let mut client = WsClient::connect_with_token(
        &node.ws_url(),
        &token(json!({"channels": ["news", "room:*"], "publish": ["room:pub*"]})),
    )
    .await;
    client.subscribe("news").await;
    client.subscribe("room:1").await;
    client.subscribe("room:pub-1").await;
    for ch in ["newsroom", "new", "chat:room:1", "rooms"] {
        let reply = client
            .request(json!({"type": "subscribe", "channel": ch}))
            .await;
        assert_error(
            &reply,
            "forbidden",
            &format!("subscribe {ch} outside the channels claim"),
        );
    }
    client.publish_ok("room:pub-1", json!("ok")).await;
    for ch in ["room:1", "news", "elsewhere"] {
        let reply = client.publish(ch, json!("not allowed")).await;
        assert_error(
            &reply,
            "forbidden",
            &format!("publish to {ch} outside the publish claim"),
        );
    }
    // Nothing forbidden was published: the client, subscribed to room:1 and
    // room:pub-1, sees its one allowed publish only.
    assert_eq!(
        client.recv_message_push().await,
        json!({"type": "message", "channel": "room:pub-1", "data": "ok"})
    );
    client.ping_pong().await;
    watcher.ping_pong().await;
    client.unsubscribe("news").await;

    // `[]` means none; an absent claim means any.
    let mut none =
        WsClient::connect_with_token(&node.ws_url(), &token(json!({"channels": []}))).await;
    for ch in ["news", "room:1", "anything"] {
        let reply = none
            .request(json!({"type": "subscribe", "channel": ch}))
            .await;
        assert_error(
            &reply,
            "forbidden",
            &format!("subscribe {ch} with channels []"),
        );
    }
    none.publish_ok("news", json!("publish is unrestricted"))
        .await;
    assert_eq!(watcher.recv_json().await["data"], "publish is unrestricted");

    // `*` alone matches everything; `publish: []` forbids every client publish.
    let mut reader = WsClient::connect_with_token(
        &node.ws_url(),
        &token(json!({"channels": ["*"], "publish": []})),
    )
    .await;
    for ch in ["news", "room:1", &unique_channel("anything")] {
        reader.subscribe(ch).await;
    }
    let reply = reader.publish("news", json!("no")).await;
    assert_error(&reply, "forbidden", "publish with publish []");
    // The server API is never bound by tokens.
    node.publish("news", json!("from the API")).await;
    assert_eq!(reader.recv_message_push().await["data"], "from the API");
    assert_eq!(watcher.recv_json().await["data"], "from the API");

    // `client_publish = false` (namespace `ro`): forbidden for every client, whatever
    // its claims; the API still publishes there.
    let ro = unique_channel("ro:announcements");
    watcher.subscribe(&ro).await;
    let reply = watcher.publish(&ro, json!("no")).await;
    assert_error(
        &reply,
        "forbidden",
        "client publish in a client_publish = false namespace",
    );
    node.publish(&ro, json!("official")).await;
    assert_eq!(
        watcher.recv_json().await,
        json!({"type": "message", "channel": ro, "data": "official"})
    );
    for c in [&mut client, &mut none, &mut reader, &mut watcher] {
        c.ping_pong().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_mid_session_closes_with_4001() {
    let node = Node::start("node-expiry", &["--jwt-secret", SECRET]).await;
    let ch = unique_channel("expiring");
    let mut lasting = WsClient::connect_with_token(&node.ws_url(), &jwt::user_token("bob")).await;
    lasting.subscribe(&ch).await;
    let mut brief =
        WsClient::connect_with_token(&node.ws_url(), &hs256(SECRET, &claims("alice", 3))).await;
    assert_eq!(brief.welcome["user"], "alice");
    brief.subscribe(&ch).await;

    let push = brief.expect_disconnect(4001).await;
    assert_eq!(
        push,
        json!({"type": "disconnect", "code": 4001, "reason": "token expired", "reconnect": true}),
        "the expiry push"
    );
    // The other session goes on.
    node.publish(&ch, json!("still here")).await;
    assert_eq!(lasting.recv_json().await["data"], "still here");
    // With a fresh token alice is back.
    assert_accepted(&node, &jwt::user_token("alice"), "alice", "refreshed token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rules_no_leeway_nbf_size_and_which_token_counts() {
    let node = Node::start("node-token-rules", &["--jwt-secret", SECRET]).await;
    let now = jwt::now_secs() as i64;

    // No leeway: expired two seconds ago is expired.
    assert_refused(
        &node,
        Some(&hs256(SECRET, &claims("alice", -2))),
        false,
        "expired 2 s ago",
    )
    .await;
    // `nbf` is enforced when present.
    let early = hs256(
        SECRET,
        &claims_with("alice", 3600, json!({"nbf": now + 600})),
    );
    assert_refused(&node, Some(&early), false, "nbf ten minutes ahead").await;
    let ripe = hs256(
        SECRET,
        &claims_with("alice", 3600, json!({"nbf": now - 10})),
    );
    assert_accepted(&node, &ripe, "alice", "nbf in the past").await;
    // `aud` is not checked.
    let aud = hs256(
        SECRET,
        &claims_with("alice", 3600, json!({"aud": "someone-else"})),
    );
    assert_accepted(&node, &aud, "alice", "any aud").await;

    // Over 16 KiB: refused; a large token under it is fine.
    let huge = hs256(
        SECRET,
        &claims_with("alice", 3600, json!({"pad": "x".repeat(17 * 1024)})),
    );
    assert!(huge.len() > 16 * 1024);
    assert_refused(&node, Some(&huge), true, "a token over 16 KiB").await;
    let large = hs256(
        SECRET,
        &claims_with("alice", 3600, json!({"pad": "x".repeat(8 * 1024)})),
    );
    assert!(large.len() < 16 * 1024);
    let client = WsClient::connect_with_bearer(&node.ws_url(), &large).await;
    assert_eq!(client.welcome["user"], "alice");

    // Both given: the query token is the one used.
    let good = jwt::user_token("alice");
    let bad = hs256("wrong-secret-wrong-secret-wrong", &claims("bob", 3600));
    let both = |query: &str, bearer: &str| {
        (
            format!("{}?token={query}", node.ws_url()),
            format!("Bearer {bearer}"),
        )
    };
    let (url, auth) = both(&good, &bad);
    let client =
        WsClient::connect_json_with(&url, &[JSON_PROTOCOL], &[("Authorization", &auth)]).await;
    assert_eq!(client.welcome["user"], "alice", "the query token wins");
    let (url, auth) = both(&bad, &jwt::user_token("bob"));
    match WsClient::try_upgrade(&url, &[JSON_PROTOCOL], &[("Authorization", &auth)]).await {
        Upgrade::Refused(401, _) => {}
        other => panic!("a bad query token with a good Bearer: want 401, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_token_is_none_and_a_token_without_a_key_is_refused() {
    // Anonymous allowed: `?token=` (empty) is no token.
    let mixed = Node::start(
        "node-mixed",
        &["--jwt-secret", SECRET, "--allow-anonymous", "true"],
    )
    .await;
    let mut anon = WsClient::connect_json(&format!("{}?token=", mixed.ws_url())).await;
    assert_eq!(
        anon.welcome["user"], "",
        "an empty token is none: {}",
        anon.welcome
    );
    anon.ping_pong().await;

    // No JWT key configured: a token is refused, not taken as anonymous.
    let keyless = Node::start("node-keyless", &[]).await;
    let token = jwt::user_token("alice");
    assert_refused(&keyless, Some(&token), false, "a token, no key configured").await;
    assert_refused(
        &keyless,
        Some(&token),
        true,
        "a Bearer token, no key configured",
    )
    .await;
    let mut anon = WsClient::connect_json(&keyless.ws_url()).await;
    assert_eq!(anon.welcome["user"], "");
    anon.ping_pong().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_checks_run_in_the_contract_order() {
    // One connection slot; one new connection per second per IP (burst 2).
    let node = Node::start(
        "node-order",
        &[
            "--jwt-secret",
            SECRET,
            "--allowed-origins",
            "https://good.example",
            "--max-connections",
            "1",
            "--ip-connect-rate",
            "1",
        ],
    )
    .await;
    let url = node.ws_url();
    let status = |r: &Option<switchboard_testkit::ws::Refusal>| r.as_ref().map(|r| r.status);

    // Origin (403) before subprotocol (400) before the token (401); neither uses up the
    // IP's connection budget.
    let r = WsClient::refusal(&url, &["nope.v9"], &[("Origin", "https://evil.example")]).await;
    assert_eq!(
        status(&r),
        Some(403),
        "bad origin, bad subprotocol, no token: {r:?}"
    );
    let r = WsClient::refusal(&url, &["nope.v9"], &[("Origin", "https://good.example")]).await;
    assert_eq!(status(&r), Some(400), "bad subprotocol, no token: {r:?}");

    // Take the one slot (first of the IP's two).
    let mut holder = WsClient::connect_with_token(&url, &jwt::user_token("alice")).await;
    // The slot (503) before the token (401): the IP's second.
    let r = WsClient::refusal(&url, &[JSON_PROTOCOL], &[]).await;
    assert_eq!(status(&r), Some(503), "full, no token: {r:?}");
    // The IP rate (429, Retry-After: 1) before the slot (503).
    let r = WsClient::refusal(&url, &[JSON_PROTOCOL], &[]).await;
    assert_eq!(
        status(&r),
        Some(429),
        "over the IP rate, full, no token: {r:?}"
    );
    assert_eq!(
        r.as_ref().and_then(|r| r.header("retry-after")),
        Some("1"),
        "{r:?}"
    );

    // A free slot and a refilled budget: now the missing token is what is refused, with
    // `WWW-Authenticate: Bearer`.
    holder.close(1000).await;
    drop(holder);
    node.wait_ready().await;
    let refusal = eventually(
        "the IP budget to refill",
        std::time::Duration::from_secs(5),
        || async {
            match WsClient::refusal(&url, &[JSON_PROTOCOL], &[]).await {
                Some(r) if r.status == 429 => Err("429".to_owned()),
                other => Ok(other),
            }
        },
    )
    .await
    .expect("a connection without a token must be refused");
    assert_eq!(refusal.status, 401, "{refusal:?}");
    let challenge = refusal.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "WWW-Authenticate: {refusal:?}"
    );
}
