//! The lines and JSON of the resources a run measured: a process's CPU and memory, the
//! nodes' own delivery latency and counters.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::measure::scrape::{Bound, NodeLatency};
use crate::measure::usage::ProcUsage;

impl ProcUsage {
    /// ` (user 0.71, kernel 6.31` when the split is known: the caller closes it.
    fn split(&self) -> String {
        match (self.user_us_per_delivery(), self.kernel_us_per_delivery()) {
            (Some(u), Some(k)) => format!(" (user {u:.2}, kernel {k:.2}; "),
            _ => " (".to_owned(),
        }
    }

    pub(crate) fn line(&self) -> String {
        let mut s = format!("{}: ", self.label);
        if let Some(e) = &self.error {
            let _ = write!(s, "unreadable ({e})");
            return s;
        }
        match (self.cpu_secs, self.us_per_delivery()) {
            (Some(cpu), Some(per)) => {
                let _ = write!(
                    s,
                    "cpu {cpu:.2} s = {per:.2} µs/delivery{}{} deliveries)",
                    self.split(),
                    self.deliveries
                );
            }
            (Some(cpu), None) => {
                let _ = write!(s, "cpu {cpu:.2} s (no deliveries)");
            }
            _ => s.push_str("cpu unknown"),
        }
        let _ = write!(
            s,
            ", rss {:.1} MiB (peak {:.1} MiB)",
            self.rss_kb as f64 / 1024.0,
            self.peak_rss_kb as f64 / 1024.0
        );
        s
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "label": self.label,
            "pid": self.pid,
            "deliveries": self.deliveries,
            "cpu_secs": self.cpu_secs,
            "cpu_us_per_delivery": self.us_per_delivery(),
            "user_secs": self.user_secs,
            "user_us_per_delivery": self.user_us_per_delivery(),
            "kernel_us_per_delivery": self.kernel_us_per_delivery(),
            "rss_kb": self.rss_kb,
            "peak_rss_kb": self.peak_rss_kb,
            "error": self.error,
        })
    }
}

impl NodeLatency {
    /// The report line (without its `node-side latency:` label).
    pub fn describe(&self) -> String {
        if self.nodes_read == 0 {
            return format!(
                "no switchboard_delivery_latency_seconds histogram read from the {} node(s)' \
                 /metrics (missing, or /metrics unreadable)",
                self.nodes
            );
        }
        let from = if self.nodes_read == self.nodes {
            "from the nodes' histograms".to_owned()
        } else {
            format!(
                "from the histograms of {} of {} nodes",
                self.nodes_read, self.nodes
            )
        };
        match (self.p50, self.p99) {
            (Some(p50), Some(p99)) => format!(
                "p50 {}, p99 {} (n={}, {from})",
                bound_text(p50),
                bound_text(p99),
                self.count
            ),
            _ => format!("no deliveries counted (n=0, {from})"),
        }
    }

    /// The JSON object: `p50_le_ms` / `p99_le_ms` are the upper bounds of the buckets
    /// holding the quantiles, in ms; when a quantile is in the `+Inf` bucket its `_le_ms` is
    /// null and `_above_ms` names the largest finite bound.
    pub fn json(&self) -> Value {
        let le = |b: Option<Bound>| match b {
            Some(Bound::AtMost(s)) => Some(s * 1e3),
            _ => None,
        };
        let above = |b: Option<Bound>| match b {
            Some(Bound::Above(s)) => Some(s * 1e3),
            _ => None,
        };
        json!({
            "nodes": self.nodes,
            "nodes_read": self.nodes_read,
            "count": self.count,
            "p50_le_ms": le(self.p50),
            "p99_le_ms": le(self.p99),
            "p50_above_ms": above(self.p50),
            "p99_above_ms": above(self.p99),
        })
    }
}

/// `<= 2.5 ms`, `> 10000 ms`.
fn bound_text(b: Bound) -> String {
    match b {
        Bound::AtMost(s) => format!("<= {} ms", bound_ms(s)),
        Bound::Above(s) => format!("> {} ms", bound_ms(s)),
    }
}

/// A bucket bound in seconds as milliseconds without trailing zeros: 0.00025 -> `0.25`.
pub fn bound_ms(secs: f64) -> String {
    let t = format!("{:.3}", secs * 1e3);
    t.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `switchboard_messages_delivered_total` -> `messages_delivered`, for the human report.
pub(crate) fn short_name(name: &str) -> &str {
    let name = name.strip_prefix("switchboard_").unwrap_or(name);
    name.strip_suffix("_total").unwrap_or(name)
}

/// The nodes' p99 bound for a table: `<=5`, `>10000` (ms), `-` when unknown.
pub fn node_p99_text(n: Option<&NodeLatency>) -> String {
    match n.and_then(|n| n.p99) {
        Some(Bound::AtMost(s)) => format!("<={}", bound_ms(s)),
        Some(Bound::Above(s)) => format!(">{}", bound_ms(s)),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_latency_lines() {
        let n = NodeLatency {
            nodes: 2,
            nodes_read: 2,
            count: 450_000,
            p50: Some(Bound::AtMost(0.0025)),
            p99: Some(Bound::AtMost(0.005)),
        };
        assert_eq!(
            n.describe(),
            "p50 <= 2.5 ms, p99 <= 5 ms (n=450000, from the nodes' histograms)"
        );
        assert_eq!(n.json()["p99_le_ms"], 5.0);
        assert!(n.json()["p99_above_ms"].is_null());
        let slow = NodeLatency {
            nodes_read: 1,
            p50: Some(Bound::AtMost(0.00025)),
            p99: Some(Bound::Above(10.0)),
            ..n
        };
        assert_eq!(
            slow.describe(),
            "p50 <= 0.25 ms, p99 > 10000 ms (n=450000, from the histograms of 1 of 2 nodes)"
        );
        assert!(slow.json()["p99_le_ms"].is_null());
        assert_eq!(slow.json()["p99_above_ms"], 10000.0);
        let empty = NodeLatency {
            count: 0,
            p50: None,
            p99: None,
            ..n
        };
        assert!(empty.describe().starts_with("no deliveries counted (n=0"));
        let missing = NodeLatency {
            nodes: 2,
            ..NodeLatency::default()
        };
        assert!(
            missing
                .describe()
                .contains("no switchboard_delivery_latency_seconds")
        );
    }
}
