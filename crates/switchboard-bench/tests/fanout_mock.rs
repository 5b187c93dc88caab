//! Runs the `fanout` scenario against a tiny in-process stand-in for a node, to check the
//! generator's own accounting: a faithful node must give a clean report (exit 0), and a node
//! that loses or repeats messages must be caught (exit 1). The real node is measured with the
//! same binary; see the crate's README section in the final report.

use std::process::Command;

#[path = "support/mock.rs"]
mod mock;
#[path = "support/run.rs"]
mod run;

use mock::{Fault, Mock, start_mock};
use run::status_and_json;

fn run_bench(mock: &Mock) -> (i32, serde_json::Value) {
    run_bench_on(mock, "bench:t")
}

fn run_bench_on(mock: &Mock, channel: &str) -> (i32, serde_json::Value) {
    status_and_json(
        Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
            .args([
                "fanout",
                "--subscribers",
                "50",
                "--rate",
                "200",
                "--duration",
                "1.5",
            ])
            .args([
                "--warmup",
                "0.5",
                "--payload",
                "100",
                "--channel",
                channel,
                "--json",
            ])
            .args([
                "--ws",
                &format!("ws://{}/ws", mock.ws),
                "--ws",
                &format!("ws://{}/ws", mock.ws),
            ])
            .args(["--api", &format!("http://{}", mock.api)])
            .args(["--node-pid", &std::process::id().to_string()]),
    )
}

#[test]
fn a_faithful_node_gives_a_clean_report() {
    let (code, r) = run_bench(&start_mock(Fault::None));
    assert_eq!(code, 0, "{r:#}");
    let published = r["publishes_measured"].as_u64().unwrap();
    assert!((180..=220).contains(&published), "{r:#}");
    assert_eq!(r["deliveries"].as_u64(), Some(published * 50));
    assert_eq!(r["lost"], 0);
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["nodes"][0]["cpu_secs"].as_f64().is_some(), "{r:#}");
    let user = r["nodes"][0]["user_secs"].as_f64().unwrap();
    assert!(user <= r["nodes"][0]["cpu_secs"].as_f64().unwrap(), "{r:#}");
    let (total, user, kernel) = (
        r["nodes_cpu_us_per_delivery"].as_f64().unwrap(),
        r["nodes_user_us_per_delivery"].as_f64().unwrap(),
        r["nodes_kernel_us_per_delivery"].as_f64().unwrap(),
    );
    assert!((user + kernel - total).abs() < 1e-6, "{r:#}");
    // The stand-in counts every publish in its 1 ms bucket.
    let n = &r["node_latency"];
    assert_eq!(n["nodes_read"], 1, "{r:#}");
    assert!(n["count"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(n["p50_le_ms"], 1.0, "{r:#}");
    assert_eq!(n["p99_le_ms"], 1.0, "{r:#}");
}

#[test]
fn loss_is_caught() {
    let (code, r) = run_bench(&start_mock(Fault::Drop));
    assert_eq!(code, 1, "{r:#}");
    assert!(r["lost"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["duplicated"], 0, "{r:#}");
    assert_eq!(r["out_of_order"], 0, "{r:#}");
    // This stand-in has no /metrics: said so, and not a failure of its own.
    assert_eq!(r["node_latency"]["nodes_read"], 0, "{r:#}");
    assert!(r["node_latency"]["p99_le_ms"].is_null(), "{r:#}");
    assert!(!r["failures"].to_string().contains("histogram"), "{r:#}");
}

#[test]
fn duplicates_are_caught() {
    let (code, r) = run_bench(&start_mock(Fault::Duplicate));
    assert_eq!(code, 1, "{r:#}");
    assert!(r["duplicated"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["lost"], 0, "{r:#}");
}

#[test]
fn offsets_are_checked_on_history_channels() {
    let (code, r) = run_bench_on(&start_mock(Fault::None), "hist:t");
    assert_eq!(code, 0, "{r:#}");
    let o = &r["offsets"];
    assert_eq!(o["subscribers"], 50, "{r:#}");
    // Every message, warm-up included, by every subscriber.
    let attempted = r["publishes_attempted"].as_u64().unwrap();
    assert_eq!(o["checked"].as_u64(), Some(attempted * 50), "{r:#}");
    assert_eq!(
        (&o["gaps"], &o["repeats"], &o["missing"]),
        (&0.into(), &0.into(), &0.into())
    );
    // Without history nothing is checked.
    let (_, plain) = run_bench(&start_mock(Fault::None));
    assert!(plain["offsets"].is_null(), "{plain:#}");
}

#[test]
fn offset_gaps_and_repeats_are_caught() {
    let (code, r) = run_bench_on(&start_mock(Fault::Drop), "hist:t");
    assert_eq!(code, 1, "{r:#}");
    assert!(r["offsets"]["gaps"].as_u64().unwrap() > 0, "{r:#}");
    let failures = r["failures"].to_string();
    assert!(failures.contains("offset gaps"), "{failures}");
    let (code, r) = run_bench_on(&start_mock(Fault::Duplicate), "hist:t");
    assert_eq!(code, 1, "{r:#}");
    assert!(r["offsets"]["repeats"].as_u64().unwrap() > 0, "{r:#}");
}
