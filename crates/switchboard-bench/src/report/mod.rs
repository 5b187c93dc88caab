//! What each scenario prints: its report's lines (`render`), its JSON object (`json`, the
//! last line of stdout with `--json`, which scripts/bench.sh and scripts/bench_table.py read to
//! write the BENCHMARKS.md table) and its failures, plus the pieces every report shares.
//!
//! Other scripts parse these lines (the chaos accounting line `chaos: seed=... lost=...`, the
//! `faults:` line, the `machine:` lines, the JSON line): their formats are part of the
//! interface, and the tests here pin them.

mod chaos;
mod connect;
mod fanout;
mod idle;
mod ramp;
mod recover;
mod usage;

use std::fmt::Write as _;

use serde_json::{Value, json};

pub use chaos::ChaosReport;
pub use connect::ConnectReport;
pub use fanout::Report;
pub use idle::{IdleReport, NodeFigures};
pub use ramp::{RampReport, RampStep, Verdict, judge};
pub use recover::{ClientOutcome, PubTally, RecoverReport};

use crate::measure::offsets::OffsetCheck;

/// A finished run's report, whatever the scenario.
pub trait RunReport {
    /// The human-readable report, printed on stdout.
    fn render(&self) -> String;
    /// The report as one JSON object (`--json`: the last line of stdout).
    fn json(&self) -> serde_json::Value;
    /// What went wrong, one line each; empty for a clean run (else the exit status is 1).
    fn failures(&self) -> Vec<String>;
}

/// Implements [`RunReport`] by the report type's own inherent methods.
macro_rules! run_report {
    ($($t:ty),*) => {$(
        impl RunReport for $t {
            fn render(&self) -> String {
                <$t>::render(self)
            }
            fn json(&self) -> serde_json::Value {
                <$t>::json(self)
            }
            fn failures(&self) -> Vec<String> {
                <$t>::failures(self)
            }
        }
    )*};
}

run_report!(
    fanout::Report,
    recover::RecoverReport,
    idle::IdleReport,
    connect::ConnectReport,
    ramp::RampReport,
    chaos::ChaosReport
);

/// What an offset check found wrong, one line each.
pub fn offset_failures(o: &OffsetCheck) -> Vec<String> {
    let mut f = Vec::new();
    if o.gaps > 0 {
        f.push(format!(
            "{} offset gaps ({} offsets skipped)",
            o.gaps, o.skipped
        ));
    }
    if o.repeats > 0 {
        f.push(format!("{} repeated or late offsets", o.repeats));
    }
    if o.missing > 0 {
        f.push(format!("{} messages without an offset", o.missing));
    }
    f
}

/// An offset check as JSON.
pub fn offsets_json(o: &OffsetCheck, subscribers: usize) -> Value {
    json!({
        "subscribers": subscribers,
        "checked": o.checked,
        "gaps": o.gaps,
        "skipped": o.skipped,
        "repeats": o.repeats,
        "missing": o.missing,
    })
}

/// Appends a report's last line, `result: OK` or `result: FAILED: ...` (the failures joined by
/// `; `), with the label `result:` padded to `label_width` to line up with the report's other
/// labels.
pub fn write_result(s: &mut String, label_width: usize, failures: &[String]) {
    let label = "result:";
    if failures.is_empty() {
        let _ = writeln!(s, "{label:<label_width$}OK");
    } else {
        let _ = writeln!(s, "{label:<label_width$}FAILED: {}", failures.join("; "));
    }
}

/// `n` events over `secs` seconds as a rate; 0 for an empty window.
pub fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_keep_each_report_s_padding() {
        let mut s = String::new();
        write_result(&mut s, 13, &[]);
        write_result(&mut s, 14, &["a".to_owned(), "b".to_owned()]);
        write_result(&mut s, 8, &[]);
        assert_eq!(
            s,
            "result:      OK\nresult:       FAILED: a; b\nresult: OK\n"
        );
    }
}
