//! Departures: presence members removed without leaving, on their way to the
//! gateway (which turns them into member-removed and channel-vacated events).

use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::Departure;

/// Departures held for the gateway before the newest are dropped.
pub(crate) const CAPACITY: usize = 4096;

/// The bounded queue of a backplane's departures and its receiving end until
/// the gateway takes it.
pub(crate) struct Departures {
    tx: mpsc::Sender<Departure>,
    rx: Mutex<Option<mpsc::Receiver<Departure>>>,
}

impl Departures {
    /// An empty queue of `capacity` departures.
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Departures {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// The receiving end, once.
    pub(crate) fn take(&self) -> Option<mpsc::Receiver<Departure>> {
        crate::lock(&self.rx).take()
    }

    /// Queues departures without waiting: what does not fit is counted and
    /// logged, never waited for (a purge runs on the heartbeat or a client's
    /// request, which a slow consumer must not hold up).
    pub(crate) fn send(&self, departures: impl IntoIterator<Item = Departure>) {
        let mut dropped = 0u64;
        for departure in departures {
            metrics::counter!("switchboard_presence_departures_total").increment(1);
            match self.tx.try_send(departure) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                // The gateway dropped its receiver: nobody wants them any more.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if dropped > 0 {
            metrics::counter!("switchboard_presence_departures_dropped_total").increment(dropped);
            tracing::warn!(
                dropped,
                capacity = self.tx.max_capacity(),
                "presence departures dropped: the gateway is not taking them fast enough"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn departure(user: &str) -> Departure {
        Departure {
            channel: "c".into(),
            user: user.into(),
            channel_now_empty: false,
            user_now_absent: true,
        }
    }

    #[tokio::test]
    async fn the_receiver_is_taken_once_and_overflow_is_dropped_not_waited_for() {
        let departures = Departures::new(2);
        let mut rx = departures.take().expect("the first take");
        assert!(departures.take().is_none(), "taken once");
        departures.send(["a", "b", "c"].map(departure));
        assert_eq!(rx.recv().await.unwrap().user, "a");
        assert_eq!(rx.recv().await.unwrap().user, "b");
        assert!(rx.try_recv().is_err(), "c did not fit");
        drop(rx);
        departures.send([departure("d")]);
    }
}
