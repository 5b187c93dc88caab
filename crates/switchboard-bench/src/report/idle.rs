//! The report of `idle`: how fast the connections subscribed, and what the node's memory and
//! CPU say an idle subscribed connection costs.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::clients::protocol::Protocol;
use crate::measure::latency::LatencySummary;
use crate::measure::usage::MachineUsage;
use crate::report::{per_sec, write_result};

/// The node's memory and CPU, when `--node-pid` was given.
#[derive(Debug, Clone, Default)]
pub struct NodeFigures {
    /// The pid.
    pub pid: u32,
    /// RSS before the first connection, KiB.
    pub rss_before_kb: u64,
    /// RSS once every connection was subscribed, KiB.
    pub rss_connected_kb: u64,
    /// RSS at the end of the hold, KiB.
    pub rss_after_kb: u64,
    /// Peak RSS at the end of the hold, KiB.
    pub peak_rss_kb: u64,
    /// CPU seconds over the connect phase.
    pub connect_cpu_secs: f64,
    /// The user-mode part of `connect_cpu_secs`.
    pub connect_user_secs: f64,
    /// CPU seconds over the hold.
    pub hold_cpu_secs: f64,
}

/// Everything an idle run measured.
#[derive(Debug, Clone, Default)]
pub struct IdleReport {
    /// The node's URL.
    pub ws: String,
    /// The connections' wire protocol.
    pub protocol: Protocol,
    /// Connections asked for.
    pub connections: usize,
    /// Channels they subscribed to.
    pub channels: usize,
    /// Connections that subscribed.
    pub connected: usize,
    /// Connections whose setup failed.
    pub failed: usize,
    /// The first setup error.
    pub first_error: Option<String>,
    /// Seconds from the first connect to the last `subscribed`.
    pub connect_secs: f64,
    /// Connect + upgrade + welcome + subscribe + `subscribed`, per connection.
    pub connect_latency: LatencySummary,
    /// Seconds held.
    pub hold_secs: f64,
    /// Subscribed connections that ended before the generator closed them.
    pub disconnects: usize,
    /// A few of their reasons.
    pub disconnect_reasons: Vec<String>,
    /// Frames that were not expected on an idle connection.
    pub unexpected_frames: u64,
    /// The node, when its pid was given (or why it could not be read).
    pub node: Option<Result<NodeFigures, String>>,
    /// The generator's CPU seconds over the connect phase.
    pub generator_connect_cpu_secs: Option<f64>,
    /// The generator's RSS at the end of the hold, KiB.
    pub generator_rss_kb: u64,
    /// The machine over the connect phase.
    pub machine: Option<MachineUsage>,
}

impl IdleReport {
    /// Connections subscribed per second over the connect phase.
    pub fn connect_rate(&self) -> f64 {
        per_sec(self.connected as u64, self.connect_secs)
    }

    /// RSS per connection, KiB: (RSS at the end of the hold - RSS before) / connections.
    pub fn rss_per_connection_kb(&self) -> Option<f64> {
        match &self.node {
            Some(Ok(n)) if self.connected > 0 => {
                Some((n.rss_after_kb as f64 - n.rss_before_kb as f64) / self.connected as f64)
            }
            _ => None,
        }
    }

    /// The node's CPU microseconds per connection accepted (and subscribed).
    pub fn cpu_us_per_connection(&self) -> Option<f64> {
        match &self.node {
            Some(Ok(n)) if self.connected > 0 => {
                Some(n.connect_cpu_secs * 1e6 / self.connected as f64)
            }
            _ => None,
        }
    }

    /// The user-mode part of [`Self::cpu_us_per_connection`].
    pub fn user_us_per_connection(&self) -> Option<f64> {
        match &self.node {
            Some(Ok(n)) if self.connected > 0 => {
                Some(n.connect_user_secs * 1e6 / self.connected as f64)
            }
            _ => None,
        }
    }

    /// The kernel-mode part of [`Self::cpu_us_per_connection`].
    pub fn kernel_us_per_connection(&self) -> Option<f64> {
        Some((self.cpu_us_per_connection()? - self.user_us_per_connection()?).max(0.0))
    }

    /// What went wrong, one line each; empty for a clean run.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.failed > 0 {
            f.push(format!(
                "{} of {} connections failed to subscribe (first: {})",
                self.failed,
                self.connections,
                self.first_error.as_deref().unwrap_or("-")
            ));
        }
        if self.disconnects > 0 {
            f.push(format!(
                "{} connections ended during the hold (first: {})",
                self.disconnects,
                self.disconnect_reasons.first().map_or("-", String::as_str)
            ));
        }
        f
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let l = &self.connect_latency;
        let _ = writeln!(
            s,
            "idle: {} connections on {}, subscribed round-robin to {} channel(s), held {:.1} s",
            self.connections, self.ws, self.channels, self.hold_secs
        );
        if self.protocol != Protocol::Json {
            let _ = writeln!(
                s,
                "protocol:    connections on the {} protocol",
                self.protocol.as_str()
            );
        }
        let _ = writeln!(
            s,
            "connect:     {} subscribed in {:.2} s = {:.0} connections/s; {} failed",
            self.connected,
            self.connect_secs,
            self.connect_rate(),
            self.failed
        );
        let _ = writeln!(
            s,
            "connect ms:  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (connect to subscribed)",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let _ = writeln!(
            s,
            "hold:        {} disconnects, {} unexpected frames",
            self.disconnects, self.unexpected_frames
        );
        for r in self.disconnect_reasons.iter().take(5) {
            let _ = writeln!(s, "             disconnect: {r}");
        }
        let mib = |kb: u64| kb as f64 / 1024.0;
        match &self.node {
            Some(Ok(n)) => {
                let _ = writeln!(
                    s,
                    "node pid {}: rss {:.1} MiB before, {:.1} MiB connected, {:.1} MiB after the hold \
                     (peak {:.1}) = {:.2} KiB per connection",
                    n.pid,
                    mib(n.rss_before_kb),
                    mib(n.rss_connected_kb),
                    mib(n.rss_after_kb),
                    mib(n.peak_rss_kb),
                    self.rss_per_connection_kb().unwrap_or(0.0)
                );
                let _ = writeln!(
                    s,
                    "node cpu:    {:.2} s over the connect phase = {:.1} µs per connection \
                     (user {:.1}, kernel {:.1}); {:.3} s over the hold",
                    n.connect_cpu_secs,
                    self.cpu_us_per_connection().unwrap_or(0.0),
                    self.user_us_per_connection().unwrap_or(0.0),
                    self.kernel_us_per_connection().unwrap_or(0.0),
                    n.hold_cpu_secs
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(s, "node: unreadable ({e})");
            }
            None => s.push_str("node: no --node-pid, no memory or CPU figures\n"),
        }
        let _ = writeln!(
            s,
            "generator:   cpu {} s over the connect phase, rss {:.1} MiB",
            self.generator_connect_cpu_secs
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
            mib(self.generator_rss_kb)
        );
        if let Some(m) = &self.machine {
            let _ = writeln!(s, "machine:     {} over the connect phase", m.busy_text());
        }
        write_result(&mut s, 13, &self.failures());
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        json!({
            "scenario": "idle",
            "protocol": self.protocol.as_str(),
            "ws": self.ws,
            "connections": self.connections,
            "channels": self.channels,
            "connected": self.connected,
            "failed": self.failed,
            "first_error": self.first_error,
            "connect_secs": self.connect_secs,
            "connections_per_sec": self.connect_rate(),
            "connect_latency_ms": self.connect_latency.json(),
            "hold_secs": self.hold_secs,
            "disconnects": self.disconnects,
            "disconnect_reasons": self.disconnect_reasons,
            "unexpected_frames": self.unexpected_frames,
            "node": self.node.as_ref().map(|n| match n {
                Ok(n) => json!({
                    "pid": n.pid,
                    "rss_before_kb": n.rss_before_kb,
                    "rss_connected_kb": n.rss_connected_kb,
                    "rss_after_kb": n.rss_after_kb,
                    "peak_rss_kb": n.peak_rss_kb,
                    "connect_cpu_secs": n.connect_cpu_secs,
                    "connect_user_secs": n.connect_user_secs,
                    "hold_cpu_secs": n.hold_cpu_secs,
                }),
                Err(e) => json!({"error": e}),
            }),
            "rss_per_connection_kb": self.rss_per_connection_kb(),
            "cpu_us_per_connection": self.cpu_us_per_connection(),
            "user_us_per_connection": self.user_us_per_connection(),
            "kernel_us_per_connection": self.kernel_us_per_connection(),
            "generator_connect_cpu_secs": self.generator_connect_cpu_secs,
            "generator_rss_kb": self.generator_rss_kb,
            "machine_busy_cores": self.machine.map(|m| m.busy_cores()),
            "failures": self.failures(),
            "ok": self.failures().is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_figures() {
        let r = IdleReport {
            connections: 1000,
            connected: 1000,
            connect_secs: 0.5,
            node: Some(Ok(NodeFigures {
                pid: 1,
                rss_before_kb: 10_000,
                rss_after_kb: 14_000,
                connect_cpu_secs: 0.05,
                connect_user_secs: 0.015625,
                ..NodeFigures::default()
            })),
            ..IdleReport::default()
        };
        assert_eq!(r.rss_per_connection_kb(), Some(4.0));
        assert_eq!(r.cpu_us_per_connection(), Some(50.0));
        assert_eq!(r.user_us_per_connection(), Some(15.625));
        assert!((r.kernel_us_per_connection().unwrap() - 34.375).abs() < 1e-9);
        assert!(
            r.render()
                .contains("= 50.0 µs per connection (user 15.6, kernel 34.4)"),
            "{}",
            r.render()
        );
        assert_eq!(r.connect_rate(), 2000.0);
        assert!(r.failures().is_empty());
        assert!(
            r.render().contains("4.00 KiB per connection"),
            "{}",
            r.render()
        );
        assert_eq!(r.json()["rss_per_connection_kb"], 4.0);

        let bad = IdleReport {
            connections: 10,
            connected: 8,
            failed: 2,
            disconnects: 1,
            disconnect_reasons: vec!["closed by server".into()],
            ..IdleReport::default()
        };
        let f = bad.failures().join("; ");
        assert!(
            f.contains("2 of 10 connections failed") && f.contains("1 connections ended"),
            "{f}"
        );
        assert_eq!(bad.rss_per_connection_kb(), None);
        assert_eq!(bad.kernel_us_per_connection(), None);
    }
}
