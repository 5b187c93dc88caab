//! The report of `fanout` and `rooms` (and of each `ramp` step): throughput, loss, order,
//! latency, and what each delivery cost the nodes, Redis and the generator.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::clients::protocol::Protocol;
use crate::measure::latency::LatencySummary;
use crate::measure::offsets::OffsetCheck;
use crate::measure::scrape::{NodeCounters, NodeLatency};
use crate::measure::usage::{MachineUsage, ProcUsage};
use crate::report::usage::short_name;
use crate::report::{offset_failures, offsets_json, per_sec, write_result};

/// Everything a fan-out (or rooms) run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `fanout` or `rooms`.
    pub scenario: &'static str,
    /// The subscribers' wire protocol.
    pub protocol: Protocol,
    /// Number of subscribers.
    pub subscribers: usize,
    /// Number of channels (subscribers are spread evenly over them).
    pub channels: usize,
    /// Number of `--ws` nodes.
    pub ws_nodes: usize,
    /// Number of `--api` nodes.
    pub api_nodes: usize,
    /// Number of publisher tasks.
    pub publishers: usize,
    /// The channel (the first one, with several).
    pub channel: String,
    /// Target publishes per second.
    pub target_rate: f64,
    /// Size of each published `data`, bytes.
    pub payload: usize,
    /// Seconds spent connecting and subscribing everyone.
    pub setup_secs: f64,
    /// Length of the measure window (publishing after the warm-up), seconds.
    pub measure_secs: f64,
    /// Length of the window over which CPU was read (the measure window and the drain).
    pub window_secs: f64,
    /// Publishes attempted over the whole run, warm-up included.
    pub publishes_attempted: u64,
    /// Publishes accepted (2xx) in the measure window.
    pub publishes_measured: u64,
    /// Publishes answered with a non-2xx status, by status.
    pub publish_status_errors: Vec<(u16, u64)>,
    /// Publishes without an answer (connection failure or timeout).
    pub publish_transport_errors: u64,
    /// The first publish error seen, for the report.
    pub first_publish_error: Option<String>,
    /// Scheduled publishes skipped because a publisher was more than 100 ms behind.
    pub publishes_skipped: u64,
    /// Time from sending a measured publish to its 2xx answer.
    pub publish_latency: LatencySummary,
    /// Deliveries of measured messages, all subscribers together.
    pub deliveries: u64,
    /// Deliveries that the measured publishes should have produced.
    pub expected_deliveries: u64,
    /// Measured messages some subscriber never received.
    pub lost: u64,
    /// Deliveries whose seq equalled the previous one of the same publisher.
    pub duplicated: u64,
    /// Deliveries whose seq was below the previous one of the same publisher.
    pub out_of_order: u64,
    /// Subscribers the server disconnected (or that failed) during the run.
    pub disconnected: u64,
    /// A few of their reasons.
    pub disconnect_reasons: Vec<String>,
    /// `error` replies and unexpected frames seen by subscribers.
    pub unexpected_frames: u64,
    /// Offset checks of all subscribers together, when the channel has history.
    pub offsets: Option<OffsetCheck>,
    /// Subscribers whose offsets were checked.
    pub offset_subscribers: usize,
    /// Seconds from the last publish until every subscriber had the last message.
    pub drain_secs: f64,
    /// Whether the drain completed before its timeout.
    pub drained: bool,
    /// Latency of measured deliveries.
    pub latency: LatencySummary,
    /// The nodes' own delivery latency over the window, when their `/metrics` were read.
    pub node_latency: Option<NodeLatency>,
    /// The nodes given with `--node-pid`.
    pub nodes: Vec<ProcUsage>,
    /// The generator itself.
    pub generator: ProcUsage,
    /// The Redis server, when `--redis-pid` was given.
    pub redis: Option<ProcUsage>,
    /// The whole machine over the window, when `/proc/stat` was readable.
    pub machine: Option<MachineUsage>,
    /// The nodes' own counters, one entry per `--api` node.
    pub node_counters: Vec<NodeCounters>,
    /// Generator runtime threads.
    pub runtime_threads: usize,
    /// Clock ticks per second used to convert CPU times.
    pub clk_tck: u64,
    /// Whether `clk_tck` was read from the kernel (else assumed 100).
    pub clk_tck_read: bool,
}

impl Report {
    /// Publish errors of any kind.
    pub fn publish_errors(&self) -> u64 {
        self.publish_transport_errors
            + self
                .publish_status_errors
                .iter()
                .map(|(_, n)| n)
                .sum::<u64>()
    }

    /// CPU seconds of the nodes, Redis and the generator over the window (those known).
    pub fn measured_cpu_secs(&self) -> f64 {
        self.nodes
            .iter()
            .chain(&self.redis)
            .chain(std::iter::once(&self.generator))
            .filter_map(|u| u.cpu_secs)
            .sum()
    }

    /// Measured publishes per second.
    pub fn publish_rate(&self) -> f64 {
        per_sec(self.publishes_measured, self.measure_secs)
    }

    /// Measured deliveries per second.
    pub fn delivery_rate(&self) -> f64 {
        per_sec(self.deliveries, self.measure_secs)
    }

    /// CPU microseconds per delivery of all `--node-pid` nodes together, when all were read.
    pub fn nodes_us_per_delivery(&self) -> Option<f64> {
        let cpu: Option<f64> = self.nodes.iter().map(|n| n.cpu_secs).sum();
        cpu.filter(|_| self.deliveries > 0 && !self.nodes.is_empty())
            .map(|cpu| cpu * 1e6 / self.deliveries as f64)
    }

    /// User-mode CPU microseconds per delivery of all `--node-pid` nodes together.
    pub fn nodes_user_us_per_delivery(&self) -> Option<f64> {
        let user: Option<f64> = self.nodes.iter().map(|n| n.user_secs).sum();
        user.filter(|_| self.deliveries > 0 && !self.nodes.is_empty())
            .map(|user| user * 1e6 / self.deliveries as f64)
    }

    /// Kernel-mode CPU microseconds per delivery of all `--node-pid` nodes together.
    pub fn nodes_kernel_us_per_delivery(&self) -> Option<f64> {
        Some((self.nodes_us_per_delivery()? - self.nodes_user_us_per_delivery()?).max(0.0))
    }

    /// Cores the nodes together used over the CPU window.
    pub fn nodes_cores(&self) -> Option<f64> {
        let cpu: Option<f64> = self.nodes.iter().map(|n| n.cpu_secs).sum();
        cpu.filter(|_| self.window_secs > 0.0 && !self.nodes.is_empty())
            .map(|cpu| cpu / self.window_secs)
    }

    /// Cores the generator used over the CPU window.
    pub fn generator_cores(&self) -> Option<f64> {
        self.generator
            .cpu_secs
            .filter(|_| self.window_secs > 0.0)
            .map(|cpu| cpu / self.window_secs)
    }

    /// What went wrong, one line each; empty for a clean run. A non-empty list makes the
    /// process exit non-zero.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.lost > 0 {
            f.push(format!("{} deliveries lost", self.lost));
        }
        if self.duplicated > 0 {
            f.push(format!("{} duplicate deliveries", self.duplicated));
        }
        if self.out_of_order > 0 {
            f.push(format!("{} out-of-order deliveries", self.out_of_order));
        }
        if self.disconnected > 0 {
            f.push(format!("{} subscribers disconnected", self.disconnected));
        }
        if self.publish_errors() > 0 {
            f.push(format!("{} publish errors", self.publish_errors()));
        }
        if self.publishes_measured == 0 {
            f.push("nothing was published in the measure window".to_owned());
        }
        if let Some(o) = &self.offsets {
            f.extend(offset_failures(o));
        }
        f
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let l = &self.latency;
        let what = if self.channels > 1 {
            format!(
                "{} channels × {} subscribers ({} in all) on {} node(s), channels {:?}...",
                self.channels,
                self.subscribers / self.channels,
                self.subscribers,
                self.ws_nodes,
                self.channel
            )
        } else {
            format!(
                "{} subscribers on {} node(s), channel {:?}",
                self.subscribers, self.ws_nodes, self.channel
            )
        };
        let _ = writeln!(
            s,
            "{}: {what}, {} publisher(s) over {} API node(s), target {:.1}/s, payload {} B",
            self.scenario, self.publishers, self.api_nodes, self.target_rate, self.payload
        );
        if self.protocol != Protocol::Json {
            let _ = writeln!(
                s,
                "protocol:    subscribers on the {} protocol",
                self.protocol.as_str()
            );
        }
        let _ = writeln!(
            s,
            "setup:       {} connected and subscribed in {:.2} s ({:.0}/s)",
            self.subscribers,
            self.setup_secs,
            per_sec(self.subscribers as u64, self.setup_secs)
        );
        let _ = writeln!(
            s,
            "publishes:   {:.1}/s ({} accepted in the {:.2} s measure window; {} attempted in all), \
             errors {}, skipped {}",
            self.publish_rate(),
            self.publishes_measured,
            self.measure_secs,
            self.publishes_attempted,
            self.publish_errors(),
            self.publishes_skipped
        );
        let p = &self.publish_latency;
        let _ = writeln!(
            s,
            "publish ms:  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  (API call to its answer)",
            p.p50, p.p90, p.p99, p.max
        );
        if self.publish_errors() > 0 {
            let statuses: Vec<String> = self
                .publish_status_errors
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            let _ = writeln!(
                s,
                "             by status [{}], transport {}; first: {}",
                statuses.join(", "),
                self.publish_transport_errors,
                self.first_publish_error.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(
            s,
            "deliveries:  {:.0}/s ({} of {} expected)",
            self.delivery_rate(),
            self.deliveries,
            self.expected_deliveries
        );
        let _ = writeln!(
            s,
            "integrity:   lost {}, duplicated {}, out-of-order {}, disconnected {}, unexpected frames {}; \
             drain {:.2} s{}",
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.disconnected,
            self.unexpected_frames,
            self.drain_secs,
            if self.drained { "" } else { " (timed out)" }
        );
        for r in &self.disconnect_reasons {
            let _ = writeln!(s, "             disconnect: {r}");
        }
        if let Some(o) = &self.offsets {
            let _ = writeln!(
                s,
                "offsets:     {} checked on {} subscriber(s): gaps {} ({} offsets skipped), \
                 repeats {}, missing {}",
                o.checked, self.offset_subscribers, o.gaps, o.skipped, o.repeats, o.missing
            );
        }
        let _ = writeln!(
            s,
            "latency ms:  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
        if let Some(n) = &self.node_latency {
            let _ = writeln!(s, "node-side latency: {}", n.describe());
        }
        for n in &self.nodes {
            let _ = writeln!(s, "{}", n.line());
        }
        if self.nodes.len() > 1
            && let (Some(per), Some(cores)) = (self.nodes_us_per_delivery(), self.nodes_cores())
        {
            let split = match (
                self.nodes_user_us_per_delivery(),
                self.nodes_kernel_us_per_delivery(),
            ) {
                (Some(u), Some(k)) => format!(" (user {u:.2} µs, kernel {k:.2} µs)"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "nodes total: {per:.2} µs/delivery{split}, {cores:.2} cores over the {:.2} s window",
                self.window_secs
            );
        }
        if let Some(r) = &self.redis {
            let _ = write!(s, "{}", r.line());
            match r.cpu_secs.filter(|_| self.publishes_measured > 0) {
                Some(cpu) => {
                    let _ = writeln!(
                        s,
                        "; {:.1} µs/publish",
                        cpu * 1e6 / self.publishes_measured as f64
                    );
                }
                None => s.push('\n'),
            }
        }
        for n in &self.node_counters {
            let _ = match &n.deltas {
                Some(d) => {
                    let parts: Vec<String> = d
                        .iter()
                        .map(|(name, v)| format!("{} +{v}", short_name(name)))
                        .collect();
                    writeln!(s, "node metrics {}: {}", n.api, parts.join(", "))
                }
                None => writeln!(s, "node metrics {}: /metrics unreadable", n.api),
            };
        }
        let _ = writeln!(
            s,
            "{} ({} runtime thread(s))",
            self.generator.line(),
            self.runtime_threads
        );
        if let Some(m) = &self.machine {
            let _ = writeln!(
                s,
                "machine:     {} over the window; other processes {:.2} cores",
                m.busy_text(),
                m.other_cores(self.measured_cpu_secs())
            );
        }
        let _ = writeln!(
            s,
            "cpu times in clock ticks of 1/{} s ({})",
            self.clk_tck,
            if self.clk_tck_read {
                "read from /proc/self/auxv"
            } else {
                "assumed"
            }
        );
        write_result(&mut s, 13, &self.failures());
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "subscribers": self.subscribers,
            "ws_nodes": self.ws_nodes,
            "api_nodes": self.api_nodes,
            "publishers": self.publishers,
            "channel": self.channel,
            "target_rate": self.target_rate,
            "payload": self.payload,
            "setup_secs": self.setup_secs,
            "measure_secs": self.measure_secs,
            "publishes_attempted": self.publishes_attempted,
            "publishes_measured": self.publishes_measured,
            "publishes_per_sec": self.publish_rate(),
            "publish_errors": self.publish_errors(),
            "publish_status_errors": self.publish_status_errors.iter()
                .map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "publish_transport_errors": self.publish_transport_errors,
            "publishes_skipped": self.publishes_skipped,
            "deliveries": self.deliveries,
            "expected_deliveries": self.expected_deliveries,
            "deliveries_per_sec": self.delivery_rate(),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "disconnected": self.disconnected,
            "unexpected_frames": self.unexpected_frames,
            "offsets": self.offsets.as_ref().map(|o| offsets_json(o, self.offset_subscribers)),
            "drain_secs": self.drain_secs,
            "drained": self.drained,
            "latency_ms": self.latency.json(),
            "nodes": self.nodes.iter().map(ProcUsage::json).collect::<Vec<_>>(),
            "generator": self.generator.json(),
            "redis": self.redis.as_ref().map(|r| {
                let mut v = r.json();
                v["cpu_us_per_publish"] = json!(r.cpu_secs
                    .filter(|_| self.publishes_measured > 0)
                    .map(|cpu| cpu * 1e6 / self.publishes_measured as f64));
                v
            }),
            "node_counters": self.node_counters.iter().map(|n| json!({
                "api": n.api,
                "deltas": n.deltas.as_ref().map(|d| d.iter()
                    .map(|(name, v)| ((*name).to_owned(), json!(v)))
                    .collect::<serde_json::Map<_, _>>()),
            })).collect::<Vec<_>>(),
            "machine": self.machine.map(|m| json!({
                "cores": m.cores(),
                "busy_cores": m.busy_cores(),
                "other_cores": m.other_cores(self.measured_cpu_secs()),
            })),
            "runtime_threads": self.runtime_threads,
            "clk_tck": self.clk_tck,
            "clk_tck_read": self.clk_tck_read,
            "failures": self.failures(),
            "ok": self.failures().is_empty(),
        });
        // Added one by one: one `json!` this large exceeds the macro recursion limit.
        for (key, value) in [
            ("scenario", json!(self.scenario)),
            ("protocol", json!(self.protocol.as_str())),
            ("channels", json!(self.channels)),
            (
                "nodes_cpu_us_per_delivery",
                json!(self.nodes_us_per_delivery()),
            ),
            (
                "nodes_user_us_per_delivery",
                json!(self.nodes_user_us_per_delivery()),
            ),
            (
                "nodes_kernel_us_per_delivery",
                json!(self.nodes_kernel_us_per_delivery()),
            ),
            (
                "node_latency",
                json!(self.node_latency.as_ref().map(NodeLatency::json)),
            ),
            ("nodes_cores", json!(self.nodes_cores())),
            ("window_secs", json!(self.window_secs)),
            ("generator_cores", json!(self.generator_cores())),
            (
                "publish_latency_ms",
                self.publish_latency.json_without_p999(),
            ),
        ] {
            v[key] = value;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_what_went_wrong() {
        let ok = Report {
            publishes_measured: 10,
            ..Report::default()
        };
        assert!(ok.failures().is_empty());
        let bad = Report {
            publishes_measured: 10,
            lost: 2,
            out_of_order: 1,
            publish_status_errors: vec![(503, 4)],
            ..Report::default()
        };
        let f = bad.failures().join("; ");
        assert!(
            f.contains("2 deliveries lost") && f.contains("1 out-of-order"),
            "{f}"
        );
        assert!(f.contains("4 publish errors"), "{f}");
        assert!(!f.contains("duplicate"), "{f}");
        assert!(!f.contains("offset"), "{f}");
        let gaps = Report {
            publishes_measured: 10,
            offsets: Some(OffsetCheck {
                checked: 10,
                gaps: 1,
                skipped: 3,
                ..OffsetCheck::default()
            }),
            ..Report::default()
        };
        assert_eq!(gaps.failures(), ["1 offset gaps (3 offsets skipped)"]);
    }

    #[test]
    fn cpu_per_delivery() {
        let u = ProcUsage {
            deliveries: 1_000_000,
            cpu_secs: Some(2.5),
            ..ProcUsage::default()
        };
        assert_eq!(u.us_per_delivery(), Some(2.5));
        assert!(u.json()["cpu_us_per_delivery"].as_f64().is_some());
        assert_eq!(u.user_us_per_delivery(), None);
        assert!(u.line().contains("2.50 µs/delivery (1000000 deliveries)"));
        let split = ProcUsage {
            user_secs: Some(0.5),
            ..u
        };
        assert_eq!(split.user_us_per_delivery(), Some(0.5));
        assert_eq!(split.kernel_us_per_delivery(), Some(2.0));
        assert!(
            split
                .line()
                .contains("2.50 µs/delivery (user 0.50, kernel 2.00; 1000000 deliveries)"),
            "{}",
            split.line()
        );
        assert_eq!(split.json()["kernel_us_per_delivery"], 2.0);
        let node = |user| ProcUsage {
            deliveries: 500_000,
            cpu_secs: Some(1.0),
            user_secs: user,
            ..ProcUsage::default()
        };
        let r = Report {
            deliveries: 1_000_000,
            window_secs: 2.0,
            nodes: vec![node(Some(0.25)), node(Some(0.5))],
            ..Report::default()
        };
        assert_eq!(r.nodes_us_per_delivery(), Some(2.0));
        assert_eq!(r.nodes_user_us_per_delivery(), Some(0.75));
        assert_eq!(r.nodes_kernel_us_per_delivery(), Some(1.25));
        assert!(
            r.render().contains(
                "nodes total: 2.00 µs/delivery (user 0.75 µs, kernel 1.25 µs), 1.00 cores"
            ),
            "{}",
            r.render()
        );
        assert_eq!(r.json()["nodes_kernel_us_per_delivery"], 1.25);
        let partial = Report {
            nodes: vec![node(Some(0.25)), node(None)],
            ..r
        };
        assert_eq!(partial.nodes_user_us_per_delivery(), None);
        assert_eq!(partial.nodes_kernel_us_per_delivery(), None);
    }

    #[test]
    fn a_missing_node_histogram_is_said_not_failed() {
        let missing = NodeLatency {
            nodes: 2,
            ..NodeLatency::default()
        };
        let r = Report {
            publishes_measured: 1,
            node_latency: Some(missing),
            ..Report::default()
        };
        assert!(
            r.render()
                .contains("node-side latency: no switchboard_delivery_latency_seconds")
        );
        assert!(r.failures().is_empty());
        assert_eq!(r.json()["node_latency"]["nodes_read"], 0);
        assert!(Report::default().json()["node_latency"].is_null());
    }
}
