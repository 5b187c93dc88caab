//! One session's subscription to one topic, and the recovery seam (see the
//! hub's module documentation): the buffer a recovering subscription holds
//! live messages in, and the floor below which nothing is given twice.

use std::sync::{Arc, Mutex};

use crate::session::{Outbound, SessionHandle};

/// One session's subscription to one topic.
pub(crate) struct Subscription {
    pub(crate) session: Arc<SessionHandle>,
    /// Every delivery takes this (uncontended but for `go_live` and `close`),
    /// so the buffer, the floor and the end of the subscription change
    /// atomically with respect to deliveries.
    state: Mutex<SubscriptionState>,
}

struct SubscriptionState {
    /// Live messages held while the session reads the history, with their epoch.
    buffer: Option<Vec<(Outbound, Box<str>)>>,
    /// The buffer overflowed and its channel messages were let go (they are
    /// in the history): the session must read further before going live.
    lagging: bool,
    /// Messages of this epoch with an offset at or below this were given to
    /// the session already; `None` once passed.
    floor: Option<(Box<str>, u64)>,
    /// Removed from the hub: a fan-out still holding an older subscriber list
    /// must not deliver through it (the session may already be subscribed anew).
    closed: bool,
}

impl Subscription {
    pub(super) fn new(session: Arc<SessionHandle>, buffering: bool) -> Self {
        Subscription {
            session,
            state: Mutex::new(SubscriptionState {
                buffer: buffering.then(Vec::new),
                lagging: false,
                floor: None,
                closed: false,
            }),
        }
    }

    /// Ends buffering, unless the buffer had to let messages go since the
    /// last call (then it returns `false`, keeps buffering, and the session
    /// reads the history further first). Atomically with respect to
    /// deliveries, the floor is set (everything up to it was given to the
    /// session from history) and the buffered messages above it are queued.
    pub(crate) fn go_live(&self, epoch: &str, floor: u64) -> bool {
        self.go_live_keeping(epoch, floor, |_| true)
    }

    /// As [`Subscription::go_live`], dropping the buffered items `keep`
    /// refuses (a presence member event that the subscription's own member
    /// list, read while buffering, already accounts for).
    pub(crate) fn go_live_keeping(
        &self,
        epoch: &str,
        floor: u64,
        keep: impl Fn(&Outbound) -> bool,
    ) -> bool {
        let mut state = crate::lock(&self.state);
        if std::mem::take(&mut state.lagging) {
            return false;
        }
        state.floor = Some((epoch.into(), floor));
        for (item, item_epoch) in state.buffer.take().unwrap_or_default() {
            if Self::passes(&mut state.floor, &item, &item_epoch) && keep(&item) {
                self.session.push(item);
            }
        }
        true
    }

    /// Whether an item goes to the session past the floor; lets the floor go
    /// once a message is above it or of another epoch.
    fn passes(floor: &mut Option<(Box<str>, u64)>, item: &Outbound, epoch: &str) -> bool {
        let offset = item.offset();
        let Some((floor_epoch, floor_offset)) = floor else {
            return true;
        };
        if offset == 0 {
            return true;
        }
        if **floor_epoch == *epoch && offset <= *floor_offset {
            return false;
        }
        *floor = None;
        true
    }

    /// Delivers one message, or a run of messages, of this topic in order: a
    /// run in one write when the session can take it all now.
    pub(super) fn deliver(&self, items: &[Outbound], epoch: &str, capacity: usize) {
        let mut guard = crate::lock(&self.state);
        let state = &mut *guard;
        if state.closed {
            return;
        }
        if let Some(buffer) = state.buffer.as_mut() {
            if buffer.len() + items.len() > capacity {
                // Channel messages can be read again from history: let them
                // go rather than the session. What history does not hold
                // (join, leave, missed) is kept, within the same bound.
                buffer.retain(|(item, _)| item.offset() == 0);
                state.lagging = true;
                metrics::counter!("switchboard_recovery_buffer_spills_total").increment(1);
                if buffer.len() + items.len() > capacity {
                    self.session.overflowed();
                    return;
                }
            }
            buffer.extend(
                items
                    .iter()
                    .map(|item| (item.clone(), Box::<str>::from(epoch))),
            );
            return;
        }
        if state.floor.is_none() {
            match items {
                [one] => self.session.push(one.clone()),
                run => self.session.push_run(run),
            }
            return;
        }
        // What recovery already gave the session is not given again.
        for item in items {
            if Self::passes(&mut state.floor, item, epoch) {
                self.session.push(item.clone());
            }
        }
    }

    /// Stops every delivery through this subscription.
    pub(super) fn close(&self) {
        crate::lock(&self.state).closed = true;
    }
}
