//! The report of `chaos`: the faults that ran, the publishes, the subscribers' reconnects and
//! signals, every lost message described, and last the one accounting line
//! (`chaos: seed=... lost=...`) that scripts/chaos.sh and the CI chaos smoke step read.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::report::write_result;
use crate::scenarios::chaos::accounting::{Accounting, Lost};
use crate::scenarios::chaos::faults::{FaultKind, FaultRecord};
use crate::scenarios::chaos::subscriber::SubLog;
use crate::scenarios::chaos::traffic::{Chan, PubLog, unkey};

/// Everything a chaos run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub duration: f64,
    pub kinds: Vec<FaultKind>,
    pub faults: Vec<FaultRecord>,
    pub fault_errors: Vec<String>,
    pub accounting: Accounting,
    pub channels: Vec<Chan>,
    pub node_ids: Vec<String>,
    pub subscribers: usize,
    pub never_subscribed: usize,
    pub missing_marker: Vec<usize>,
    /// For the first few of those: where each was and what it last received.
    pub missing_marker_details: Vec<String>,
    pub settle_secs: f64,
    pub settled: bool,
    pub api_attempted: u64,
    pub client_attempted: u64,
    pub client_acknowledged: u64,
    pub publish_errors: BTreeMap<String, u64>,
    pub reconnects: u64,
    pub failed_attempts: u64,
    pub recovered: (u64, u64),
    pub missed_pushes: u64,
    pub epoch_changes: u64,
    pub disconnects: BTreeMap<String, u64>,
    pub unexpected: u64,
    pub first_unexpected: Option<String>,
    pub first_offset_error: Option<String>,
    pub work_dir: String,
}

impl ChaosReport {
    /// Adds up what the publishers and subscribers did; describes the first `details`
    /// subscribers without their final marker.
    pub fn add_traffic(&mut self, pubs: &[PubLog], subs: &[SubLog], details: usize) {
        for p in pubs {
            for s in &p.sent {
                if s.client {
                    self.client_attempted += 1;
                    self.client_acknowledged += u64::from(s.ack_us.is_some());
                } else {
                    self.api_attempted += 1;
                }
            }
            for (e, n) in &p.errors {
                *self.publish_errors.entry(e.clone()).or_default() += n;
            }
        }
        for s in subs {
            if s.first_sub_us.is_none() {
                self.never_subscribed += 1;
            } else if !s.got_marker {
                self.missing_marker.push(s.index);
                if self.missing_marker_details.len() < details {
                    let node = |i: usize| self.node_ids.get(i).map_or("?", String::as_str);
                    let conn = match s.connections.last() {
                        Some(&(from, u64::MAX, n)) => {
                            format!("on {} since {:.2} s", node(n), from as f64 / 1e6)
                        }
                        Some(&(_, to, n)) => {
                            format!("off {} since {:.2} s", node(n), to as f64 / 1e6)
                        }
                        None => "never connected".to_owned(),
                    };
                    let last = s.received.last().map_or("nothing".to_owned(), |m| {
                        format!("{:.2} s", m.at_us as f64 / 1e6)
                    });
                    let detail = format!(
                        "no marker: subscriber {} of {} {conn}, last message received at {last}, \
                         {} connections",
                        s.index,
                        self.channels[s.channel].name,
                        s.connections.len()
                    );
                    self.missing_marker_details.push(detail);
                }
            }
            self.reconnects += s.connections.len().saturating_sub(1) as u64;
            self.failed_attempts += s.failed_attempts;
            self.recovered.0 += s.recovered.0;
            self.recovered.1 += s.recovered.1;
            self.missed_pushes += s.missed_pushes;
            self.epoch_changes += s.epoch_changes;
            self.unexpected += s.unexpected;
            if self.first_unexpected.is_none() {
                self.first_unexpected.clone_from(&s.first_unexpected);
            }
            if self.first_offset_error.is_none()
                && let Some(e) = &s.first_offset_error
            {
                self.first_offset_error = Some(format!("subscriber {}: {e}", s.index));
            }
            for (code, n) in &s.disconnects {
                *self.disconnects.entry(code.clone()).or_default() += n;
            }
        }
    }

    fn fault_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for f in &self.faults {
            *m.entry(f.kind.name()).or_default() += 1;
        }
        m
    }

    /// What went wrong, one line each; empty for a clean run.
    pub fn failures(&self) -> Vec<String> {
        let a = &self.accounting;
        let mut f = Vec::new();
        if a.lost > 0 {
            f.push(format!("{} messages lost", a.lost));
        }
        if a.duplicates > 0 {
            f.push(format!("{} duplicates", a.duplicates));
        }
        if a.order_violations > 0 {
            f.push(format!(
                "{} order violations (first offset error: {})",
                a.order_violations,
                self.first_offset_error.as_deref().unwrap_or("-")
            ));
        }
        if a.unknown_received > 0 {
            f.push(format!("{} messages nobody sent", a.unknown_received));
        }
        if self.never_subscribed > 0 {
            f.push(format!(
                "{} subscribers never subscribed",
                self.never_subscribed
            ));
        }
        if !self.missing_marker.is_empty() {
            f.push(format!(
                "{} subscribers did not receive the final marker within the settle timeout \
                 (first: {:?})",
                self.missing_marker.len(),
                &self.missing_marker[..self.missing_marker.len().min(5)]
            ));
        }
        if !self.fault_errors.is_empty() {
            f.push(format!(
                "faults that failed: {}",
                self.fault_errors.join("; ")
            ));
        }
        if a.acknowledged == 0 {
            f.push("nothing was acknowledged".to_owned());
        }
        f
    }

    fn describe(&self, l: &Lost) -> String {
        let (p, seq) = unkey(l.key);
        let s = &l.sent;
        let chan = self
            .channels
            .get(usize::from(s.channel))
            .map_or("?", |c| c.name.as_str());
        let node = |i: usize| self.node_ids.get(i).map_or("?", String::as_str);
        let t = |us: u64| us as f64 / 1e6;
        // Faults from 5 s before the publish to 1 s after it.
        let around: Vec<String> = self
            .faults
            .iter()
            .filter(|f| f.start_us <= s.start_us + 1_000_000 && f.end_us + 5_000_000 >= s.start_us)
            .map(|f| {
                format!(
                    "{} {:.2}-{:.2} s ({})",
                    f.kind.name(),
                    t(f.start_us),
                    t(f.end_us),
                    f.note
                )
            })
            .collect();
        format!(
            "lost: {chan} p{p}#{seq}{} published {:.3}-{:.3} s via {} ({}) -> subscriber {} {}; \
             faults around: {}",
            s.offset.map(|o| format!(" offset {o}")).unwrap_or_default(),
            t(s.start_us),
            t(s.ack_us.unwrap_or(s.start_us)),
            node(usize::from(s.node)),
            if s.client {
                "client publish"
            } else {
                "server API"
            },
            l.subscriber,
            l.node
                .map(|n| format!("on {}", node(n)))
                .unwrap_or_else(|| "(not connected then)".to_owned()),
            if around.is_empty() {
                "none".to_owned()
            } else {
                around.join(", ")
            }
        )
    }

    /// The one accounting line.
    pub fn line(&self) -> String {
        let a = &self.accounting;
        format!(
            "chaos: seed={} duration={}s faults={} acknowledged={} expected={} delivered={} \
             repaired={} signalled={} lost={} duplicates={} order_violations={}",
            self.seed,
            self.duration,
            self.faults.len(),
            a.acknowledged,
            a.expected,
            a.delivered,
            a.repaired,
            a.signalled,
            a.lost,
            a.duplicates,
            a.order_violations
        )
    }

    /// The report: details, then the accounting line last.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let counts: Vec<String> = self
            .fault_counts()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "faults:      {}",
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        );
        let errors: Vec<String> = self
            .publish_errors
            .iter()
            .map(|(e, n)| format!("{e} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "publishes:   {} through the API, {} as clients ({} acknowledged); not \
             acknowledged: {}",
            self.api_attempted,
            self.client_attempted,
            self.client_acknowledged,
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            }
        );
        let disconnects: Vec<String> = self
            .disconnects
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(
            s,
            "subscribers: {} ({} never subscribed); {} reconnects, {} failed attempts; \
             recovered:true {}, recovered:false {}; missed pushes {}; epoch changes {}; \
             disconnect notices {{{}}}; unacknowledged messages received {}; unexpected frames \
             {}{}",
            self.subscribers,
            self.never_subscribed,
            self.reconnects,
            self.failed_attempts,
            self.recovered.0,
            self.recovered.1,
            self.missed_pushes,
            self.epoch_changes,
            disconnects.join(", "),
            self.accounting.unacknowledged_received,
            self.unexpected,
            self.first_unexpected
                .as_ref()
                .map(|u| format!(" (first: {u})"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "settle:      {} in {:.2} s",
            if self.settled {
                "every subscriber has its channel's final marker"
            } else {
                "NOT every subscriber got its channel's final marker"
            },
            self.settle_secs
        );
        for l in &self.accounting.lost_examples {
            let _ = writeln!(s, "{}", self.describe(l));
        }
        for d in &self.missing_marker_details {
            let _ = writeln!(s, "{d}");
        }
        let failures = self.failures();
        if !failures.is_empty() {
            let _ = writeln!(s, "logs:        {}", self.work_dir);
        }
        write_result(&mut s, 13, &failures);
        let _ = writeln!(s, "{}", self.line());
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let a = &self.accounting;
        json!({
            "scenario": "chaos",
            "seed": self.seed,
            "duration": self.duration,
            "fault_kinds": self.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "faults": self.faults.len(),
            "fault_counts": self.fault_counts(),
            "acknowledged": a.acknowledged,
            "expected": a.expected,
            "delivered": a.delivered,
            "repaired": a.repaired,
            "signalled": a.signalled,
            "lost": a.lost,
            "duplicates": a.duplicates,
            "order_violations": a.order_violations,
            "unacknowledged_received": a.unacknowledged_received,
            "unknown_received": a.unknown_received,
            "lost_examples": a.lost_examples.iter().map(|l| self.describe(l)).collect::<Vec<_>>(),
            "subscribers": self.subscribers,
            "reconnects": self.reconnects,
            "recovered_true": self.recovered.0,
            "recovered_false": self.recovered.1,
            "missed_pushes": self.missed_pushes,
            "epoch_changes": self.epoch_changes,
            "settled": self.settled,
            "failures": self.failures(),
            "ok": self.failures().is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scripts/chaos.sh and .ci/steps/60-chaos-smoke.sh read these two lines: the accounting
    /// line (`^chaos: seed=`, ` lost=0 `) and the `faults:` line (each kind by name).
    #[test]
    fn the_lines_scripts_read() {
        let fault = |kind| FaultRecord {
            kind,
            note: String::new(),
            start_us: 0,
            end_us: 1,
        };
        let r = ChaosReport {
            seed: 7,
            duration: 60.0,
            faults: vec![
                fault(FaultKind::NodeKill),
                fault(FaultKind::Burst),
                fault(FaultKind::NodeKill),
            ],
            accounting: Accounting {
                acknowledged: 10,
                expected: 40,
                delivered: 37,
                repaired: 2,
                signalled: 1,
                ..Accounting::default()
            },
            ..ChaosReport::default()
        };
        assert_eq!(
            r.line(),
            "chaos: seed=7 duration=60s faults=3 acknowledged=10 expected=40 delivered=37 \
             repaired=2 signalled=1 lost=0 duplicates=0 order_violations=0"
        );
        let text = r.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.contains(&"faults:      burst 1, node-kill 2"),
            "{text}"
        );
        assert!(lines.contains(&"result:      OK"), "{text}");
        assert!(text.ends_with(&format!("{}\n", r.line())), "{text}");
        assert_eq!(r.json()["lost"], 0);
    }
}
