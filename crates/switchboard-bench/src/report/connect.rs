//! The report of `connect`: connections per second, handshake latency, errors, and what an
//! accepted connection cost the node.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::measure::latency::LatencySummary;
use crate::measure::usage::{CpuTime, MachineUsage};
use crate::report::{per_sec, write_result};

/// Everything a connect run measured.
#[derive(Debug, Clone, Default)]
pub struct ConnectReport {
    /// The `--ws` URLs.
    pub ws: Vec<String>,
    /// Connections tried.
    pub connections: usize,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Whether connections were held rather than closed.
    pub keep_open: bool,
    /// Attempts that got their `welcome`.
    pub ok: u64,
    /// Failed attempts by kind (the outermost error context).
    pub errors: Vec<(String, u64)>,
    /// The first error in full.
    pub first_error: Option<String>,
    /// Seconds from the first attempt to the end of the last one.
    pub secs: f64,
    /// Connect to `welcome`.
    pub handshake: LatencySummary,
    /// The TCP connect alone.
    pub tcp: LatencySummary,
    /// Each node's pid and CPU time over the phase (or why not).
    pub nodes: Vec<(u32, Result<CpuTime, String>)>,
    /// RSS of the first node at the end, KiB.
    pub node_rss_kb: Option<u64>,
    /// The generator's CPU seconds over the phase.
    pub generator_cpu_secs: Option<f64>,
    /// The generator's runtime threads.
    pub runtime_threads: usize,
    /// The machine over the phase.
    pub machine: Option<MachineUsage>,
}

impl ConnectReport {
    /// Successful connections per second.
    pub fn rate(&self) -> f64 {
        per_sec(self.ok, self.secs)
    }

    /// Failed attempts.
    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }

    /// The nodes' CPU seconds together (total and user), when all were read.
    fn node_cpu(&self) -> Option<CpuTime> {
        let mut sum = CpuTime::default();
        for (_, c) in &self.nodes {
            let c = c.as_ref().ok()?;
            sum.total += c.total;
            sum.user += c.user;
        }
        (!self.nodes.is_empty()).then_some(sum)
    }

    /// The nodes' CPU microseconds per accepted connection, all nodes together.
    pub fn node_cpu_us_per_connection(&self) -> Option<f64> {
        self.node_cpu()
            .filter(|_| self.ok > 0)
            .map(|c| c.total * 1e6 / self.ok as f64)
    }

    /// The user-mode part of [`Self::node_cpu_us_per_connection`].
    pub fn node_user_us_per_connection(&self) -> Option<f64> {
        self.node_cpu()
            .filter(|_| self.ok > 0)
            .map(|c| c.user * 1e6 / self.ok as f64)
    }

    /// The kernel-mode part of [`Self::node_cpu_us_per_connection`].
    pub fn node_kernel_us_per_connection(&self) -> Option<f64> {
        self.node_cpu()
            .filter(|_| self.ok > 0)
            .map(|c| c.kernel() * 1e6 / self.ok as f64)
    }

    /// Cores the nodes used over the phase.
    pub fn node_cores(&self) -> Option<f64> {
        self.node_cpu()
            .filter(|_| self.secs > 0.0)
            .map(|c| c.total / self.secs)
    }

    /// Cores the generator used over the phase.
    pub fn generator_cores(&self) -> Option<f64> {
        self.generator_cpu_secs
            .filter(|_| self.secs > 0.0)
            .map(|c| c / self.secs)
    }

    /// Whether the generator used nearly all its runtime threads: then it set the rate.
    pub fn generator_bound(&self) -> bool {
        self.generator_cores()
            .is_some_and(|c| c >= 0.85 * self.runtime_threads.max(1) as f64)
    }

    /// What went wrong, one line each; empty for a clean run.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.error_count() > 0 {
            f.push(format!(
                "{} of {} connections failed (first: {})",
                self.error_count(),
                self.connections,
                self.first_error.as_deref().unwrap_or("-")
            ));
        }
        f
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let q = |l: &LatencySummary| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms",
                l.p50, l.p90, l.p99, l.p999, l.max
            )
        };
        let _ = writeln!(
            s,
            "connect: {} connections to {}, {} in flight, {}",
            self.connections,
            self.ws.join(", "),
            self.concurrency,
            if self.keep_open {
                "each held to the end"
            } else {
                "each closed after its welcome"
            }
        );
        let _ = writeln!(
            s,
            "rate:        {} connected in {:.2} s = {:.0} connections/s; {} failed",
            self.ok,
            self.secs,
            self.rate(),
            self.error_count()
        );
        for (kind, n) in &self.errors {
            let _ = writeln!(s, "             {kind}: {n}");
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "             first error: {e}");
        }
        let _ = writeln!(
            s,
            "handshake:   {} (connect to welcome)",
            q(&self.handshake)
        );
        let _ = writeln!(s, "tcp connect: {}", q(&self.tcp));
        for (pid, cpu) in &self.nodes {
            let _ = match cpu {
                Ok(cpu) => writeln!(
                    s,
                    "node pid {pid}: cpu {:.2} s over the phase (user {:.2}, kernel {:.2})",
                    cpu.total,
                    cpu.user,
                    cpu.kernel()
                ),
                Err(e) => writeln!(s, "node pid {pid}: unreadable ({e})"),
            };
        }
        if let (Some(per), Some(user), Some(kernel), Some(cores)) = (
            self.node_cpu_us_per_connection(),
            self.node_user_us_per_connection(),
            self.node_kernel_us_per_connection(),
            self.node_cores(),
        ) {
            let _ = writeln!(
                s,
                "node cpu:    {per:.1} µs per accepted connection (user {user:.1}, kernel \
                 {kernel:.1}; {cores:.2} cores){}",
                self.node_rss_kb
                    .map(|kb| format!(", rss {:.1} MiB at the end", kb as f64 / 1024.0))
                    .unwrap_or_default()
            );
        }
        if let Some(cores) = self.generator_cores() {
            let _ = writeln!(
                s,
                "generator:   {cores:.2} cores of {} runtime thread(s){}",
                self.runtime_threads,
                if self.generator_bound() {
                    ": the generator set the rate"
                } else {
                    ""
                }
            );
        }
        if let Some(m) = &self.machine {
            let _ = writeln!(s, "machine:     {} over the phase", m.busy_text());
        }
        write_result(&mut s, 13, &self.failures());
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        json!({
            "scenario": "connect",
            "ws": self.ws,
            "connections": self.connections,
            "concurrency": self.concurrency,
            "keep_open": self.keep_open,
            "ok": self.failures().is_empty(),
            "connected": self.ok,
            "errors": self.error_count(),
            "errors_by_kind": self.errors.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "first_error": self.first_error,
            "secs": self.secs,
            "connections_per_sec": self.rate(),
            "handshake_ms": self.handshake.json(),
            "tcp_connect_ms": self.tcp.json(),
            "nodes": self.nodes.iter().map(|(pid, c)| match c {
                Ok(cpu) => json!({"pid": pid, "cpu_secs": cpu.total, "user_secs": cpu.user}),
                Err(e) => json!({"pid": pid, "error": e}),
            }).collect::<Vec<_>>(),
            "node_rss_kb": self.node_rss_kb,
            "node_cpu_us_per_connection": self.node_cpu_us_per_connection(),
            "node_user_us_per_connection": self.node_user_us_per_connection(),
            "node_kernel_us_per_connection": self.node_kernel_us_per_connection(),
            "node_cores": self.node_cores(),
            "generator_cpu_secs": self.generator_cpu_secs,
            "generator_cores": self.generator_cores(),
            "generator_bound": self.generator_bound(),
            "runtime_threads": self.runtime_threads,
            "machine_busy_cores": self.machine.map(|m| m.busy_cores()),
            "failures": self.failures(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_figures_and_failures() {
        let r = ConnectReport {
            connections: 10_000,
            ok: 10_000,
            secs: 2.0,
            nodes: vec![(
                1,
                Ok(CpuTime {
                    total: 0.5,
                    user: 0.125,
                }),
            )],
            generator_cpu_secs: Some(1.9),
            runtime_threads: 1,
            ..ConnectReport::default()
        };
        assert_eq!(r.rate(), 5000.0);
        assert_eq!(r.node_cpu_us_per_connection(), Some(50.0));
        assert_eq!(r.node_user_us_per_connection(), Some(12.5));
        assert_eq!(r.node_kernel_us_per_connection(), Some(37.5));
        assert_eq!(r.node_cores(), Some(0.25));
        assert!(r.generator_bound());
        assert!(r.failures().is_empty());
        let text = r.render();
        assert!(text.contains("5000 connections/s"), "{text}");
        assert!(
            text.contains("50.0 µs per accepted connection (user 12.5, kernel 37.5; 0.25 cores)"),
            "{text}"
        );
        assert!(text.contains("the generator set the rate"), "{text}");
        assert_eq!(r.json()["node_cpu_us_per_connection"], 50.0);
        assert_eq!(r.json()["node_kernel_us_per_connection"], 37.5);

        let bad = ConnectReport {
            connections: 10,
            ok: 7,
            errors: vec![("connect".into(), 2), ("timed out".into(), 1)],
            first_error: Some("ws://x: connect: refused".into()),
            nodes: vec![(1, Err("gone".into()))],
            ..ConnectReport::default()
        };
        assert_eq!(bad.error_count(), 3);
        assert!(bad.failures()[0].contains("3 of 10 connections failed"));
        assert_eq!(bad.node_cpu_us_per_connection(), None);
        assert_eq!(bad.node_user_us_per_connection(), None);
        assert!(!bad.generator_bound());
        assert_eq!(bad.json()["ok"], false);
    }
}
