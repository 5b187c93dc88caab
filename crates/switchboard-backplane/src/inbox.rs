//! Where a backplane hands the envelopes it receives.

use std::hash::BuildHasher;

use tokio::sync::{mpsc, watch};

use crate::BackplaneError;
use crate::envelope::{Envelope, Kind};

/// The receiving side of a node: a fixed set of bounded lanes.
///
/// Envelopes of one target always go to the same lane, so a channel's order is
/// kept while different channels fan out in parallel. A full lane makes the
/// deliverer wait ([`Inbox::deliver`]): the in-process backplane's publisher,
/// or the Redis reader, which then stops reading its socket, so the backlog
/// waits in Redis (up to its `client-output-buffer-limit pubsub`), never in an
/// unbounded queue and never at the cost of a dropped envelope.
#[derive(Clone)]
pub struct Inbox {
    lanes: Vec<mpsc::Sender<Inbound>>,
    hasher: std::collections::hash_map::RandomState,
}

/// One lane's receiver, consumed by one fan-out worker.
pub type InboxLane = mpsc::Receiver<Inbound>;

/// What a lane carries.
// The envelope is the large variant and the one every message takes: boxing it
// would add an allocation per message to spare the rare marker some bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Inbound {
    /// A received envelope.
    Envelope(Envelope),
    /// The backplane's receiving connection was (re)established. Everything
    /// before this marker in the lane came from the previous connection,
    /// everything after it from the new one; what was published in between
    /// may have been missed. The fan-out repairs it (history channels) or
    /// tells the subscribers (other topics) once [`Resync::ready`] says the
    /// new connection holds every subscription.
    Resync(Resync),
}

/// A (re)connection of the backplane's receiving side; see [`Inbound::Resync`].
#[derive(Debug, Clone)]
pub struct Resync {
    /// The connection's generation (1 for the first connection).
    pub generation: u64,
    ready: watch::Receiver<Option<bool>>,
}

impl Resync {
    /// Waits until the new connection has every subscription back (`true`),
    /// or failed before that (`false`: a later generation takes over).
    pub async fn ready(&mut self) -> bool {
        match self.ready.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        }
    }
}

/// The sending side of a [`Resync`]: says whether resubscribing succeeded.
#[derive(Debug)]
pub struct ResyncGate(watch::Sender<Option<bool>>);

impl ResyncGate {
    /// A gate and the marker whose readiness it sets.
    pub fn new(generation: u64) -> (ResyncGate, Resync) {
        let (tx, rx) = watch::channel(None);
        (
            ResyncGate(tx),
            Resync {
                generation,
                ready: rx,
            },
        )
    }

    /// Resolves the marker: every subscription is back (`true`) or not.
    pub fn open(&self, ready: bool) {
        self.0.send_replace(Some(ready));
    }
}

impl Inbox {
    /// Makes an inbox of `lanes` lanes (at least one), each holding up to `capacity` envelopes.
    pub fn new(lanes: usize, capacity: usize) -> (Inbox, Vec<InboxLane>) {
        let (senders, receivers) = (0..lanes.max(1))
            .map(|_| mpsc::channel(capacity.max(1)))
            .unzip();
        (
            Inbox {
                lanes: senders,
                hasher: Default::default(),
            },
            receivers,
        )
    }

    /// Hands an envelope to the lane of its target, waiting while that lane is full.
    ///
    /// Cancel-safe: if dropped while waiting, the envelope was not delivered.
    pub async fn deliver(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        let lane = self.lane_of(&envelope);
        self.lanes[lane]
            .send(Inbound::Envelope(envelope))
            .await
            .map_err(|_| BackplaneError::Closed)
    }

    /// Hands an envelope to the lane of its target if it has room.
    pub fn try_deliver(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        let lane = self.lane_of(&envelope);
        self.lanes[lane]
            .try_send(Inbound::Envelope(envelope))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BackplaneError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => BackplaneError::Closed,
            })
    }

    /// Puts a resync marker in every lane, behind what each already holds.
    ///
    /// Cancel-safe in the sense that a marker either is in a lane or is not;
    /// a cancelled call may leave it in some lanes only (the node is stopping).
    pub async fn resync(&self, marker: &Resync) -> Result<(), BackplaneError> {
        for lane in &self.lanes {
            lane.send(Inbound::Resync(marker.clone()))
                .await
                .map_err(|_| BackplaneError::Closed)?;
        }
        Ok(())
    }

    /// How many lanes there are.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The lane a topic's envelopes go to: a channel name, a user id, or a
    /// connection id (what the envelope's target names).
    pub fn lane_of_key(&self, key: &str) -> usize {
        if self.lanes.len() == 1 {
            return 0;
        }
        (self.hasher.hash_one(key) as usize) % self.lanes.len()
    }

    fn lane_of(&self, envelope: &Envelope) -> usize {
        let key: &str = match envelope.target_kind() {
            Some(Kind::Channel(c)) => c,
            Some(Kind::User(u)) => u,
            Some(Kind::Conn(c)) => c,
            Some(Kind::AllNodes(_)) | None => "",
        };
        self.lane_of_key(key)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::envelope::{PayloadEncoding, for_channel};

    fn on(channel: &str, n: u8) -> Envelope {
        for_channel("n", channel, Bytes::from(vec![n]), PayloadEncoding::Binary)
    }

    #[tokio::test]
    async fn one_channel_keeps_one_lane_and_its_order() {
        let (inbox, mut lanes) = Inbox::new(4, 16);
        for n in 0..10 {
            inbox.deliver(on("a", n)).await.unwrap();
        }
        let lane = lanes.iter_mut().find(|l| !l.is_empty()).unwrap();
        let got: Vec<u8> = (0..10)
            .map(|_| match lane.try_recv().unwrap() {
                Inbound::Envelope(e) => e.payload[0],
                Inbound::Resync(_) => panic!("no resync was sent"),
            })
            .collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(lanes.iter().map(|l| l.len()).sum::<usize>(), 0);
    }

    #[tokio::test]
    async fn a_resync_marker_lands_in_every_lane_behind_what_it_holds() {
        let (inbox, mut lanes) = Inbox::new(3, 16);
        inbox.deliver(on("a", 1)).await.unwrap();
        let (gate, marker) = ResyncGate::new(2);
        inbox.resync(&marker).await.unwrap();
        let lane_a = inbox.lane_of_key("a");
        for (i, lane) in lanes.iter_mut().enumerate() {
            if i == lane_a {
                assert!(matches!(lane.try_recv().unwrap(), Inbound::Envelope(_)));
            }
            match lane.try_recv().unwrap() {
                Inbound::Resync(mut r) => {
                    assert_eq!(r.generation, 2);
                    gate.open(true);
                    assert!(r.ready().await);
                }
                Inbound::Envelope(_) => panic!("marker expected"),
            }
        }
        let (gate, mut marker) = ResyncGate::new(3);
        drop(gate);
        assert!(
            !marker.ready().await,
            "a dropped gate is a failed resubscription"
        );
    }

    #[test]
    fn a_full_lane_is_reported_not_waited_on() {
        let (inbox, _lanes) = Inbox::new(1, 2);
        inbox.try_deliver(on("a", 1)).unwrap();
        inbox.try_deliver(on("a", 2)).unwrap();
        assert!(matches!(
            inbox.try_deliver(on("a", 3)),
            Err(BackplaneError::Overloaded)
        ));
    }
}
