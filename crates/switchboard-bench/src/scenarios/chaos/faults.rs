//! The faults of a chaos run and their seeded schedule.

use std::time::Duration;

use anyhow::bail;

use crate::clients::backoff::Rng;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL Redis, keep it down for the outage, restart it with its data (AOF).
    RedisRestart,
    /// SIGKILL Redis, keep it down for the outage, restart it without data.
    RedisWipe,
    /// SIGSTOP Redis for the outage, then SIGCONT.
    RedisPause,
    /// `CLIENT KILL TYPE pubsub`: every node's pub/sub connection is closed.
    PubsubKill,
    /// SIGKILL a node, keep it down for the outage, restart it with the same id and ports.
    NodeKill,
    /// `--burst` publishes, 8 at a time, as fast as the nodes answer.
    Burst,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::RedisRestart,
        FaultKind::RedisWipe,
        FaultKind::RedisPause,
        FaultKind::PubsubKill,
        FaultKind::NodeKill,
        FaultKind::Burst,
    ];

    /// The name used in `--faults` and in the report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::RedisWipe => "redis-wipe",
            FaultKind::RedisPause => "redis-pause",
            FaultKind::PubsubKill => "pubsub-kill",
            FaultKind::NodeKill => "node-kill",
            FaultKind::Burst => "burst",
        }
    }
}

/// Parses `--faults`: `all`, `none`, or a comma list of kind names.
pub fn parse_faults(s: &str) -> anyhow::Result<Vec<FaultKind>> {
    match s.trim() {
        "all" => return Ok(FaultKind::ALL.to_vec()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    let mut kinds = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(k) = FaultKind::ALL.iter().find(|k| k.name() == name) else {
            bail!(
                "--faults: unknown fault {name:?} (known: all, none, {})",
                FaultKind::ALL.map(FaultKind::name).join(", ")
            );
        };
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    Ok(kinds)
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    /// When it starts, from the start of publishing.
    pub at: Duration,
    /// Its kind.
    pub kind: FaultKind,
    /// How long the process stays down or paused (unused by `pubsub-kill` and `burst`).
    pub outage: Duration,
    /// Which node (`node-kill`).
    pub node: usize,
}

/// The fault schedule of a run: from `warmup` on, a fault every `gap_min..gap_max`, each
/// ending (by plan) before `duration`. The kinds are dealt from a shuffled deck of `kinds`,
/// reshuffled when empty, so every kind comes once before any comes twice.
pub fn schedule(
    seed: u64,
    kinds: &[FaultKind],
    duration: Duration,
    warmup: Duration,
    gap: (Duration, Duration),
    outage_max: Duration,
    nodes: usize,
) -> Vec<Planned> {
    let mut plan = Vec::new();
    if kinds.is_empty() {
        return plan;
    }
    let mut rng = Rng::new(seed ^ 0xC4A0_5EED);
    let outage_min = Duration::from_millis(500).min(outage_max);
    let mut deck: Vec<FaultKind> = Vec::new();
    let mut t = warmup;
    // Bounded: each step moves `t` forward by at least 100 ms.
    loop {
        let outage = outage_min + (outage_max - outage_min).mul_f64(rng.unit());
        if t + outage > duration {
            break;
        }
        if deck.is_empty() {
            deck = kinds.to_vec();
            // Fisher-Yates with the seeded generator.
            for i in (1..deck.len()).rev() {
                let j = ((rng.unit() * (i + 1) as f64) as usize).min(i);
                deck.swap(i, j);
            }
        }
        let kind = deck.pop().unwrap_or(FaultKind::Burst);
        let node = ((rng.unit() * nodes as f64) as usize).min(nodes.saturating_sub(1));
        plan.push(Planned {
            at: t,
            kind,
            outage,
            node,
        });
        let pause = gap.0 + gap.1.saturating_sub(gap.0).mul_f64(rng.unit());
        t += outage + pause.max(Duration::from_millis(100));
    }
    plan
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    /// Its kind.
    pub kind: FaultKind,
    /// What it hit (`redis`, a node id, ...) and how it went.
    pub note: String,
    /// Start, µs since the start of the run.
    pub start_us: u64,
    /// End (the process is back, or the burst is over), µs since the start of the run.
    pub end_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists() {
        assert_eq!(parse_faults("all").unwrap(), FaultKind::ALL.to_vec());
        assert!(parse_faults("none").unwrap().is_empty());
        assert_eq!(
            parse_faults("burst, node-kill,burst").unwrap(),
            vec![FaultKind::Burst, FaultKind::NodeKill]
        );
        assert!(parse_faults("meteor").is_err());
    }

    #[test]
    fn schedules_replay_and_deal_every_kind_first() {
        let s = |seed| {
            schedule(
                seed,
                &FaultKind::ALL,
                Duration::from_secs(60),
                Duration::from_secs(3),
                (Duration::from_secs(2), Duration::from_secs(4)),
                Duration::from_secs(2),
                3,
            )
        };
        let a = s(42);
        assert_eq!(a, s(42));
        assert_ne!(a, s(43));
        assert!(a.len() >= 6, "{a:?}");
        let mut first: Vec<FaultKind> = a[..6].iter().map(|p| p.kind).collect();
        first.sort();
        assert_eq!(first, FaultKind::ALL.to_vec());
        for w in a.windows(2) {
            assert!(w[1].at >= w[0].at + w[0].outage + Duration::from_secs(2));
        }
        let last = a.last().unwrap();
        assert!(last.at + last.outage <= Duration::from_secs(60));
        assert!(a.iter().all(|p| p.node < 3));
        assert!(
            schedule(
                1,
                &[],
                Duration::from_secs(60),
                Duration::ZERO,
                (Duration::ZERO, Duration::ZERO),
                Duration::ZERO,
                3
            )
            .is_empty()
        );
    }
}
