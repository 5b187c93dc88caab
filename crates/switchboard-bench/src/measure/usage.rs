//! CPU time and memory of the nodes, the generator and the machine over a measure window:
//! snapshots taken at both ends of it (from `/proc`, see [`crate::measure::procstat`]) and the
//! figures their difference gives.

use tokio::time::Instant;

use crate::measure::procstat::{self, MachineTicks, Proc, Sample};

/// CPU time of a process over a window, seconds: all of it, and the part in user mode.
///
/// The rest is kernel time (system calls, and softirq work the kernel charged to the process:
/// on loopback that includes the receiving side's TCP processing, see the README).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// utime + stime.
    pub total: f64,
    /// utime.
    pub user: f64,
}

impl CpuTime {
    /// stime: total - user.
    pub fn kernel(&self) -> f64 {
        (self.total - self.user).max(0.0)
    }
}

/// CPU and memory of one process over the measure window.
#[derive(Debug, Clone, Default)]
pub struct ProcUsage {
    /// What the process is (`node 1 (ws://...)`, `generator`).
    pub label: String,
    /// Its pid, when it is not the generator.
    pub pid: Option<u32>,
    /// Deliveries its CPU time is divided by.
    pub deliveries: u64,
    /// CPU seconds (user + system) in the measure window; `None` if it could not be read.
    pub cpu_secs: Option<f64>,
    /// The user-mode part of `cpu_secs`.
    pub user_secs: Option<f64>,
    /// Resident set size at the end of the window, KiB.
    pub rss_kb: u64,
    /// Peak resident set size, KiB.
    pub peak_rss_kb: u64,
    /// Why it could not be read, if so.
    pub error: Option<String>,
}

/// The whole machine's CPU over the measure window.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineUsage {
    /// CPU seconds spent running anything, all CPUs together.
    pub busy_secs: f64,
    /// CPU seconds available (busy + idle), all CPUs together.
    pub total_secs: f64,
    /// Wall-clock length of the window, seconds.
    pub window_secs: f64,
}

impl MachineUsage {
    /// Cores the machine has, as seen over the window.
    pub fn cores(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.total_secs / self.window_secs
        } else {
            0.0
        }
    }

    /// Cores busy on average.
    pub fn busy_cores(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.busy_secs / self.window_secs
        } else {
            0.0
        }
    }

    /// `B of C cores busy`, for the reports' `machine:` lines.
    pub fn busy_text(&self) -> String {
        format!("{:.2} of {:.2} cores busy", self.busy_cores(), self.cores())
    }

    /// Cores busy with processes other than `ours` (CPU seconds of the measured processes).
    pub fn other_cores(&self, ours: f64) -> f64 {
        if self.window_secs > 0.0 {
            ((self.busy_secs - ours) / self.window_secs).max(0.0)
        } else {
            0.0
        }
    }
}

impl ProcUsage {
    /// CPU microseconds per delivery, when both are known.
    pub fn us_per_delivery(&self) -> Option<f64> {
        let cpu = self.cpu_secs?;
        (self.deliveries > 0).then(|| cpu * 1e6 / self.deliveries as f64)
    }

    /// User-mode CPU microseconds per delivery.
    pub fn user_us_per_delivery(&self) -> Option<f64> {
        let user = self.user_secs?;
        (self.deliveries > 0).then(|| user * 1e6 / self.deliveries as f64)
    }

    /// Kernel-mode CPU microseconds per delivery: total - user.
    pub fn kernel_us_per_delivery(&self) -> Option<f64> {
        Some((self.us_per_delivery()? - self.user_us_per_delivery()?).max(0.0))
    }
}

/// CPU time and memory of the nodes, the generator and the machine at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    nodes: Vec<(u32, Result<Sample, String>)>,
    me: Result<Sample, String>,
    machine: Option<MachineTicks>,
}

impl Snapshot {
    /// Reads every node in `pids`, the generator and the machine now.
    pub fn take(pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            nodes: pids
                .iter()
                .map(|&pid| {
                    let s = Proc::Pid(pid)
                        .sample()
                        .map_err(|e| format!("pid {pid}: {e}"));
                    (pid, s)
                })
                .collect(),
            me: Proc::Me.sample().map_err(|e| e.to_string()),
            machine: procstat::machine_ticks().ok(),
        }
    }

    /// The node samples, in the order of the pids.
    pub fn nodes(&self) -> impl Iterator<Item = &Result<Sample, String>> {
        self.nodes.iter().map(|(_, s)| s)
    }
}

/// A process's CPU time over a window and its memory at the end, or why it could not be
/// read.
pub type Usage = Result<(CpuTime, Sample), String>;

/// What happened between two [`Snapshot`]s.
#[derive(Debug, Clone)]
pub struct Window {
    /// Wall-clock seconds between them.
    pub secs: f64,
    /// Each node's pid and CPU time and memory at the end (or why it could not be read).
    pub nodes: Vec<(u32, Usage)>,
    /// The generator's CPU time and memory at the end.
    pub me: Usage,
    /// The whole machine.
    pub machine: Option<MachineUsage>,
}

impl Window {
    /// The window from `before` to `after`, CPU ticks converted with `clk_tck`.
    pub fn between(before: &Snapshot, after: &Snapshot, clk_tck: u64) -> Self {
        let tck = clk_tck.max(1) as f64;
        let usage = |b: &Result<Sample, String>, a: &Result<Sample, String>| match (b, a) {
            (Ok(b), Ok(a)) => {
                let total = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / tck;
                let user = a.user_ticks.saturating_sub(b.user_ticks) as f64 / tck;
                // utime and stime are sampled together, but keep user <= total regardless.
                let user = user.min(total);
                Ok((CpuTime { total, user }, *a))
            }
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        let secs = after.at.saturating_duration_since(before.at).as_secs_f64();
        Self {
            secs,
            nodes: before
                .nodes
                .iter()
                .zip(&after.nodes)
                .map(|((pid, b), (_, a))| (*pid, usage(b, a)))
                .collect(),
            me: usage(&before.me, &after.me),
            machine: before
                .machine
                .zip(after.machine)
                .map(|(b, a)| MachineUsage {
                    busy_secs: a.busy.saturating_sub(b.busy) as f64 / tck,
                    total_secs: a.total.saturating_sub(b.total) as f64 / tck,
                    window_secs: secs,
                }),
        }
    }

    /// The generator's CPU seconds, if readable.
    pub fn my_cpu_secs(&self) -> Option<f64> {
        self.me.as_ref().ok().map(|(cpu, _)| cpu.total)
    }

    /// Node `i` as a [`ProcUsage`] whose CPU is divided by `deliveries`.
    pub fn node_usage(&self, i: usize, label: String, deliveries: u64) -> ProcUsage {
        let (pid, u) = &self.nodes[i];
        proc_usage(label, Some(*pid), deliveries, u)
    }

    /// The generator as a [`ProcUsage`].
    pub fn my_usage(&self, deliveries: u64) -> ProcUsage {
        proc_usage("generator".to_owned(), None, deliveries, &self.me)
    }
}

fn proc_usage(label: String, pid: Option<u32>, deliveries: u64, u: &Usage) -> ProcUsage {
    let mut p = ProcUsage {
        label,
        pid,
        deliveries,
        ..ProcUsage::default()
    };
    match u {
        Ok((cpu, s)) => {
            p.cpu_secs = Some(cpu.total);
            p.user_secs = Some(cpu.user);
            p.rss_kb = s.rss_kb;
            p.peak_rss_kb = s.peak_rss_kb;
        }
        Err(e) => p.error = Some(e.clone()),
    }
    p
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn windows_subtract_and_convert() {
        let sample = |cpu_ticks, rss_kb| Sample {
            cpu_ticks,
            user_ticks: cpu_ticks / 5,
            rss_kb,
            peak_rss_kb: rss_kb,
        };
        let now = Instant::now();
        let before = Snapshot {
            at: now,
            nodes: vec![(1, Ok(sample(100, 10))), (2, Err("gone".into()))],
            me: Ok(sample(5, 1)),
            machine: Some(MachineTicks {
                busy: 100,
                total: 400,
            }),
        };
        let after = Snapshot {
            at: now + Duration::from_secs(2),
            nodes: vec![(1, Ok(sample(350, 20))), (2, Err("gone".into()))],
            me: Ok(sample(55, 1)),
            machine: Some(MachineTicks {
                busy: 300,
                total: 800,
            }),
        };
        let w = Window::between(&before, &after, 100);
        assert_eq!(w.secs, 2.0);
        let cpu = w.nodes[0].1.as_ref().unwrap().0;
        assert_eq!((cpu.total, cpu.user), (2.5, 0.5));
        assert_eq!(cpu.kernel(), 2.0);
        assert!(w.nodes[1].1.is_err());
        assert_eq!(w.my_cpu_secs(), Some(0.5));
        let m = w.machine.unwrap();
        assert_eq!((m.busy_cores(), m.cores()), (1.0, 2.0));
        let u = w.node_usage(0, "n".into(), 1_000_000);
        assert_eq!((u.us_per_delivery(), u.rss_kb), (Some(2.5), 20));
        assert_eq!(u.user_us_per_delivery(), Some(0.5));
        assert_eq!(u.kernel_us_per_delivery(), Some(2.0));
        assert!(w.node_usage(1, "n".into(), 1).error.is_some());
    }
}
