//! The report of `recover`: how long the clients took to notice the kill, to resubscribe and
//! to have every missed message; the steps of their reconnects; what the recovery cost the
//! surviving nodes.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::clients::ws::Phases;
use crate::measure::latency::{Latency, LatencySummary, micros, peak_rate};
use crate::measure::offsets::OffsetCheck;
use crate::measure::usage::MachineUsage;
use crate::report::{offset_failures, offsets_json, per_sec, write_result};

/// What the publisher did.
#[derive(Debug, Default)]
pub struct PubTally {
    pub attempted: u64,
    pub accepted: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub epochs: BTreeSet<String>,
    pub last_offset: u64,
    pub secs: f64,
}

/// A TCP connect this slow on loopback means the listener dropped the SYN and the kernel
/// sent it again after its initial retransmission timeout (1 s).
pub const SLOW_CONNECT: Duration = Duration::from_millis(900);

/// A surviving node's CPU seconds and RSS (KiB), or why they could not be read.
pub type NodeUsage = Result<(f64, u64), String>;

/// Everything a recover run measured.
#[derive(Debug, Default)]
pub struct RecoverReport {
    pub clients: usize,
    pub ws: Vec<String>,
    pub api_nodes: usize,
    pub channel: String,
    pub target_rate: f64,
    pub backoff: (f64, f64),
    pub setup_secs: f64,
    pub kill_pid: u32,
    pub kill_cmd_ms: f64,
    pub offset_at_kill: u64,
    pub tally: PubTally,
    pub dropped: LatencySummary,
    pub resubscribed: LatencySummary,
    pub recovered: LatencySummary,
    pub tcp: LatencySummary,
    /// Successful reconnects whose TCP connect took [`SLOW_CONNECT`] or more.
    pub slow_connects: u64,
    pub upgrade: LatencySummary,
    pub subscribe: LatencySummary,
    pub recovered_clients: usize,
    pub all_recovered_secs: Option<f64>,
    pub reconnect_rate: f64,
    pub reconnect_peak_rate: f64,
    pub attempts: u64,
    pub failed_attempts: u64,
    pub first_failure: Option<String>,
    pub replayed: u64,
    pub replayed_max: u64,
    pub offsets: OffsetCheck,
    pub epoch_changes: u64,
    pub unexpected: u64,
    pub early_drops: u64,
    pub early_reason: Option<String>,
    pub not_recovered: u64,
    pub unrecovered_missed: u64,
    pub gave_up: u64,
    pub ended_reason: Option<String>,
    pub final_nodes: Vec<usize>,
    pub behind_at_end: usize,
    pub drain_secs: f64,
    pub drained: bool,
    /// Surviving nodes' CPU seconds from the kill until everyone recovered, and RSS.
    pub nodes: Vec<(u32, NodeUsage)>,
    pub generator_cpu_secs: Option<f64>,
    pub recovery_window_secs: f64,
    pub machine: Option<MachineUsage>,
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct ClientOutcome {
    /// Offsets over the whole run.
    pub check: OffsetCheck,
    /// Messages or `subscribed` replies with an epoch other than the first one.
    pub epoch_changes: u64,
    /// `error` replies, binary frames, frames that are not JSON.
    pub unexpected: u64,
    /// Connections lost before the kill.
    pub early_drops: u32,
    /// The first reason of such a drop.
    pub early_reason: Option<String>,
    /// Reconnect attempts, successful or not.
    pub attempts: u32,
    /// Failed reconnect attempts.
    pub failed_attempts: u32,
    /// The first failed attempt's error.
    pub first_failure: Option<String>,
    /// `subscribed` replies with `recovered: false` after a reconnect.
    pub not_recovered: u32,
    /// Offsets those replies left out (newest offset minus the client's last one).
    pub unrecovered_missed: u64,
    /// Kill to the first connection loss after it.
    pub dropped_after: Option<Duration>,
    /// Kill to the `subscribed` reply of the reconnection after it.
    pub resubscribed_after: Option<Duration>,
    /// Kill to the moment every missed message had arrived.
    pub recovered_after: Option<Duration>,
    /// The steps of the reconnection after the kill.
    pub phases: Option<Phases>,
    /// Messages the recovery replayed (offsets between the client's last and the reply's).
    pub replayed: u64,
    /// Index of the `--ws` node the client ended on.
    pub node: usize,
    /// Why the client stopped before `Stop`, if it did.
    pub ended: Option<String>,
}

impl RecoverReport {
    /// Adds up the clients' outcomes.
    pub fn add_outcomes(&mut self, outcomes: &[ClientOutcome]) {
        let r = self;
        let mut dropped = Latency::new();
        let mut resubscribed = Latency::new();
        let mut recovered = Latency::new();
        let (mut tcp, mut upgrade, mut subscribe) =
            (Latency::new(), Latency::new(), Latency::new());
        let mut resub_times = Vec::new();
        for o in outcomes {
            r.offsets.add(&o.check);
            r.epoch_changes += o.epoch_changes;
            r.unexpected += o.unexpected;
            r.early_drops += u64::from(o.early_drops);
            if r.early_reason.is_none() {
                r.early_reason.clone_from(&o.early_reason);
            }
            r.attempts += u64::from(o.attempts);
            r.failed_attempts += u64::from(o.failed_attempts);
            if r.first_failure.is_none() {
                r.first_failure.clone_from(&o.first_failure);
            }
            r.not_recovered += u64::from(o.not_recovered);
            r.unrecovered_missed += o.unrecovered_missed;
            r.replayed += o.replayed;
            r.replayed_max = r.replayed_max.max(o.replayed);
            if let Some(d) = o.dropped_after {
                dropped.record(micros(d));
            }
            if let Some(d) = o.resubscribed_after {
                resubscribed.record(micros(d));
                resub_times.push(d.as_secs_f64());
            }
            if let Some(p) = o.phases {
                tcp.record(micros(p.tcp));
                r.slow_connects += u64::from(p.tcp >= SLOW_CONNECT);
                upgrade.record(micros(p.upgrade));
                subscribe.record(micros(p.subscribe));
            }
            if let Some(d) = o.recovered_after {
                recovered.record(micros(d));
                r.recovered_clients += 1;
            }
            if let Some(e) = &o.ended {
                r.gave_up += 1;
                r.ended_reason.get_or_insert_with(|| e.clone());
            }
            if o.check.last < r.tally.last_offset {
                r.behind_at_end += 1;
            }
            if let Some(n) = r.final_nodes.get_mut(o.node) {
                *n += 1;
            }
        }
        r.dropped = dropped.summary();
        r.resubscribed = resubscribed.summary();
        r.recovered = recovered.summary();
        r.tcp = tcp.summary();
        r.upgrade = upgrade.summary();
        r.subscribe = subscribe.summary();
        if r.recovered_clients == outcomes.len() {
            r.all_recovered_secs = Some(r.recovered.max / 1e3);
        }
        resub_times.sort_by(f64::total_cmp);
        if let Some(&last) = resub_times.last()
            && last > 0.0
        {
            r.reconnect_rate = resub_times.len() as f64 / last;
        }
        r.reconnect_peak_rate = peak_rate(&resub_times, 0.1);
    }

    /// What went wrong, one line each; empty for a clean run.
    pub fn failures(&self) -> Vec<String> {
        let mut f = offset_failures(&self.offsets);
        if self.epoch_changes > 0 {
            f.push(format!("{} epoch changes", self.epoch_changes));
        }
        if self.tally.epochs.len() > 1 {
            f.push(format!(
                "the channel's epoch changed during the run: {:?}",
                self.tally.epochs
            ));
        }
        if self.not_recovered > 0 {
            f.push(format!(
                "{} subscribe replies with recovered:false ({} offsets not recovered)",
                self.not_recovered, self.unrecovered_missed
            ));
        }
        if self.recovered_clients < self.clients {
            f.push(format!(
                "{} of {} clients did not complete a recovery",
                self.clients - self.recovered_clients,
                self.clients
            ));
        }
        if self.gave_up > 0 {
            f.push(format!(
                "{} clients stopped early (first: {})",
                self.gave_up,
                self.ended_reason.as_deref().unwrap_or("-")
            ));
        }
        if self.early_drops > 0 {
            f.push(format!(
                "{} connections dropped before the kill (first: {})",
                self.early_drops,
                self.early_reason.as_deref().unwrap_or("-")
            ));
        }
        if self.behind_at_end > 0 {
            f.push(format!(
                "{} clients did not receive every message up to offset {}",
                self.behind_at_end, self.tally.last_offset
            ));
        }
        if self.tally.errors > 0 {
            f.push(format!(
                "{} publish errors (first: {})",
                self.tally.errors,
                self.tally.first_error.as_deref().unwrap_or("-")
            ));
        }
        if self.tally.accepted == 0 {
            f.push("nothing was published".to_owned());
        }
        f
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let q = |l: &LatencySummary| {
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} ms (n={})",
                l.p50, l.p90, l.p99, l.max, l.count
            )
        };
        let _ = writeln!(
            s,
            "recover: {} clients on {}, channel {:?}, publishing {:.1}/s through {} API node(s), \
             backoff {:.0}-{:.0} ms",
            self.clients,
            self.ws.first().map_or("-", String::as_str),
            self.channel,
            self.target_rate,
            self.api_nodes,
            self.backoff.0,
            self.backoff.1
        );
        let _ = writeln!(
            s,
            "setup:        {} connected and subscribed in {:.2} s",
            self.clients, self.setup_secs
        );
        let _ = writeln!(
            s,
            "kill:         kill -9 {} at offset {} (the command took {:.1} ms)",
            self.kill_pid, self.offset_at_kill, self.kill_cmd_ms
        );
        let _ = writeln!(s, "drop noticed: {}", q(&self.dropped));
        let _ = writeln!(s, "resubscribed: {}", q(&self.resubscribed));
        let _ = writeln!(s, "recovered:    {}", q(&self.recovered));
        // The steps of the attempt that succeeded (backoff delays and failed attempts are
        // the rest of the time to `resubscribed`).
        let _ = writeln!(
            s,
            "  tcp connect:  {}; {} took >= {} ms (SYN dropped by the listener, resent)",
            q(&self.tcp),
            self.slow_connects,
            SLOW_CONNECT.as_millis()
        );
        let _ = writeln!(s, "  upgrade:      {} (to the welcome)", q(&self.upgrade));
        let _ = writeln!(s, "  subscribe:    {} (to subscribed)", q(&self.subscribe));
        let _ = writeln!(
            s,
            "all:          {}",
            match self.all_recovered_secs {
                Some(t) => format!("all {} recovered {:.3} s after the kill", self.clients, t),
                None => format!(
                    "only {} of {} recovered",
                    self.recovered_clients, self.clients
                ),
            }
        );
        let _ = writeln!(
            s,
            "reconnects:   {:.0}/s over the whole recovery, peak {:.0}/s (100 ms window); \
             {} attempts, {} failed{}",
            self.reconnect_rate,
            self.reconnect_peak_rate,
            self.attempts,
            self.failed_attempts,
            self.first_failure
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        let nodes: Vec<String> = self
            .ws
            .iter()
            .zip(&self.final_nodes)
            .map(|(u, n)| format!("{u}: {n}"))
            .collect();
        let _ = writeln!(s, "ended on:     {}", nodes.join(", "));
        let _ = writeln!(
            s,
            "replayed:     {} missed messages (mean {:.1}, max {} per client)",
            self.replayed,
            self.replayed as f64 / self.clients.max(1) as f64,
            self.replayed_max
        );
        let o = &self.offsets;
        let _ = writeln!(
            s,
            "integrity:    {} offsets checked: gaps {} ({} skipped), repeats {}, missing {}, \
             epoch changes {}; recovered:false {}; early drops {}; gave up {}; unexpected frames {}",
            o.checked,
            o.gaps,
            o.skipped,
            o.repeats,
            o.missing,
            self.epoch_changes,
            self.not_recovered,
            self.early_drops,
            self.gave_up,
            self.unexpected
        );
        let t = &self.tally;
        let _ = writeln!(
            s,
            "publishes:    {} accepted of {} in {:.1} s ({:.1}/s), errors {}; last offset {}; \
             drain {:.2} s{}, {} clients behind",
            t.accepted,
            t.attempted,
            t.secs,
            per_sec(t.accepted, t.secs),
            t.errors,
            t.last_offset,
            self.drain_secs,
            if self.drained { "" } else { " (timed out)" },
            self.behind_at_end
        );
        for (pid, u) in &self.nodes {
            let _ = match u {
                Ok((cpu, rss)) => writeln!(
                    s,
                    "node pid {pid}: cpu {cpu:.2} s in the {:.2} s from the kill to the last \
                     recovery (reconnects, history reads and the live stream) = {:.0} µs per \
                     client; rss {:.1} MiB",
                    self.recovery_window_secs,
                    cpu * 1e6 / self.clients.max(1) as f64,
                    *rss as f64 / 1024.0
                ),
                Err(e) => writeln!(s, "node pid {pid}: unreadable ({e})"),
            };
        }
        if let Some(cpu) = self.generator_cpu_secs {
            let _ = writeln!(s, "generator: cpu {cpu:.2} s in the same window");
        }
        if let Some(m) = &self.machine {
            let ours: f64 = self
                .nodes
                .iter()
                .filter_map(|(_, u)| u.as_ref().ok().map(|(cpu, _)| *cpu))
                .chain(self.generator_cpu_secs)
                .sum();
            let _ = writeln!(
                s,
                "machine: {} in the same window; other processes (Redis included) {:.2} cores",
                m.busy_text(),
                m.other_cores(ours)
            );
        }
        write_result(&mut s, 14, &self.failures());
        s
    }

    /// The report as one JSON object.
    pub fn json(&self) -> Value {
        let q = LatencySummary::json_without_p999;
        let v = json!({
            "scenario": "recover",
            "clients": self.clients,
            "ws": self.ws,
            "channel": self.channel,
            "target_rate": self.target_rate,
            "backoff_ms": [self.backoff.0, self.backoff.1],
            "setup_secs": self.setup_secs,
            "kill_pid": self.kill_pid,
            "kill_cmd_ms": self.kill_cmd_ms,
            "offset_at_kill": self.offset_at_kill,
            "dropped_ms": q(&self.dropped),
            "resubscribed_ms": q(&self.resubscribed),
            "recovered_ms": q(&self.recovered),
            "reconnect_phases_ms": {
                "tcp_connect": q(&self.tcp),
                "slow_tcp_connects": self.slow_connects,
                "upgrade_welcome": q(&self.upgrade),
                "subscribe": q(&self.subscribe),
            },
            "recovered_clients": self.recovered_clients,
            "all_recovered_secs": self.all_recovered_secs,
            "reconnects_per_sec": self.reconnect_rate,
            "reconnects_peak_per_sec": self.reconnect_peak_rate,
            "attempts": self.attempts,
            "failed_attempts": self.failed_attempts,
            "first_failure": self.first_failure,
            "final_nodes": self.final_nodes,
            "replayed": self.replayed,
            "replayed_max": self.replayed_max,
            "offsets": offsets_json(&self.offsets, self.clients),
            "epoch_changes": self.epoch_changes,
            "not_recovered": self.not_recovered,
            "unrecovered_missed": self.unrecovered_missed,
            "early_drops": self.early_drops,
            "gave_up": self.gave_up,
            "unexpected_frames": self.unexpected,
        });
        // Two objects: one `json!` this large exceeds the macro recursion limit.
        let more = json!({
            "publishes_attempted": self.tally.attempted,
            "publishes_accepted": self.tally.accepted,
            "publish_errors": self.tally.errors,
            "first_publish_error": self.tally.first_error,
            "epochs": self.tally.epochs,
            "last_offset": self.tally.last_offset,
            "behind_at_end": self.behind_at_end,
            "drain_secs": self.drain_secs,
            "drained": self.drained,
            "recovery_window_secs": self.recovery_window_secs,
            "nodes": self.nodes.iter().map(|(pid, u)| match u {
                Ok((cpu, rss)) => json!({"pid": pid, "cpu_secs": cpu, "rss_kb": rss}),
                Err(e) => json!({"pid": pid, "error": e}),
            }).collect::<Vec<_>>(),
            "generator_cpu_secs": self.generator_cpu_secs,
            "machine_busy_cores": self.machine.map(|m| m.busy_cores()),
            "failures": self.failures(),
            "ok": self.failures().is_empty(),
        });
        if let (Value::Object(mut all), Value::Object(more)) = (v, more) {
            all.extend(more);
            Value::Object(all)
        } else {
            unreachable!("json! objects are objects")
        }
    }
}
