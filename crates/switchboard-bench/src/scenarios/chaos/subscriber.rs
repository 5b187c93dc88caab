//! The subscribers of a chaos run: the shared subscriber client, reconnecting round robin
//! with backoff and recovering on history channels, reading into a [`Sub`] that keeps every
//! message received and every signal that something may have been missed (see [`super`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::Clock;
use super::traffic::{Chan, key};
use crate::clients::backoff::{Backoff, Redial};
use crate::clients::fleet::Start;
use crate::clients::payload;
use crate::clients::subscriber::{self, Control, Ended, Session};
use crate::clients::ws::{self, Ws};

/// A message a subscriber received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recv {
    /// Its [`key`].
    pub key: u64,
    /// When, µs since the start of the run.
    pub at_us: u64,
    /// Whether it came in the replay after a `subscribed` reply with `recovered: true`.
    pub repaired: bool,
}

/// What told a subscriber it may have missed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    /// A `subscribed` reply with `recovered: false` on a resubscribe.
    NotRecovered,
    /// A message with an epoch other than the one the subscriber had.
    EpochChange,
    /// A `{"type":"missed"}` push for the channel.
    Missed,
    /// The connection was lost (channels without history only).
    Disconnected,
}

/// A signal, over a time span (a point for every kind but `Disconnected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    /// Its kind.
    pub kind: SignalKind,
    /// Start, µs since the start of the run.
    pub from_us: u64,
    /// End, µs since the start of the run (`u64::MAX`: the end of the run).
    pub to_us: u64,
}

/// What one subscriber saw.
#[derive(Debug, Clone, Default)]
pub struct SubLog {
    /// Its index.
    pub index: usize,
    /// Its channel (index).
    pub channel: usize,
    /// When its first `subscribed` reply arrived; `None` if it never subscribed.
    pub first_sub_us: Option<u64>,
    /// Every message received, in order; duplicates are counted, not kept.
    pub received: Vec<Recv>,
    /// Every signal.
    pub signals: Vec<Signal>,
    /// Its connections: (subscribed at, lost at or `u64::MAX`, node).
    pub connections: Vec<(u64, u64, usize)>,
    /// Messages received a second time.
    pub duplicates: u64,
    /// History offsets that skipped ahead with no signal since the last message.
    pub gaps: u64,
    /// History offsets not above the last one (new messages, not duplicates).
    pub backwards: u64,
    /// The first gap or backward step, for the report.
    pub first_offset_error: Option<String>,
    /// Resubscribes answered `recovered: true` / `false`.
    pub recovered: (u64, u64),
    /// `missed` pushes.
    pub missed_pushes: u64,
    /// Messages with a new epoch.
    pub epoch_changes: u64,
    /// Connect attempts that failed.
    pub failed_attempts: u64,
    /// `disconnect` notices by code.
    pub disconnects: BTreeMap<String, u64>,
    /// Frames that were none of the above (errors, binary, unparsable).
    pub unexpected: u64,
    /// The first such frame.
    pub first_unexpected: Option<String>,
    /// Whether it received its channel's final marker.
    pub got_marker: bool,
}

/// What every subscriber shares with the coordinator.
pub struct SubShared {
    /// The run's clock.
    pub clock: Clock,
    /// The channels.
    pub channels: Arc<Vec<Chan>>,
    /// Every node's WebSocket URL.
    pub urls: Vec<Arc<str>>,
    /// The reconnect backoff.
    pub backoff: Backoff,
    /// Time allowed for one connect + subscribe.
    pub setup_timeout: Duration,
    /// The run's seed.
    pub seed: u64,
    /// Subscribers currently subscribed.
    pub connected: AtomicUsize,
    /// Subscribers that have their marker (or have ended).
    pub finished: AtomicUsize,
}

/// One subscriber's running state.
struct Sub {
    log: SubLog,
    shared: Arc<SubShared>,
    seen: HashSet<u64>,
    /// History: the epoch and the last offset.
    epoch: Option<String>,
    last: u64,
    /// A signal came since the last message (a gap is then not an error).
    signalled: bool,
    /// Offsets up to this one are the replay of a recovery.
    replay_until: Option<u64>,
    marker: Option<u64>,
    finished: bool,
}

impl Sub {
    fn new(log: SubLog, shared: Arc<SubShared>) -> Self {
        Self {
            log,
            shared,
            seen: HashSet::new(),
            epoch: None,
            last: 0,
            signalled: false,
            replay_until: None,
            marker: None,
            finished: false,
        }
    }

    fn history(&self) -> bool {
        self.shared.channels[self.log.channel].history
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.shared.finished.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn unexpected(&mut self, what: impl FnOnce() -> String) {
        self.log.unexpected += 1;
        if self.log.first_unexpected.is_none() {
            self.log.first_unexpected = Some(what());
        }
    }

    /// Connects to `url` and subscribes (recovering on a history channel once it has a
    /// position).
    async fn connect(&self, url: &str) -> anyhow::Result<(Ws, Value)> {
        let channel = &self.shared.channels[self.log.channel].name;
        let recover = self.epoch.as_deref().map(|e| (e, self.last));
        let cmd = ws::subscribe_command(channel, recover);
        let (ws, reply, _) = ws::connect_and_subscribe(url, ws::small_config(), cmd).await?;
        Ok((ws, reply))
    }

    /// Takes in a `subscribed` reply.
    fn subscribed(&mut self, reply: &Value, node: usize) {
        let now = self.shared.clock.us();
        let first = self.log.first_sub_us.is_none();
        self.log.first_sub_us.get_or_insert(now);
        self.log.connections.push((now, u64::MAX, node));
        // A lost connection on a channel without history is a signal until now.
        if let Some(s) = self.log.signals.last_mut()
            && s.kind == SignalKind::Disconnected
            && s.to_us == u64::MAX
        {
            s.to_us = now;
        }
        if !self.history() {
            return;
        }
        let (Some(epoch), Some(offset)) = (reply["epoch"].as_str(), reply["offset"].as_u64())
        else {
            self.unexpected(|| format!("subscribed without epoch/offset: {reply}"));
            return;
        };
        let recovered = reply["recovered"].as_bool().unwrap_or(false);
        if !first && recovered {
            self.log.recovered.0 += 1;
            self.replay_until = Some(offset).filter(|&n| n > self.last);
        } else if !first {
            self.log.recovered.1 += 1;
            self.signal(SignalKind::NotRecovered, now);
            if self.epoch.as_deref() != Some(epoch) {
                self.log.epoch_changes += 1;
            }
        }
        if first || !recovered {
            self.epoch = Some(epoch.to_owned());
            self.last = offset;
        }
    }

    fn signal(&mut self, kind: SignalKind, now: u64) {
        self.log.signals.push(Signal {
            kind,
            from_us: now,
            to_us: now,
        });
        self.signalled = true;
    }

    fn dropped(&mut self) {
        let now = self.shared.clock.us();
        if let Some(c) = self.log.connections.last_mut()
            && c.1 == u64::MAX
        {
            c.1 = now;
        }
        if !self.history() {
            self.log.signals.push(Signal {
                kind: SignalKind::Disconnected,
                from_us: now,
                to_us: u64::MAX,
            });
        }
        self.replay_until = None;
    }

    fn frame(&mut self, frame: &[u8]) {
        if frame.starts_with(ws::MESSAGE_PREFIX) {
            self.message(frame);
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(frame) else {
            self.unexpected(|| String::from_utf8_lossy(frame).into_owned());
            return;
        };
        match v["type"].as_str() {
            Some("missed") if v["channel"] == self.shared.channels[self.log.channel].name => {
                self.log.missed_pushes += 1;
                self.signal(SignalKind::Missed, self.shared.clock.us());
            }
            Some("disconnect") => {
                *self
                    .log
                    .disconnects
                    .entry(v["code"].to_string())
                    .or_default() += 1;
            }
            _ => self.unexpected(|| v.to_string()),
        }
    }

    fn message(&mut self, frame: &[u8]) {
        let now = self.shared.clock.us();
        let Some(stamp) = payload::parse_stamp(frame) else {
            self.unexpected(|| String::from_utf8_lossy(frame).into_owned());
            return;
        };
        let k = key(stamp.publisher, stamp.seq);
        if !self.seen.insert(k) {
            self.log.duplicates += 1;
            return;
        }
        let mut repaired = false;
        if self.history() {
            let (Some(offset), Some(epoch)) =
                (payload::parse_offset(frame), payload::parse_epoch(frame))
            else {
                self.unexpected(|| String::from_utf8_lossy(frame).into_owned());
                return;
            };
            if self.epoch.as_deref().map(str::as_bytes) != Some(epoch) {
                self.log.epoch_changes += 1;
                self.signal(SignalKind::EpochChange, now);
                self.epoch = Some(String::from_utf8_lossy(epoch).into_owned());
                // A new epoch numbers from its own start: no gap or step back to check.
                self.last = offset;
            } else if offset > self.last + 1 && !self.signalled {
                self.log.gaps += 1;
                let last = self.last;
                self.log.first_offset_error.get_or_insert_with(|| {
                    format!("offset {offset} after {last} at {:.3} s", now as f64 / 1e6)
                });
            } else if offset <= self.last {
                self.log.backwards += 1;
                let last = self.last;
                self.log.first_offset_error.get_or_insert_with(|| {
                    format!("offset {offset} after {last} at {:.3} s", now as f64 / 1e6)
                });
            }
            if let Some(n) = self.replay_until {
                repaired = offset <= n;
                if offset >= n {
                    self.replay_until = None;
                }
            }
            self.last = self.last.max(offset);
        }
        self.signalled = false;
        self.log.received.push(Recv {
            key: k,
            at_us: now,
            repaired,
        });
        if self.marker == Some(k) {
            self.log.got_marker = true;
            self.finish();
        }
    }
}

impl Session for Sub {
    type Target = Arc<Vec<u64>>;

    /// The final markers' keys, by channel: say so once yours has arrived.
    fn drain(&mut self, markers: Arc<Vec<u64>>) {
        let m = markers[self.log.channel];
        self.marker = Some(m);
        if self.seen.contains(&m) {
            self.log.got_marker = true;
            self.finish();
        }
    }

    fn text(&mut self, frame: &[u8]) {
        self.frame(frame);
    }

    fn binary(&mut self) {
        self.unexpected(|| "binary frame".to_owned());
    }
}

/// Runs subscriber `index` until `Stop`: connects (to node `index % nodes` first), and after
/// every lost connection or failed attempt waits a backoff and tries the next node.
pub async fn run_subscriber(
    (index, setup, ready, mut control): Start<Control<Arc<Vec<u64>>>>,
    shared: Arc<SubShared>,
) -> SubLog {
    let nodes = shared.urls.len();
    let log = SubLog {
        index,
        channel: index % shared.channels.len(),
        ..SubLog::default()
    };
    let mut sub = Sub::new(log, shared.clone());
    let seed = shared.seed ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut redial = Redial::new(shared.urls.clone(), index % nodes, shared.backoff, seed);
    let mut ready = Some(ready);
    loop {
        let node = redial.node();
        let result = {
            let _permit = if ready.is_some() {
                Some(setup.acquire().await)
            } else {
                None
            };
            tokio::time::timeout(shared.setup_timeout, sub.connect(redial.url()))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        };
        match result {
            Ok((mut ws, reply)) => {
                redial.succeeded();
                sub.subscribed(&reply, node);
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(())).await;
                }
                shared.connected.fetch_add(1, Ordering::AcqRel);
                let ended = subscriber::read(&mut ws, &mut control, &mut sub).await;
                shared.connected.fetch_sub(1, Ordering::AcqRel);
                if ended == Ended::Stop {
                    return sub.log;
                }
                sub.dropped();
            }
            Err(e) => {
                sub.log.failed_attempts += 1;
                if let Some(r) = ready.take() {
                    // The first subscribe must work: the cluster was just started.
                    let _ = r.send(Err(format!("{}: {e:#}", shared.urls[node]))).await;
                    sub.finish();
                    break;
                }
            }
        }
        let wake = redial.wake();
        if !subscriber::pause_until(wake, &mut control, &mut sub).await {
            return sub.log;
        }
        redial.attempt();
    }
    // Ended early (first subscribe failed): wait for Stop so every subscriber reports at once.
    subscriber::wait_for_stop(&mut control, &mut sub).await;
    sub.log
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::time::Instant;

    use super::*;

    fn history_sub(shared: &Arc<SubShared>) -> Sub {
        let mut sub = Sub::new(SubLog::default(), shared.clone());
        sub.subscribed(
            &json!({"type":"subscribed","id":1,"channel":"h:0","epoch":"e1","offset":10}),
            0,
        );
        sub
    }

    fn sub_shared() -> Arc<SubShared> {
        Arc::new(SubShared {
            clock: Clock(Instant::now()),
            channels: Arc::new(vec![Chan {
                name: "h:0".into(),
                history: true,
            }]),
            urls: vec![Arc::from("ws://127.0.0.1:1/ws")],
            backoff: Backoff {
                min: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            setup_timeout: Duration::from_secs(1),
            seed: 1,
            connected: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
        })
    }

    fn frame(seq: u64, offset: u64, epoch: &str) -> Vec<u8> {
        format!(
            r#"{{"type":"message","channel":"h:0","data":{{"seq":{seq},"p":0,"t":1}},"offset":{offset},"epoch":"{epoch}"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn subscribers_check_offsets_across_epochs_recoveries_and_signals() {
        let shared = sub_shared();
        let mut sub = history_sub(&shared);
        for (seq, offset) in [(1, 11), (2, 12)] {
            sub.frame(&frame(seq, offset, "e1"));
        }
        // Redis lost the history: the new epoch starts again at 1.
        for (seq, offset) in [(3, 1), (4, 2)] {
            sub.frame(&frame(seq, offset, "e2"));
        }
        assert_eq!(
            (sub.log.gaps, sub.log.backwards, sub.log.epoch_changes),
            (0, 0, 1)
        );
        assert_eq!(sub.log.signals.len(), 1);
        // A gap with no signal is an error; after a `missed` push it is not.
        sub.frame(&frame(5, 4, "e2"));
        assert_eq!(sub.log.gaps, 1);
        sub.frame(br#"{"type":"missed","channel":"h:0","reason":"backplane"}"#);
        sub.frame(&frame(6, 9, "e2"));
        assert_eq!((sub.log.gaps, sub.log.missed_pushes), (1, 1));
        // A duplicate is counted once, not kept; a step back is an order error.
        sub.frame(&frame(6, 9, "e2"));
        sub.frame(&frame(7, 8, "e2"));
        assert_eq!((sub.log.duplicates, sub.log.backwards), (1, 1));
        // A recovery: the replay up to the reply's offset is `repaired`, then live again.
        sub.dropped();
        sub.subscribed(
            &json!({"type":"subscribed","id":1,"channel":"h:0","epoch":"e2","offset":11,"recovered":true}),
            0,
        );
        for (seq, offset) in [(8, 10), (9, 11), (10, 12)] {
            sub.frame(&frame(seq, offset, "e2"));
        }
        let repaired: Vec<bool> = sub.log.received.iter().map(|r| r.repaired).collect();
        assert_eq!(&repaired[repaired.len() - 3..], &[true, true, false]);
        assert_eq!(sub.log.recovered, (1, 0));
        // recovered:false is a signal, and the next offset follows the reply's.
        sub.dropped();
        sub.subscribed(
            &json!({"type":"subscribed","id":1,"channel":"h:0","epoch":"e3","offset":50,"recovered":false}),
            0,
        );
        sub.frame(&frame(11, 51, "e3"));
        assert_eq!(sub.log.recovered, (1, 1));
        assert_eq!((sub.log.gaps, sub.log.backwards), (1, 1));
        assert_eq!(sub.log.connections.len(), 3);
        assert!(
            sub.log
                .signals
                .iter()
                .any(|s| s.kind == SignalKind::NotRecovered)
        );
    }
}
