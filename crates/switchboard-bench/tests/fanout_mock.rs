//! Runs the `fanout` scenario against a tiny in-process stand-in for a node, to check the
//! generator's own accounting: a faithful node must give a clean report (exit 0), and a node
//! that loses or repeats messages must be caught (exit 1). The real node is measured with the
//! same binary; see the crate's README section in the final report.

use std::process::Command;

#[path = "support/mock.rs"]
mod mock;

use mock::{Fault, Mock, start_mock};

fn run_bench(mock: &Mock) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
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
            "bench:t",
            "--json",
        ])
        .args([
            "--ws",
            &format!("ws://{}/ws", mock.ws),
            "--ws",
            &format!("ws://{}/ws", mock.ws),
        ])
        .args(["--api", &format!("http://{}", mock.api)])
        .args(["--node-pid", &std::process::id().to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with `--nocapture`.
    eprintln!("{stdout}{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let json = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON line ({e}):\n{stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), json)
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
}

#[test]
fn loss_is_caught() {
    let (code, r) = run_bench(&start_mock(Fault::Drop));
    assert_eq!(code, 1, "{r:#}");
    assert!(r["lost"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["duplicated"], 0, "{r:#}");
    assert_eq!(r["out_of_order"], 0, "{r:#}");
}

#[test]
fn duplicates_are_caught() {
    let (code, r) = run_bench(&start_mock(Fault::Duplicate));
    assert_eq!(code, 1, "{r:#}");
    assert!(r["duplicated"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["lost"], 0, "{r:#}");
}
