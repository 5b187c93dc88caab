//! Where a backplane hands the envelopes it receives.

use std::hash::BuildHasher;

use tokio::sync::mpsc;

use crate::BackplaneError;
use crate::envelope::{Envelope, Kind};

/// The receiving side of a node: a fixed set of bounded lanes.
///
/// Envelopes of one target always go to the same lane, so a channel's order is
/// kept while different channels fan out in parallel. A full lane makes
/// [`Inbox::deliver`] wait: the backplane reader slows down rather than drop
/// anything (Redis then buffers, up to its own pub/sub output limit).
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
