//! The publisher every scenario runs: publishes through the server API, stamped messages on a
//! pace, each to the node and channel its [`Ledger`] picks, and hands every answer to that
//! ledger (the scenario's own bookkeeping).
//!
//! A publisher has its own sequence and its own keep-alive connection to every `--api` node,
//! and waits for each answer before the next publish, so its messages are ordered by the
//! backplane in seq order even across nodes: any subscriber that sees them out of order has
//! found a bug.
//!
//! Paces: [`Pace::Slots`] is open-loop (publish `k` is due at a fixed time), so a slow node does
//! not slow the offered load; a publisher more than [`MAX_LAG`] behind skips the missed slots
//! and counts them rather than bursting. [`Pace::Every`] is a plain ticker that skips missed
//! ticks; [`Pace::BackToBack`] publishes as fast as the answers come.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use tokio::time::{Instant, MissedTickBehavior};

use crate::clients::http::ApiClient;
use crate::clients::payload::{self, BodyBuilder, Stamp};

/// How far behind its schedule a [`Pace::Slots`] publisher may fall before it skips slots.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// When a publisher publishes.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Open-loop slots shared by `publishers` publishers at `rate` per second in all from
    /// `start`: publisher `id`'s k-th slot is global slot `k * publishers + id`, due at
    /// `start + slot / rate`, so the publishers interleave evenly.
    Slots {
        /// Publishers sharing the rate.
        publishers: u32,
        /// Publishes per second, all of them together.
        rate: f64,
        /// When slot 0 is due.
        start: Instant,
    },
    /// This many publishes per second (missed ticks are skipped).
    Every(f64),
    /// One publish after the other, as fast as the answers come.
    BackToBack,
}

/// When a publisher stops: whichever comes first.
#[derive(Debug, Clone, Default)]
pub struct Until {
    /// No publish is due at or after this time.
    pub end: Option<Instant>,
    /// Set by the coordinator: stop before the next publish.
    pub flag: Option<Arc<AtomicBool>>,
    /// At most this many publishes.
    pub count: Option<u64>,
}

/// One publish as sent.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The channel (index into the publisher's bodies).
    pub channel: usize,
    /// The node (index into the publisher's clients).
    pub node: usize,
    /// The stamp in its payload; `stamp.seq` counts from 1.
    pub stamp: Stamp,
    /// When it was sent.
    pub at: Instant,
}

/// What a publish got back: the node's status and body (`{"offset":N,"epoch":E}` on a
/// channel with history), or, `Err`, no answer at all (it may or may not have been published).
pub type Answer = anyhow::Result<(StatusCode, Bytes)>;

/// A scenario's bookkeeping of one publisher.
pub trait Ledger {
    /// The channel and the node of publish `seq` (from 1) in global slot `slot` (with
    /// [`Pace::Slots`]; else `slot` is `seq`), of `nodes` nodes.
    fn route(&mut self, seq: u64, slot: u64, nodes: usize) -> (usize, usize);

    /// The answer to `attempt`.
    fn answered(&mut self, attempt: &Attempt, answer: Answer);

    /// `n` slots were skipped for being more than [`MAX_LAG`] late.
    fn skipped(&mut self, _n: u64) {}
}

/// A publisher: its id (`"p"` in the payload), one client per node, one body builder per
/// channel.
pub struct Publisher {
    id: u32,
    clients: Vec<ApiClient>,
    bodies: Arc<Vec<BodyBuilder>>,
    seq: u64,
}

impl Publisher {
    /// Publisher `id` through `clients` (one per `--api` node) on the channels of `bodies`.
    pub fn new(id: u32, clients: Vec<ApiClient>, bodies: Arc<Vec<BodyBuilder>>) -> Self {
        Self {
            id,
            clients,
            bodies,
            seq: 0,
        }
    }

    /// Sends the next publish (the next seq) on `channel` through `node`, and waits for its
    /// answer.
    pub async fn send(&mut self, channel: usize, node: usize) -> (Attempt, Answer) {
        self.seq += 1;
        let at = Instant::now();
        let stamp = Stamp {
            publisher: self.id,
            seq: self.seq,
            sent_us: payload::now_us(),
        };
        let attempt = Attempt {
            channel,
            node,
            stamp,
            at,
        };
        let answer = self.clients[node]
            .publish_with_reply(self.bodies[channel].body(stamp))
            .await;
        (attempt, answer)
    }

    /// Publishes on `pace` until `until`, routing and recording through `ledger`.
    pub async fn run<L: Ledger>(mut self, pace: Pace, until: Until, mut ledger: L) -> L {
        if self.clients.is_empty() || self.bodies.is_empty() {
            return ledger;
        }
        let mut ticker = match pace {
            Pace::Every(rate) => {
                let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                Some(t)
            }
            _ => None,
        };
        let mut k = 0u64;
        loop {
            if until
                .flag
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Acquire))
                || until.count.is_some_and(|c| self.seq >= c)
            {
                break;
            }
            let slot = match pace {
                Pace::Slots {
                    publishers,
                    rate,
                    start,
                } => {
                    let global_slot = k * u64::from(publishers) + u64::from(self.id);
                    let due = start + Duration::from_secs_f64(global_slot as f64 / rate);
                    if until.end.is_some_and(|end| due >= end) {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        tokio::time::sleep_until(due).await;
                    } else if now - due > MAX_LAG {
                        // Jump to the first slot that is not yet due.
                        let elapsed = (now - start).as_secs_f64() * rate;
                        let next = ((elapsed - f64::from(self.id)) / f64::from(publishers))
                            .ceil()
                            .max(0.0) as u64;
                        let next = next.max(k + 1);
                        ledger.skipped(next - k);
                        k = next;
                        continue;
                    }
                    k += 1;
                    global_slot
                }
                Pace::Every(_) | Pace::BackToBack => {
                    if until.end.is_some_and(|end| Instant::now() >= end) {
                        break;
                    }
                    if let Some(t) = ticker.as_mut() {
                        match until.end {
                            Some(end) => tokio::select! {
                                _ = t.tick() => {},
                                _ = tokio::time::sleep_until(end) => break,
                            },
                            None => {
                                t.tick().await;
                            }
                        }
                    }
                    self.seq + 1
                }
            };
            let (channel, node) = ledger.route(self.seq + 1, slot, self.clients.len());
            let (attempt, answer) = self.send(channel, node).await;
            ledger.answered(&attempt, answer);
        }
        ledger
    }
}

/// The channel (index) of global publish slot `slot`: the channels take turns.
pub fn channel_of_slot(slot: u64, channels: usize) -> usize {
    (slot % channels.max(1) as u64) as usize
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
