//! The fan-out: one worker per backplane lane hands each received envelope
//! to the local sessions it is for (through the hub), and after each
//! backplane reconnect repairs what its topics' subscribers may have missed,
//! before anything newer (docs/PROTOCOL.md, "Delivery guarantees").

use std::sync::Arc;
use std::sync::atomic::Ordering;

use switchboard_backplane::envelope::Kind;
use switchboard_backplane::{Envelope, Inbound, InboxLane};
use switchboard_proto::backplane::envelope::Control;
use tokio::time::Instant;

use crate::node::NodeInner;
use crate::ops;
use crate::protocol::{CloseReason, Disconnect, MissedReason};
use crate::session::{End, MAX_RUN};

/// Messages read from history per round trip when a reconnect is repaired.
const REPAIR_PAGE: usize = 256;
/// Most pages one channel's repair reads (a bound, far above a real gap).
const REPAIR_MAX_PAGES: usize = 4096;

/// One fan-out worker: takes what piled up in its lane at once (a
/// subscriber then gets consecutive messages of a channel in one write) and
/// repairs its topics after each backplane reconnect, in lane order.
pub(crate) async fn run(node: Arc<NodeInner>, lane_index: usize, mut lane: InboxLane) {
    node.fan_out(lane_index, &mut lane).await;
}

impl NodeInner {
    async fn fan_out(&self, lane_index: usize, lane: &mut InboxLane) {
        let mut batch = Vec::with_capacity(MAX_RUN);
        let mut envelopes = Vec::with_capacity(MAX_RUN);
        while lane.recv_many(&mut batch, MAX_RUN).await > 0 {
            for item in batch.drain(..) {
                match item {
                    Inbound::Envelope(e) => envelopes.push(e),
                    Inbound::Resync(mut marker) => {
                        self.dispatch(&envelopes);
                        envelopes.clear();
                        // Nothing can have been missed before the first connection.
                        if marker.ready().await && marker.generation > 1 {
                            self.repair(lane_index).await;
                        }
                    }
                }
            }
            self.dispatch(&envelopes);
            envelopes.clear();
        }
    }

    /// After the backplane's receiving connection came back, makes good what
    /// this lane's subscribers may have missed while it was away: history
    /// channels get the gap from history, in order, before anything newer
    /// (the lane waits meanwhile); other topics get a `missed` push.
    async fn repair(&self, lane: usize) {
        let started = Instant::now();
        let (mut repaired, mut signalled) = (0usize, 0usize);
        // Once history cannot be read (the link broke again), the rest of the
        // pass only signals: a later reconnect repairs from the same point.
        let mut readable = true;
        for key in self.hub.keys() {
            let (channel, lane_key) = crate::hub::topic_parts(&key);
            if self.inbox.lane_of_key(lane_key) != lane {
                continue;
            }
            let history = channel.and_then(|c| ops::history::policy(self, c));
            match (channel, history) {
                (Some(channel), Some(_)) if readable && self.backplane.is_up() => {
                    let (r, s, ok) = self.repair_channel(channel).await;
                    repaired += r;
                    signalled += s;
                    readable = ok;
                }
                _ => signalled += self.hub.missed(&key, MissedReason::Backplane),
            }
        }
        metrics::counter!("switchboard_repaired_messages_total").increment(repaired as u64);
        metrics::histogram!("switchboard_backplane_repair_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(
            lane,
            repaired,
            signalled,
            took_ms = started.elapsed().as_millis() as u64,
            "repaired after a backplane reconnect"
        );
    }

    /// Delivers a history channel's messages published since the newest one
    /// this node fanned out; returns how many, how many subscribers were told
    /// of a gap history could not fill, and whether history could be read.
    async fn repair_channel(&self, channel: &str) -> (usize, usize, bool) {
        let (mut repaired, mut signalled) = (0, 0);
        let Some((epoch, after)) = self.hub.repair_from(channel) else {
            // No subscriber has been told a position yet: nothing to measure a gap from.
            return (0, self.hub.missed(channel, MissedReason::Backplane), true);
        };
        // Read until caught up with the newest message history holds.
        let mut reader = ops::history::Reader::new(self, channel, epoch, after, u64::MAX);
        for _ in 0..REPAIR_MAX_PAGES {
            let step = match reader.next(REPAIR_PAGE).await {
                Ok(step) => step,
                Err(e) => {
                    tracing::warn!(channel, error = %e, "history unreadable: cannot repair the gap");
                    return (
                        repaired,
                        signalled + self.hub.missed(channel, MissedReason::Backplane),
                        false,
                    );
                }
            };
            if step.gap {
                // Trimmed, lost or expired before it could be read.
                signalled += self.hub.missed(channel, MissedReason::History);
            }
            for run in step.messages.chunks(MAX_RUN) {
                self.hub.fanout_run(run);
            }
            repaired += step.messages.len();
            if reader.caught_up() {
                break;
            }
        }
        (repaired, signalled, true)
    }

    /// Hands received envelopes to the sessions they are for, in order:
    /// consecutive envelopes of one topic go out together.
    fn dispatch(&self, envelopes: &[Envelope]) {
        for run in crate::hub::runs(envelopes) {
            match run {
                crate::hub::Run::Conn(envelope) => self.dispatch_to_conn(envelope),
                crate::hub::Run::Topic(run) => {
                    self.envelopes_in
                        .fetch_add(run.len() as u64, Ordering::Relaxed);
                    self.metrics.fanout_run();
                    self.hub.fanout_run(run);
                }
            }
        }
    }

    /// An envelope for one connection (a disconnect by the server API).
    fn dispatch_to_conn(&self, envelope: &Envelope) {
        if let Some(Kind::Conn(conn)) = envelope.target_kind()
            && let Some(Control::Disconnect(d)) = &envelope.control
        {
            let session = crate::lock(&self.conns).get(conn.as_str()).cloned();
            if let Some(session) = session {
                session.end_with(End::Closed(CloseReason::ServerApi(
                    Disconnect::from_envelope(d),
                )));
            }
        }
    }
}
