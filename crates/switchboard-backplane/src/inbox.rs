//! Where a backplane hands the envelopes it receives.

use std::hash::BuildHasher;

use tokio::sync::mpsc;

use crate::BackplaneError;
use crate::envelope::{Envelope, Kind};

/// The receiving side of a node: a fixed set of bounded lanes.
///
/// Envelopes of one target always go to the same lane, so a channel's order is
/// kept while different channels fan out in parallel. What happens at a full
/// lane is the caller's decision: the in-process backplane waits
/// ([`Inbox::deliver`]), which holds back its publisher; the Redis reader must
/// not wait (the Redis client would buffer without bound behind it), so it
/// uses [`Inbox::try_deliver`] and treats a full lane as a lost connection.
#[derive(Clone)]
pub struct Inbox {
    lanes: Vec<mpsc::Sender<Envelope>>,
    hasher: std::collections::hash_map::RandomState,
}

/// One lane's receiver, consumed by one fan-out worker.
pub type InboxLane = mpsc::Receiver<Envelope>;

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
            .send(envelope)
            .await
            .map_err(|_| BackplaneError::Closed)
    }

    /// Hands an envelope to the lane of its target if it has room.
    pub fn try_deliver(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        let lane = self.lane_of(&envelope);
        self.lanes[lane].try_send(envelope).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BackplaneError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => BackplaneError::Closed,
        })
    }

    fn lane_of(&self, envelope: &Envelope) -> usize {
        if self.lanes.len() == 1 {
            return 0;
        }
        let key: &str = match envelope.target.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(Kind::Channel(c)) => c,
            Some(Kind::User(u)) => u,
            Some(Kind::Conn(c)) => c,
            Some(Kind::AllNodes(_)) | None => "",
        };
        (self.hasher.hash_one(key) as usize) % self.lanes.len()
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
            .map(|_| lane.try_recv().unwrap().payload[0])
            .collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(lanes.iter().map(|l| l.len()).sum::<usize>(), 0);
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
