//! One publisher task: publishes on a fixed schedule through the server API.
//!
//! A few publishers share the target rate, each with its own sequence and its own keep-alive
//! connection to every `--api` node, rotating over the nodes publish by publish. A publisher
//! waits for each answer before the next publish, so its messages are ordered by the
//! backplane in seq order even across nodes: any subscriber that sees them out of order has
//! found a bug.
//!
//! With several channels (the `rooms` scenario) the global publish slots go to the channels
//! in turn, so each channel gets the same share of the rate; a publisher keeps, per channel,
//! how many of its measured publishes were accepted and its last accepted seq, which is what
//! a subscriber of that channel must receive.
//!
//! The schedule is open-loop (publish `k` is due at a fixed time), so a slow node does not
//! slow the offered load; a publisher more than [`MAX_LAG`] behind skips the missed slots and
//! counts them rather than bursting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::http::{ApiClient, Outcome};
use crate::payload::{self, BodyBuilder, Stamp};
use crate::stats::Latency;

/// How far behind its schedule a publisher may fall before it skips slots.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// The fixed part of a publisher's job.
pub struct Plan {
    /// This publisher's id, `0..publishers`.
    pub id: u32,
    /// Number of publisher tasks sharing the rate.
    pub publishers: u32,
    /// Total publishes per second, all publishers together.
    pub rate: f64,
    /// When publishing starts.
    pub start: Instant,
    /// When publishing stops.
    pub end: Instant,
    /// Messages sent at or after this time (µs since the epoch) are measured.
    pub warmup_end_us: u64,
    /// Builds request bodies, one builder per channel.
    pub bodies: Arc<Vec<BodyBuilder>>,
}

/// What one publisher did on one channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelTally {
    /// 2xx answers for messages sent in the measure window.
    pub accepted_measured: u64,
    /// Seq of the last 2xx publish; 0 if none.
    pub last_accepted_seq: u64,
}

/// The channel (index) of global publish slot `slot`: the channels take turns.
pub fn channel_of_slot(slot: u64, channels: usize) -> usize {
    (slot % channels.max(1) as u64) as usize
}

/// What one publisher did.
#[derive(Debug, Default)]
pub struct Tally {
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
    /// The same, per channel (index as in [`Plan::bodies`]).
    pub by_channel: Vec<ChannelTally>,
    /// Time to the answer of each accepted publish in the measure window (the API's latency
    /// as the publisher sees it).
    pub answer_latency: Latency,
}

/// Publishes from `plan.start` to `plan.end` through `clients` (one per `--api` node).
pub async fn run(plan: Plan, mut clients: Vec<ApiClient>) -> Tally {
    let mut tally = Tally {
        by_channel: vec![ChannelTally::default(); plan.bodies.len()],
        ..Tally::default()
    };
    if clients.is_empty() || plan.bodies.is_empty() {
        return tally;
    }
    // Publisher `id`'s k-th slot is global slot `k * publishers + id`, so the publishers
    // interleave evenly at the total rate.
    let global_slot = |k: u64| k * u64::from(plan.publishers) + u64::from(plan.id);
    let slot_time =
        |k: u64| plan.start + Duration::from_secs_f64(global_slot(k) as f64 / plan.rate);
    let mut k = 0u64;
    loop {
        let due = slot_time(k);
        if due >= plan.end {
            break;
        }
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due).await;
        } else if now - due > MAX_LAG {
            // Jump to the first slot that is not yet due.
            let elapsed = (now - plan.start).as_secs_f64() * plan.rate;
            let next = ((elapsed - f64::from(plan.id)) / f64::from(plan.publishers))
                .ceil()
                .max(0.0) as u64;
            let next = next.max(k + 1);
            tally.skipped += next - k;
            k = next;
            continue;
        }
        let channel = channel_of_slot(global_slot(k), plan.bodies.len());
        k += 1;

        tally.attempted += 1;
        let stamp = Stamp {
            publisher: plan.id,
            seq: tally.attempted,
            sent_us: payload::now_us(),
        };
        let node = (tally.attempted as usize + plan.id as usize) % clients.len();
        let sent = Instant::now();
        match clients[node]
            .publish(plan.bodies[channel].body(stamp))
            .await
        {
            Outcome::Status(s) if s.is_success() => {
                let on_channel = &mut tally.by_channel[channel];
                tally.last_accepted_seq = stamp.seq;
                on_channel.last_accepted_seq = stamp.seq;
                if stamp.sent_us >= plan.warmup_end_us {
                    tally.accepted_measured += 1;
                    on_channel.accepted_measured += 1;
                    let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    tally.answer_latency.record(us);
                }
            }
            Outcome::Status(s) => {
                *tally.status_errors.entry(s.as_u16()).or_default() += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("publisher {}: HTTP {s}", plan.id));
            }
            Outcome::Transport(e) => {
                tally.transport_errors += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("publisher {}: {e:#}", plan.id));
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_take_turns() {
        assert_eq!(channel_of_slot(7, 1), 0);
        assert_eq!(channel_of_slot(7, 0), 0);
        let hits = (0..3000).fold(vec![0; 1000], |mut h, slot| {
            h[channel_of_slot(slot, 1000)] += 1;
            h
        });
        assert!(hits.iter().all(|&n| n == 3));
    }
}
