//! The deliveries of `fanout`, `rooms`, `ramp` and `idle`, as each subscriber sees them:
//! counted, timed end to end and checked (per-publisher order, offsets on a channel with
//! history), in the [`Session`] that the shared subscriber client reads into.
//!
//! Each subscriber owns its per-publisher `last seen` sequence and its counters; the only
//! thing it shares on the hot path is one latency histogram shard (see
//! [`crate::measure::latency`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clients::fleet::Start;
use crate::clients::payload::{self, Stamp};
use crate::clients::protocol::Protocol;
use crate::clients::pusher::{self, Notice};
use crate::clients::subscriber::{self, Control, Ended, Session};
use crate::measure::latency::ShardedLatency;
use crate::measure::offsets::OffsetCheck;

/// What every subscriber task shares with the coordinator.
pub struct Shared {
    /// The subscribers' wire protocol.
    pub protocol: Protocol,
    /// The channels, as subscribers name them; each subscriber subscribes to one of them.
    pub channels: Vec<String>,
    /// Number of publisher tasks (publisher ids are `0..publishers`).
    pub publishers: usize,
    /// Messages sent at or after this time (µs since the epoch) are measured; `u64::MAX`
    /// until publishing starts.
    pub warmup_end_us: AtomicU64,
    /// Subscribers that have, since the drain began, seen every publisher's last message,
    /// or that have ended. The drain is over when it reaches the subscriber count.
    pub finished: AtomicUsize,
    /// Limit on connect + handshake + subscribe of one subscriber.
    pub setup_timeout: Duration,
    /// Socket settings (a small read buffer: tungstenite's default is 128 KiB per socket).
    pub ws_config: WebSocketConfig,
    /// Latency of measured messages, all subscribers together.
    pub latency: ShardedLatency,
}

/// What one subscriber saw.
pub struct Outcome {
    /// Index of this subscriber, `0..subscribers`.
    pub index: usize,
    /// Index of its `--ws` node.
    pub node: usize,
    /// Index of its channel in [`Shared::channels`].
    pub channel: usize,
    /// Whether it connected and subscribed.
    pub ready: bool,
    /// How long connect, upgrade, welcome, subscribe and `subscribed` took.
    pub setup: Duration,
    /// Measured messages received (duplicates excluded).
    pub received: u64,
    /// Messages whose seq equalled the last one seen from the same publisher.
    pub duplicated: u64,
    /// Messages whose seq was below the last one seen from the same publisher.
    pub out_of_order: u64,
    /// `error` replies (`pusher:error` is a close), binary frames, stamps from unknown
    /// publishers.
    pub unexpected: u64,
    /// Why the connection ended before `Stop`, if it did.
    pub ended: Option<String>,
    /// The offset check, on a channel with history (its `subscribed` reply had an offset).
    pub offsets: Option<OffsetCheck>,
}

impl Outcome {
    /// Nothing seen yet.
    fn new(index: usize, node: usize, channel: usize) -> Self {
        Self {
            index,
            node,
            channel,
            ready: false,
            setup: Duration::ZERO,
            received: 0,
            duplicated: 0,
            out_of_order: 0,
            unexpected: 0,
            ended: None,
            offsets: None,
        }
    }
}

/// Runs one subscriber, of channel `channel` on node `node`, until `Stop` (or until its
/// connection ends).
///
/// Sends one item on `ready` once subscribed (or failed to), while holding a `setup` permit,
/// which bounds how many connections are being set up at once.
pub async fn run(
    (index, setup, ready, mut control): Start<Control<Arc<Vec<u64>>>>,
    node: usize,
    channel: usize,
    url: Arc<str>,
    shared: Arc<Shared>,
) -> Outcome {
    let mut d = Deliveries::new(Outcome::new(index, node, channel), &shared);
    let mut ws = {
        let _permit = setup.acquire().await;
        let started = std::time::Instant::now();
        let connected = tokio::time::timeout(
            shared.setup_timeout,
            shared.protocol.connect_and_subscribe(
                &url,
                shared.ws_config,
                &shared.channels[channel],
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "setup timed out after {:?}",
                shared.setup_timeout
            ))
        });
        match connected {
            Ok((ws, reply)) => {
                d.out.setup = started.elapsed();
                d.out.ready = true;
                d.out.offsets = reply["offset"].as_u64().map(OffsetCheck::after);
                ws
            }
            Err(e) => {
                let msg = format!("{url}: {e:#}");
                let _ = ready.send(Err(msg.clone())).await;
                d.out.ended = Some(msg);
                return d.out;
            }
        }
    };
    let _ = ready.send(Ok(())).await;
    if let Ended::Dropped(reason) = subscriber::read(&mut ws, &mut control, &mut d).await {
        // A `disconnect` notice, if one came first, says more: keep it.
        d.out.ended.get_or_insert(reason);
        // Nothing more will arrive, so do not hold up the drain; then wait for Stop so that
        // every subscriber reports at the same point.
        d.finish();
        subscriber::wait_for_stop(&mut control, &mut d).await;
    }
    d.out
}

/// One subscriber's running state.
struct Deliveries<'a> {
    shared: &'a Shared,
    out: Outcome,
    last_seen: Vec<u64>,
    target: Option<Arc<Vec<u64>>>,
    finished: bool,
}

impl<'a> Deliveries<'a> {
    fn new(out: Outcome, shared: &'a Shared) -> Self {
        Self {
            shared,
            out,
            last_seen: vec![0; shared.publishers],
            target: None,
            finished: false,
        }
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.shared.finished.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Session for Deliveries<'_> {
    type Target = Arc<Vec<u64>>;

    fn drain(&mut self, t: Arc<Vec<u64>>) {
        if caught_up(&self.last_seen, &t) {
            self.finish();
        }
        self.target = Some(t);
    }

    fn text(&mut self, frame: &[u8]) {
        match self.shared.protocol.parse_stamp(frame) {
            Some(stamp) => {
                check_offset(frame, &mut self.out);
                record(stamp, self.shared, &mut self.last_seen, &mut self.out);
                if !self.finished
                    && self
                        .target
                        .as_ref()
                        .is_some_and(|t| caught_up(&self.last_seen, t))
                {
                    self.finish();
                }
            }
            None => control_frame(frame, &mut self.out),
        }
    }

    fn binary(&mut self) {
        self.out.unexpected += 1;
    }
}

/// Checks order and counts one stamped message.
fn record(stamp: Stamp, shared: &Shared, last_seen: &mut [u64], out: &mut Outcome) {
    let Some(last) = last_seen.get_mut(stamp.publisher as usize) else {
        out.unexpected += 1;
        return;
    };
    if stamp.seq == *last {
        out.duplicated += 1;
        return;
    }
    if stamp.seq < *last {
        // Late rather than repeated, most likely: it still counts as received.
        out.out_of_order += 1;
    } else {
        *last = stamp.seq;
    }
    if stamp.sent_us >= shared.warmup_end_us.load(Ordering::Relaxed) {
        out.received += 1;
        let latency = payload::now_us().saturating_sub(stamp.sent_us);
        shared.latency.record(out.index, latency);
    }
}

/// On a channel with history, checks that this message's offset is the next one.
fn check_offset(frame: &[u8], out: &mut Outcome) {
    if let Some(check) = out.offsets.as_mut() {
        match payload::parse_offset(frame) {
            Some(offset) => {
                check.see(offset);
            }
            None => check.missing += 1,
        }
    }
}

/// Handles a frame without a stamp: a `disconnect` notice (or a Pusher `pusher:error`, which
/// comes before a close) is remembered, an `error` counted.
fn control_frame(frame: &[u8], out: &mut Outcome) {
    let Ok(v) = serde_json::from_slice::<Value>(frame) else {
        out.unexpected += 1;
        return;
    };
    if v.get("event").is_some() {
        match pusher::notice(&v) {
            Notice::Closing(reason) => out.ended = Some(reason),
            Notice::Liveness => {}
            Notice::Unexpected => out.unexpected += 1,
        }
        return;
    }
    match v["type"].as_str() {
        Some("disconnect") => {
            out.ended = Some(format!("disconnect {} {}", v["code"], v["reason"]));
        }
        // Presence on a namespace could add these; they are not errors.
        Some("join" | "leave") => {}
        _ => out.unexpected += 1,
    }
}

fn caught_up(last_seen: &[u64], target: &[u64]) -> bool {
    last_seen
        .iter()
        .zip(target)
        .all(|(seen, last)| seen >= last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(warmup_end_us: u64) -> Shared {
        Shared {
            protocol: Protocol::Json,
            channels: vec!["c".into()],
            publishers: 2,
            warmup_end_us: AtomicU64::new(warmup_end_us),
            finished: AtomicUsize::new(0),
            setup_timeout: Duration::from_secs(1),
            ws_config: WebSocketConfig::default(),
            latency: ShardedLatency::new(1),
        }
    }

    fn outcome() -> Outcome {
        Outcome {
            ready: true,
            ..Outcome::new(0, 0, 0)
        }
    }

    #[test]
    fn order_checks_are_per_publisher() {
        let s = shared(100);
        let mut last = vec![0; 2];
        let mut out = outcome();
        let now = payload::now_us();
        for (publisher, seq, sent_us) in [
            (0, 1, 50), // warm-up: checked, not counted
            (0, 2, now),
            (1, 1, now), // another publisher's sequence is independent
            (0, 2, now), // duplicate
            (0, 5, now), // a gap is not an order error (loss is counted at the end)
            (0, 4, now), // late
            (7, 1, now), // unknown publisher
        ] {
            record(
                Stamp {
                    publisher,
                    seq,
                    sent_us,
                },
                &s,
                &mut last,
                &mut out,
            );
        }
        assert_eq!(
            (
                out.received,
                out.duplicated,
                out.out_of_order,
                out.unexpected
            ),
            (4, 1, 1, 1)
        );
        assert_eq!(last, vec![5, 1]);
        assert_eq!(s.latency.merged().summary().count, 4);
        assert!(caught_up(&last, &[5, 1]) && !caught_up(&last, &[5, 2]));
    }

    #[test]
    fn pusher_deliveries_are_counted() {
        let mut s = shared(0);
        s.protocol = Protocol::Pusher;
        let mut d = Deliveries::new(outcome(), &s);
        let frame = |seq: u64| {
            format!(
                r#"{{"event":"message","channel":"c","data":"{{\"seq\":{seq},\"p\":1,\"t\":{},\"pad\":\"xx\"}}"}}"#,
                payload::now_us()
            )
        };
        for seq in [1, 2, 2] {
            d.text(frame(seq).as_bytes());
        }
        d.text(br#"{"event":"pusher:ping","data":{}}"#);
        d.drain(Arc::new(vec![0, 2]));
        assert!(d.finished);
        assert_eq!(
            (d.out.received, d.out.duplicated, d.out.unexpected),
            (2, 1, 0)
        );
        assert_eq!(d.last_seen, [0, 2]);
    }

    #[test]
    fn offsets_are_checked_only_with_history() {
        let frame = |offset: u64| {
            format!(
                r#"{{"type":"message","channel":"h:a","data":{{"seq":{offset},"p":0,"t":1}},"offset":{offset},"epoch":"e"}}"#
            )
        };
        let mut plain = outcome();
        check_offset(frame(9).as_bytes(), &mut plain);
        assert_eq!(plain.offsets, None);

        let mut hist = outcome();
        hist.offsets = Some(OffsetCheck::after(3));
        for offset in [4, 5, 5, 7] {
            check_offset(frame(offset).as_bytes(), &mut hist);
        }
        check_offset(
            br#"{"type":"message","channel":"h:a","data":{"seq":1,"p":0,"t":1}}"#,
            &mut hist,
        );
        let c = hist.offsets.unwrap();
        assert_eq!(
            (c.last, c.checked, c.gaps, c.skipped, c.repeats, c.missing),
            (7, 4, 1, 1, 1, 1)
        );
    }

    #[test]
    fn disconnect_notices_are_kept() {
        let mut out = outcome();
        control_frame(
            br#"{"type":"disconnect","code":4008,"reason":"slow consumer","reconnect":true}"#,
            &mut out,
        );
        assert_eq!(
            out.ended.as_deref(),
            Some(r#"disconnect 4008 "slow consumer""#)
        );
        control_frame(br#"{"type":"error","code":"internal"}"#, &mut out);
        control_frame(b"not json", &mut out);
        assert_eq!(out.unexpected, 2);
        // The Pusher protocol's: liveness is fine, an error names the close, the rest counts.
        control_frame(br#"{"event":"pusher:pong","data":{}}"#, &mut out);
        control_frame(
            br#"{"event":"switchboard:missed","channel":"c","data":"{\"reason\":\"backplane\"}"}"#,
            &mut out,
        );
        assert_eq!(out.unexpected, 3);
        control_frame(
            br#"{"event":"pusher:error","data":{"code":4200,"message":"draining"}}"#,
            &mut out,
        );
        assert_eq!(
            out.ended.as_deref(),
            Some(r#"pusher:error 4200 "draining""#)
        );
    }
}
