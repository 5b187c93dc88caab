//! A wake-up flag for a session's task: set from any thread, awaited by one
//! task, without a lock (`Notify` locks its waiter list on every wait).

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once the flag is up, and lowers it. Cancel-safe: a wake-up is
    /// consumed only by the poll that returns `Ready`.
    pub(crate) fn taken(&self) -> impl Future<Output = ()> + '_ {
        let check = move || self.raised.swap(false, Ordering::AcqRel);
        std::future::poll_fn(move |cx| {
            if check() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if check() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}
