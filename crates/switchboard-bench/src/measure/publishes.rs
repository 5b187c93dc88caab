//! What a publisher did. Of `fanout`, `rooms` and `ramp`: publishes attempted, accepted in the
//! measure window (overall and per channel), refused, unanswered and skipped, and how long the
//! API took to answer. A subscriber of a channel must receive every measured publish accepted
//! on it, and the last accepted seq of every publisher is what the drain waits for. Of
//! `recover`: publishes on a channel with history, each answer's offset and epoch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::Value;
use tokio::time::Instant;

use crate::clients::http::ApiClient;
use crate::clients::payload::BodyBuilder;
#[cfg(doc)]
use crate::clients::publisher::MAX_LAG;
use crate::clients::publisher::{Answer, Attempt, Ledger, Pace, Publisher, Until, channel_of_slot};
use crate::measure::latency::{Latency, micros};
use crate::report::PubTally;

/// What one publisher did on one channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelTally {
    /// 2xx answers for messages sent in the measure window.
    pub accepted_measured: u64,
    /// Seq of the last 2xx publish; 0 if none.
    pub last_accepted_seq: u64,
}

/// What one publisher did.
#[derive(Debug, Default)]
pub struct Tally {
    /// The publisher's id.
    pub id: u32,
    /// Publishes stamped at or after this time (µs since the epoch) are measured.
    pub warmup_end_us: u64,
    /// Publishes attempted (the last seq used).
    pub attempted: u64,
    /// 2xx answers for messages sent in the measure window.
    pub accepted_measured: u64,
    /// Seq of the last 2xx publish; 0 if none.
    pub last_accepted_seq: u64,
    /// Non-2xx answers by status code.
    pub status_errors: BTreeMap<u16, u64>,
    /// Publishes without an answer.
    pub transport_errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
    /// Scheduled slots skipped for being more than [`MAX_LAG`] late.
    pub skipped: u64,
    /// The same, per channel (index as in the publisher's bodies).
    pub by_channel: Vec<ChannelTally>,
    /// Time to the answer of each accepted publish in the measure window (the API's latency
    /// as the publisher sees it).
    pub answer_latency: Latency,
}

impl Tally {
    /// An empty tally of publisher `id` over `channels` channels; publishes stamped at or after
    /// `warmup_end_us` (µs since the epoch) are measured.
    pub fn new(id: u32, channels: usize, warmup_end_us: u64) -> Self {
        Self {
            id,
            warmup_end_us,
            by_channel: vec![ChannelTally::default(); channels],
            ..Tally::default()
        }
    }
}

impl Ledger for Tally {
    /// The channels take the global slots in turn; the nodes take this publisher's publishes
    /// in turn.
    fn route(&mut self, seq: u64, slot: u64, nodes: usize) -> (usize, usize) {
        let channel = channel_of_slot(slot, self.by_channel.len());
        (channel, (seq as usize + self.id as usize) % nodes)
    }

    fn answered(&mut self, p: &Attempt, answer: Answer) {
        self.attempted = p.stamp.seq;
        match answer {
            Ok((s, _)) if s.is_success() => {
                let on_channel = &mut self.by_channel[p.channel];
                self.last_accepted_seq = p.stamp.seq;
                on_channel.last_accepted_seq = p.stamp.seq;
                if p.stamp.sent_us >= self.warmup_end_us {
                    self.accepted_measured += 1;
                    on_channel.accepted_measured += 1;
                    self.answer_latency.record(micros(p.at.elapsed()));
                }
            }
            Ok((s, _)) => {
                *self.status_errors.entry(s.as_u16()).or_default() += 1;
                self.first_error
                    .get_or_insert_with(|| format!("publisher {}: HTTP {s}", self.id));
            }
            Err(e) => {
                self.transport_errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("publisher {}: {e:#}", self.id));
            }
        }
    }

    fn skipped(&mut self, n: u64) {
        self.skipped += n;
    }
}

/// For each channel, the last accepted seq of each publisher on it: what a subscriber of
/// that channel must have seen before the drain is over.
pub fn drain_targets(tallies: &[Tally], channels: usize) -> Vec<Arc<Vec<u64>>> {
    (0..channels)
        .map(|c| {
            Arc::new(
                tallies
                    .iter()
                    .map(|t| t.by_channel.get(c).map_or(0, |ct| ct.last_accepted_seq))
                    .collect(),
            )
        })
        .collect()
}

/// The ledger of `recover`'s publisher: publishes go through the `--api` nodes in turn; every answer must
/// name an offset and an epoch (the channel keeps history); the newest offset is shared with
/// the coordinator in `last_offset`.
pub struct HistoryLedger {
    /// What the publisher did.
    pub tally: PubTally,
    /// The newest offset, shared with the coordinator.
    pub last_offset: Arc<AtomicU64>,
}

impl Ledger for HistoryLedger {
    fn route(&mut self, seq: u64, _slot: u64, nodes: usize) -> (usize, usize) {
        (0, seq as usize % nodes)
    }

    fn answered(&mut self, p: &Attempt, answer: Answer) {
        let t = &mut self.tally;
        t.attempted = p.stamp.seq;
        let error = match answer {
            Ok((status, reply)) if status.is_success() => {
                t.accepted += 1;
                let v: Value = serde_json::from_slice(&reply).unwrap_or_default();
                match (v["offset"].as_u64(), v["epoch"].as_str()) {
                    (Some(offset), Some(epoch)) => {
                        t.last_offset = t.last_offset.max(offset);
                        self.last_offset.store(t.last_offset, Ordering::Release);
                        if !t.epochs.contains(epoch) {
                            t.epochs.insert(epoch.to_owned());
                        }
                        None
                    }
                    _ => Some(format!(
                        "publish answer without offset/epoch (no history?): {}",
                        String::from_utf8_lossy(&reply)
                    )),
                }
            }
            Ok((status, reply)) => Some(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&reply)
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(e) = error {
            t.errors += 1;
            t.first_error.get_or_insert(e);
        }
    }
}

/// Publishes at `rate` until `stop`, through `clients` in turn; keeps the newest offset in
/// `last_offset`.
pub async fn publish_with_history(
    clients: Vec<ApiClient>,
    body: BodyBuilder,
    rate: f64,
    stop: Arc<AtomicBool>,
    last_offset: Arc<AtomicU64>,
) -> PubTally {
    let started = Instant::now();
    let until = Until {
        flag: Some(stop),
        ..Until::default()
    };
    let ledger = HistoryLedger {
        tally: PubTally::default(),
        last_offset,
    };
    let mut t = Publisher::new(0, clients, Arc::new(vec![body]))
        .run(Pace::Every(rate), until, ledger)
        .await
        .tally;
    t.secs = started.elapsed().as_secs_f64();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_targets_are_per_channel() {
        let tally = |seqs: &[u64]| Tally {
            by_channel: seqs
                .iter()
                .map(|&s| ChannelTally {
                    accepted_measured: s,
                    last_accepted_seq: s,
                })
                .collect(),
            ..Tally::default()
        };
        let t = drain_targets(&[tally(&[3, 0]), tally(&[5, 7])], 2);
        assert_eq!((*t[0]).clone(), vec![3, 5]);
        assert_eq!((*t[1]).clone(), vec![0, 7]);
    }
}
