//! Checks of the test kit itself, so a failure elsewhere points at the node, not at
//! the harness.

mod support;

use support::node::parse_samples;
use support::{RedisServer, decode_base64};

#[test]
fn prometheus_text_is_parsed() {
    let text = r#"
# HELP switchboard_connections Open connections.
# TYPE switchboard_connections gauge
switchboard_connections 3
switchboard_disconnects_total{reason="slow_consumer"} 1
switchboard_disconnects_total{reason="client_closed",node="a \"b\""} 4
switchboard_delivery_latency_seconds_bucket{le="+Inf"} 7
switchboard_delivery_latency_seconds_sum 0.25
switchboard_api_requests_total{route="/api/v1/publish",status="200"} 1e3
"#;
    let samples = parse_samples(text);
    assert_eq!(samples.len(), 6);
    assert_eq!(samples[0].name, "switchboard_connections");
    assert_eq!(samples[0].value, 3.0);
    assert_eq!(
        samples[2].labels,
        [
            ("reason".to_owned(), "client_closed".to_owned()),
            ("node".to_owned(), "a \"b\"".to_owned())
        ]
    );
    assert_eq!(samples[3].value, 7.0);
    assert_eq!(samples[5].value, 1000.0);
}

#[test]
fn base64_accepts_both_alphabets() {
    assert_eq!(
        decode_base64("AJ+Slg==").as_deref(),
        Some(&[0, 0x9f, 0x92, 0x96][..])
    );
    assert_eq!(
        decode_base64("AJ-Slg").as_deref(),
        Some(&[0, 0x9f, 0x92, 0x96][..])
    );
    assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
    assert_eq!(decode_base64("a b"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_server_starts_dies_and_restarts_on_the_same_port() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();
    assert_ne!(port, 6379, "never the system Redis");
    let pong: String = redis.query(&::redis::cmd("PING")).await;
    assert_eq!(pong, "PONG");
    assert_eq!(redis.numsub("nobody").await, 0);

    redis.kill();
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "killed redis still accepts connections");

    redis.restart().await;
    assert_eq!(redis.port(), port);
    let pong: String = redis.query(&::redis::cmd("PING")).await;
    assert_eq!(pong, "PONG");
}
