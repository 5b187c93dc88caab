//! Runs the `rooms`, `ramp`, `idle` and `connect` scenarios against the in-process stand-in
//! for a node (see `fanout_mock.rs`): a faithful stand-in must give clean reports, and one
//! that loses messages must be caught; the same with the subscribers on the Pusher protocol.

use std::process::Command;

#[path = "support/mock.rs"]
mod mock;
#[path = "support/run.rs"]
mod run;

use mock::{Fault, Mock, start_mock};
use run::status_and_json;

/// Runs the generator with `args`, then `--ws`/`--api` options for `mock` as `targets` says;
/// returns its exit status and its JSON line.
fn run(mock: &Mock, args: &[&str], targets: &[&str]) -> (i32, serde_json::Value) {
    let ws = format!("ws://{}/ws", mock.ws);
    let api = format!("http://{}", mock.api);
    let pid = std::process::id().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"));
    cmd.args(args).arg("--json");
    for t in targets {
        match *t {
            "ws" => cmd.args(["--ws", &ws]),
            "api" => cmd.args(["--api", &api]),
            "pid" => cmd.args(["--node-pid", &pid]),
            other => panic!("unknown target {other}"),
        };
    }
    status_and_json(&mut cmd)
}

const ROOMS: &[&str] = &[
    "rooms",
    "--channels",
    "20",
    "--per-channel",
    "3",
    "--rate",
    "200",
    "--duration",
    "1.5",
    "--warmup",
    "0.5",
];

#[test]
fn rooms_deliver_each_channel_to_its_own_subscribers() {
    let (code, r) = run(&start_mock(Fault::None), ROOMS, &["ws", "ws", "api", "pid"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        (r["scenario"].as_str(), r["channels"].as_u64()),
        (Some("rooms"), Some(20))
    );
    let published = r["publishes_measured"].as_u64().unwrap();
    assert!((180..=220).contains(&published), "{r:#}");
    // Every subscriber gets its own channel's share only: 3 subscribers per message.
    assert_eq!(
        r["expected_deliveries"].as_u64(),
        Some(published * 3),
        "{r:#}"
    );
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r:#}");
}

#[test]
fn rooms_catch_loss() {
    let (code, r) = run(&start_mock(Fault::Drop), ROOMS, &["ws", "api"]);
    assert_eq!(code, 1, "{r:#}");
    assert!(r["lost"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["duplicated"], 0, "{r:#}");
}

#[test]
fn a_ramp_steps_up_and_stops_at_loss() {
    let ramp = [
        "ramp",
        "--subscribers",
        "20",
        "--start",
        "50",
        "--factor",
        "2",
        "--max-rate",
        "100",
        "--step-duration",
        "1.2",
        "--step-warmup",
        "0.3",
        "--pause",
        "0.1",
    ];
    let (code, r) = run(&start_mock(Fault::None), &ramp, &["ws", "api"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["steps"].as_array().map(Vec::len), Some(2), "{r:#}");
    assert_eq!(r["highest_clean"]["rate"], 100.0, "{r:#}");
    // A node that loses messages: the first step is not clean, so nothing is.
    let (code, r) = run(&start_mock(Fault::Drop), &ramp, &["ws", "api"]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["steps"].as_array().map(Vec::len), Some(1), "{r:#}");
    assert!(r["highest_clean"].is_null(), "{r:#}");
}

#[test]
fn idle_connections_are_held_and_measured() {
    let args = [
        "idle",
        "--connections",
        "200",
        "--channels",
        "7",
        "--hold",
        "0.5",
    ];
    let (code, r) = run(&start_mock(Fault::None), &args, &["ws", "pid"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        (r["connected"].as_u64(), r["disconnects"].as_u64()),
        (Some(200), Some(0))
    );
    assert!(r["rss_per_connection_kb"].as_f64().is_some(), "{r:#}");
    assert!(
        r["connect_latency_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{r:#}"
    );
}

#[test]
fn connect_counts_connections_and_errors() {
    let mock = start_mock(Fault::None);
    let args = ["connect", "--connections", "300", "--concurrency", "16"];
    let (code, r) = run(&mock, &args, &["ws", "pid"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        (r["connected"].as_u64(), r["errors"].as_u64()),
        (Some(300), Some(0))
    );
    assert!(r["connections_per_sec"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(r["node_cpu_us_per_connection"].as_f64().is_some(), "{r:#}");
    // Nothing listens there (the API port speaks HTTP but not WebSocket): every attempt fails.
    let (code, r) = status_and_json(
        Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
            .args(["connect", "--connections", "5", "--json", "--ws"])
            .arg(format!("ws://{}/ws", mock.api)),
    );
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["errors"], 5, "{r:#}");
}

#[test]
fn pusher_subscribers_are_counted_like_native_ones() {
    let pusher = ["--protocol", "pusher"];
    let rooms: Vec<&str> = ROOMS.iter().chain(&pusher).copied().collect();
    let (code, r) = run(&start_mock(Fault::None), &rooms, &["ws", "ws", "api"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["protocol"], "pusher", "{r:#}");
    assert!(r["deliveries"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r:#}");
    assert_eq!(r["unexpected_frames"], 0, "{r:#}");
    // Loss is caught as on the native protocol.
    let (code, r) = run(&start_mock(Fault::Drop), &rooms, &["ws", "api"]);
    assert_eq!(code, 1, "{r:#}");
    assert!(r["lost"].as_u64().unwrap() > 0, "{r:#}");
    // Idle connections on the Pusher endpoint.
    let idle = [
        "idle",
        "--connections",
        "50",
        "--channels",
        "3",
        "--hold",
        "0.2",
    ];
    let idle: Vec<&str> = idle.iter().chain(&pusher).copied().collect();
    let (code, r) = run(&start_mock(Fault::None), &idle, &["ws"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["protocol"], "pusher", "{r:#}");
    assert_eq!(r["connected"], 50, "{r:#}");
    assert!(
        r["ws"]
            .as_str()
            .unwrap()
            .ends_with("/app/bench-key?protocol=7"),
        "{r:#}"
    );
}
