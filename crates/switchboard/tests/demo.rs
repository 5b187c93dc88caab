//! What a node serves a browser: the client at `/client.js`, the demo page at `/`
//! with its `/status` and its `demo:` namespace (history and presence on), and
//! `--demo false` / `SWITCHBOARD_DEMO=0`, which take the page, its status and its
//! namespace away but not the client. (The client and the page themselves are
//! tested in a browser by `tests/browser/`.)

use switchboard_testkit::{Node, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_the_demo_and_its_status_are_served() {
    let node = Node::start("node-demo", &[]).await;
    let r = node.public_raw("GET", "/client.js", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/javascript; charset=utf-8")
    );
    assert!(r.text().contains("export class Switchboard"));

    let r = node.public_raw("GET", "/", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        r.text()
            .contains(r#"<script type="module" src="/demo.js">"#)
    );
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let r = node.public_raw("GET", "/demo.js", &[], None).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("from '/client.js'"));

    let mut client = WsClient::connect_json(&node.ws_url()).await;
    client.subscribe("demo:lobby").await;
    let r = node.public_raw("GET", "/status", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let status = r.json();
    assert_eq!(status["node"], "node-demo", "{status}");
    assert_eq!(status["nodes"][0]["id"], "node-demo", "{status}");
    assert_eq!(status["nodes"][0]["connections"], 1, "{status}");
    assert!(status["messages_per_second"].is_number(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_namespace_keeps_history_and_presence() {
    let node = Node::start("node-demo-ns", &[]).await;
    let mut client = WsClient::connect_json(&node.ws_url()).await;
    let reply = client.subscribe("demo:room").await;
    assert!(reply["epoch"].is_string(), "history on: {reply}");
    let reply = client.subscribe("other:room").await;
    assert!(reply.get("epoch").is_none(), "defaults elsewhere: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_can_be_switched_off_but_not_the_client() {
    let by_flag = Node::start("node-nodemo", &["--demo", "false"]).await;
    let by_env = Node::builder("node-nodemo-env")
        .env("SWITCHBOARD_DEMO", "0")
        .start()
        .await;
    for node in [&by_flag, &by_env] {
        let r = node.public_raw("GET", "/", &[], None).await;
        assert_eq!(r.status, 200, "a plain pointer to /ws");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        for path in ["/demo.js", "/status"] {
            let r = node.public_raw("GET", path, &[], None).await;
            assert_eq!(r.status, 404, "{path}");
        }
        let r = node.public_raw("GET", "/client.js", &[], None).await;
        assert_eq!(r.status, 200);
        let mut client = WsClient::connect_json(&node.ws_url()).await;
        let reply = client.subscribe("demo:room").await;
        assert!(reply.get("epoch").is_none(), "no demo namespace: {reply}");
    }
}
