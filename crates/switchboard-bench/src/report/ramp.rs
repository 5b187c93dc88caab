//! The report of `ramp`: one table row per step, the highest clean step, and why the ramp
//! stopped.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::measure::scrape::NodeLatency;
use crate::report::fanout::Report;
use crate::report::usage::node_p99_text;
use crate::report::write_result;

/// How a step went.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Zero loss, p99 within the bound, the offered load reached.
    Clean,
    /// The run found problems (loss, duplicates, order, disconnects, publish errors).
    Failed(Vec<String>),
    /// p99 above the bound (ms).
    SlowP99(f64),
    /// The publishers did not keep to their schedule: accepted publishes per second, slots
    /// skipped, and the p99 of the API's answers (ms), which says whether the node answered
    /// slowly.
    Shortfall {
        achieved: f64,
        skipped: u64,
        api_p99: f64,
    },
}

impl Verdict {
    /// Short text for the report.
    pub fn describe(&self, bound_ms: f64) -> String {
        match self {
            Verdict::Clean => "clean".to_owned(),
            Verdict::Failed(f) => format!("failed: {}", f.join("; ")),
            Verdict::SlowP99(p99) => format!("p99 {p99:.1} ms > {bound_ms} ms"),
            Verdict::Shortfall {
                achieved,
                skipped,
                api_p99,
            } => format!(
                "offered load not reached: {achieved:.1} publishes/s accepted, {skipped} slots \
                 skipped (API answers p99 {api_p99:.1} ms)"
            ),
        }
    }
}

/// Judges one step's report.
pub fn judge(r: &Report, p99_bound_ms: f64) -> Verdict {
    let failures = r.failures();
    if !failures.is_empty() {
        return Verdict::Failed(failures);
    }
    if r.latency.p99 > p99_bound_ms {
        return Verdict::SlowP99(r.latency.p99);
    }
    if r.publishes_skipped > 0 || r.publish_rate() < 0.95 * r.target_rate {
        return Verdict::Shortfall {
            achieved: r.publish_rate(),
            skipped: r.publishes_skipped,
            api_p99: r.publish_latency.p99,
        };
    }
    Verdict::Clean
}

/// One step of the ramp.
#[derive(Debug, Clone)]
pub struct RampStep {
    /// Target publishes per second.
    pub rate: f64,
    /// The step's fanout report.
    pub report: Report,
    /// How it went.
    pub verdict: Verdict,
}

/// Everything a ramp measured.
#[derive(Debug, Clone, Default)]
pub struct RampReport {
    /// Subscribers per step.
    pub subscribers: usize,
    /// Number of `--ws` nodes.
    pub ws_nodes: usize,
    /// The p99 bound, ms.
    pub p99_bound_ms: f64,
    /// Every step taken, in order.
    pub steps: Vec<RampStep>,
    /// Why the ramp stopped.
    pub stop_reason: String,
}

impl RampReport {
    /// The highest clean step: the last step before the first one that was not clean.
    pub fn highest_clean(&self) -> Option<&RampStep> {
        self.steps
            .iter()
            .take_while(|s| s.verdict == Verdict::Clean)
            .last()
    }

    /// The first step that was not clean, if any.
    pub fn first_unclean(&self) -> Option<&RampStep> {
        self.steps.iter().find(|s| s.verdict != Verdict::Clean)
    }

    /// What went wrong, one line each; empty for a clean run. Running into loss or the p99
    /// bound is what a ramp is for, not a failure; a ramp fails when no step was clean, or
    /// when any step delivered a duplicate or out of order (the channel contract does not
    /// bend under load).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.highest_clean().is_none() {
            f.push(match self.steps.first() {
                Some(s) => format!(
                    "no step was clean (first step, {:.1}/s: {})",
                    s.rate,
                    s.verdict.describe(self.p99_bound_ms)
                ),
                None => format!("no step ran ({})", self.stop_reason),
            });
        }
        for s in &self.steps {
            let r = &s.report;
            if r.duplicated > 0 || r.out_of_order > 0 {
                f.push(format!(
                    "step {:.1}/s: {} duplicate and {} out-of-order deliveries",
                    s.rate, r.duplicated, r.out_of_order
                ));
            }
        }
        f
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "ramp: {} subscribers on {} node(s), one channel; a step is clean with zero loss and p99 <= {} ms",
            self.subscribers, self.ws_nodes, self.p99_bound_ms
        );
        let _ = writeln!(
            s,
            "{:>9} {:>4} {:>10} {:>12} {:>16} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>11} {:>6} {:>6}  verdict",
            "target/s",
            "pubs",
            "publish/s",
            "deliveries/s",
            "lost/dup/ooo",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "node p99",
            "node µs/d",
            "user/kernel",
            "nodes",
            "gen"
        );
        for step in &self.steps {
            let r = &step.report;
            let l = &r.latency;
            let opt = |v: Option<f64>, digits: usize| {
                v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
            };
            let _ = writeln!(
                s,
                "{:>9.1} {:>4} {:>10.1} {:>12.0} {:>16} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10} {:>9} {:>11} {:>6} {:>6}  {}",
                step.rate,
                r.publishers,
                r.publish_rate(),
                r.delivery_rate(),
                format!("{}/{}/{}", r.lost, r.duplicated, r.out_of_order),
                l.p50,
                l.p99,
                l.p999,
                l.max,
                node_p99_text(r.node_latency.as_ref()),
                opt(r.nodes_us_per_delivery(), 2),
                match (
                    r.nodes_user_us_per_delivery(),
                    r.nodes_kernel_us_per_delivery()
                ) {
                    (Some(u), Some(k)) => format!("{u:.2}/{k:.2}"),
                    _ => "-".to_owned(),
                },
                opt(r.nodes_cores(), 2),
                opt(r.generator_cores(), 2),
                step.verdict.describe(self.p99_bound_ms)
            );
        }
        let _ = writeln!(
            s,
            "(node p99: upper bound of the nodes' histogram bucket holding their p99, in ms; \
             node µs/d: node CPU per delivery, split user/kernel; nodes, gen: cores used over \
             the step's window)"
        );
        match self.highest_clean() {
            Some(h) => {
                let _ = writeln!(
                    s,
                    "highest clean step: {:.1} publishes/s = {:.0} deliveries/s, p99 {:.2} ms",
                    h.rate,
                    h.report.delivery_rate(),
                    h.report.latency.p99
                );
            }
            None => s.push_str("highest clean step: none\n"),
        }
        let _ = writeln!(s, "stopped: {}", self.stop_reason);
        write_result(&mut s, 8, &self.failures());
        s
    }

    /// The report as one JSON object; each step carries its whole fanout report.
    pub fn json(&self) -> Value {
        let step_json = |s: &RampStep| {
            let r = &s.report;
            json!({
                "rate": s.rate,
                "publishers": r.publishers,
                "clean": s.verdict == Verdict::Clean,
                "verdict": s.verdict.describe(self.p99_bound_ms),
                "publishes_per_sec": r.publish_rate(),
                "deliveries_per_sec": r.delivery_rate(),
                "lost": r.lost,
                "duplicated": r.duplicated,
                "out_of_order": r.out_of_order,
                "p99_ms": r.latency.p99,
                "nodes_cpu_us_per_delivery": r.nodes_us_per_delivery(),
                "nodes_user_us_per_delivery": r.nodes_user_us_per_delivery(),
                "nodes_kernel_us_per_delivery": r.nodes_kernel_us_per_delivery(),
                "node_latency": r.node_latency.as_ref().map(NodeLatency::json),
                "nodes_cores": r.nodes_cores(),
                "generator_cores": r.generator_cores(),
                "report": r.json(),
            })
        };
        json!({
            "scenario": "ramp",
            "subscribers": self.subscribers,
            "ws_nodes": self.ws_nodes,
            "p99_bound_ms": self.p99_bound_ms,
            "steps": self.steps.iter().map(step_json).collect::<Vec<_>>(),
            "highest_clean": self.highest_clean().map(step_json),
            "first_unclean": self.first_unclean().map(step_json),
            "stop_reason": self.stop_reason,
            "failures": self.failures(),
            "ok": self.failures().is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::latency::LatencySummary;
    use crate::measure::scrape::Bound;

    fn step(rate: f64, p99: f64, lost: u64) -> Report {
        Report {
            target_rate: rate,
            measure_secs: 10.0,
            publishes_measured: (rate * 10.0) as u64,
            lost,
            latency: LatencySummary {
                count: 1,
                p99,
                ..LatencySummary::default()
            },
            ..Report::default()
        }
    }

    fn ramp(steps: &[(f64, Report)]) -> RampReport {
        RampReport {
            p99_bound_ms: 100.0,
            steps: steps
                .iter()
                .map(|(rate, r)| RampStep {
                    rate: *rate,
                    verdict: judge(r, 100.0),
                    report: r.clone(),
                })
                .collect(),
            stop_reason: "test".into(),
            ..RampReport::default()
        }
    }

    #[test]
    fn highest_clean_step_and_failures() {
        let r = ramp(&[
            (50.0, step(50.0, 5.0, 0)),
            (100.0, step(100.0, 8.0, 0)),
            (200.0, step(200.0, 300.0, 0)),
        ]);
        assert_eq!(r.highest_clean().map(|s| s.rate), Some(100.0));
        assert_eq!(r.first_unclean().map(|s| s.rate), Some(200.0));
        assert!(r.failures().is_empty(), "{:?}", r.failures());
        let text = r.render();
        assert!(
            text.contains("highest clean step: 100.0 publishes/s"),
            "{text}"
        );
        assert!(text.contains("p99 300.0 ms > 100 ms"), "{text}");
        let j = r.json();
        assert_eq!(j["highest_clean"]["rate"], 100.0);
        assert_eq!(j["steps"].as_array().map(Vec::len), Some(3));
        assert_eq!(j["ok"], true);
        assert!(j["steps"][0]["node_latency"].is_null());

        // The nodes' p99 bound and the user/kernel split, when known.
        let mut known = step(100.0, 8.0, 0);
        known.deliveries = 1_000_000;
        known.nodes = vec![crate::measure::usage::ProcUsage {
            cpu_secs: Some(3.0),
            user_secs: Some(1.0),
            ..Default::default()
        }];
        known.node_latency = Some(NodeLatency {
            nodes: 1,
            nodes_read: 1,
            count: 10,
            p50: Some(Bound::AtMost(0.001)),
            p99: Some(Bound::AtMost(0.0025)),
        });
        let mut slow = known.clone();
        slow.node_latency = Some(NodeLatency {
            p99: Some(Bound::Above(10.0)),
            ..slow.node_latency.unwrap()
        });
        let r = ramp(&[(100.0, known), (200.0, slow)]);
        let text = r.render();
        assert!(text.contains("<=2.5      3.00   1.00/2.00"), "{text}");
        assert!(text.contains(">10000"), "{text}");
        let j = r.json();
        assert_eq!(j["steps"][0]["node_latency"]["p99_le_ms"], 2.5);
        assert_eq!(j["steps"][0]["nodes_kernel_us_per_delivery"], 2.0);

        // Loss at the first step: nothing was clean.
        let r = ramp(&[(50.0, step(50.0, 5.0, 7))]);
        assert!(r.highest_clean().is_none());
        assert!(r.failures()[0].contains("no step was clean"));

        // A duplicate at any step fails the ramp, even past the highest clean one.
        let mut dup = step(200.0, 5.0, 0);
        dup.duplicated = 2;
        let r = ramp(&[(100.0, step(100.0, 5.0, 0)), (200.0, dup)]);
        assert_eq!(r.highest_clean().map(|s| s.rate), Some(100.0));
        assert!(
            r.failures()[0].contains("2 duplicate"),
            "{:?}",
            r.failures()
        );
    }

    #[test]
    fn judging_a_step() {
        assert_eq!(judge(&step(100.0, 5.0, 0), 100.0), Verdict::Clean);
        assert_eq!(
            judge(&step(100.0, 150.0, 0), 100.0),
            Verdict::SlowP99(150.0)
        );
        assert!(matches!(
            judge(&step(100.0, 150.0, 3), 100.0),
            Verdict::Failed(f) if f[0].contains("3 deliveries lost")
        ));
        let mut short = step(100.0, 5.0, 0);
        short.publishes_measured = 900; // 90/s of 100/s
        assert!(matches!(judge(&short, 100.0), Verdict::Shortfall { .. }));
        let mut skipped = step(100.0, 5.0, 0);
        skipped.publishes_skipped = 1;
        assert!(matches!(
            judge(&skipped, 100.0),
            Verdict::Shortfall { skipped: 1, .. }
        ));
    }
}
