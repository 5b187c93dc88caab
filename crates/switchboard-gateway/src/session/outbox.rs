//! A session's outgoing frames: written straight to the socket by whoever
//! produces them, queued only while the socket is full.
//!
//! The fan-out delivers a message by calling [`Outbox::push`] for each
//! subscriber. When nothing is queued, the frame (a header built on the
//! stack, then the shared payload) goes to the socket in one non-blocking
//! vectored write from the fan-out's own task: no queue, no task wake-up, no
//! copy. Only when the socket cannot take it all is the rest queued, and the
//! session's task, woken once, writes the queue as the socket drains, many
//! frames per write. Every write, direct or queued, happens under one lock,
//! so frames are never interleaved and order is the order of `push` calls.
//!
//! The queue is bounded: a push that finds it full fails, and the session is
//! ended as a slow consumer. It holds no memory while empty.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::Outbound;
use super::frames::{self, MAX_BATCH, MAX_HEADER, OpCode};
use super::signal::Signal;
use crate::metrics::HotMetrics;

/// How a push went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// On the socket (in the kernel's send buffer).
    Written,
    /// Queued behind frames the socket could not take yet.
    Queued,
    /// The queue is full: the session must end as a slow consumer.
    Full,
    /// The session is closing; nothing more is sent.
    Sealed,
    /// The socket failed: the session must end.
    Failed,
}

/// How a flush went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Nothing is queued any more.
    Drained,
    /// The socket is full; `progress` says whether any byte went out.
    Blocked { progress: bool },
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Most frames queued at once.
    capacity: usize,
    /// The opcode of messages and replies (text for JSON, binary for protobuf).
    data: OpCode,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Outbound>,
    /// Bytes of the first queued frame already written (header included).
    written: usize,
    /// Set once the close frame is queued, or the socket failed: nothing may follow.
    sealed: bool,
}

/// A queue that grew past this is freed when it empties (a burst should not
/// leave an idle connection holding its peak).
const KEEP_CAPACITY: usize = 16;

impl Outbox {
    pub(crate) fn new(capacity: usize, data: OpCode) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            data,
        }
    }

    /// Sends a frame now if nothing is queued, else queues it. `queued` is
    /// raised when this push started the queue: the session's task must then
    /// write it as the socket drains.
    pub(crate) fn push(
        &self,
        socket: &TcpStream,
        item: Outbound,
        metrics: &HotMetrics,
        queued: &Signal,
    ) -> Pushed {
        let mut state = crate::lock(&self.state);
        if state.sealed {
            return Pushed::Sealed;
        }
        if !state.queue.is_empty() {
            if state.queue.len() >= self.capacity {
                return Pushed::Full;
            }
            // The task was told when the queue became non-empty.
            state.queue.push_back(item);
            metrics.queued();
            return Pushed::Queued;
        }
        let mut header = [0u8; MAX_HEADER];
        let (head, body) = self.parts(&item, &mut header);
        let total = head.len() + body.len();
        match write(socket, &[IoSlice::new(head), IoSlice::new(body)]) {
            Ok(n) if n == total => {
                account(&item, total, metrics);
                Pushed::Written
            }
            Ok(n) => {
                metrics.sent(n);
                state.written = n;
                state.queue.push_back(item);
                metrics.queued();
                queued.raise();
                Pushed::Queued
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                state.queue.push_back(item);
                metrics.queued();
                queued.raise();
                Pushed::Queued
            }
            Err(_) => {
                state.sealed = true;
                Pushed::Failed
            }
        }
    }

    /// Writes queued frames until the queue is empty or the socket is full.
    pub(crate) fn flush(&self, socket: &TcpStream, metrics: &HotMetrics) -> io::Result<Flushed> {
        let mut state = crate::lock(&self.state);
        let mut progress = false;
        loop {
            if state.queue.is_empty() {
                if state.queue.capacity() > KEEP_CAPACITY {
                    state.queue = VecDeque::new();
                }
                return Ok(Flushed::Drained);
            }
            let n = state.queue.len().min(MAX_BATCH);
            let mut headers = [[0u8; MAX_HEADER]; MAX_BATCH];
            let mut slices = [IoSlice::new(&[]); 2 * MAX_BATCH];
            for (i, (item, header)) in state
                .queue
                .iter()
                .zip(headers.iter_mut())
                .take(n)
                .enumerate()
            {
                let (head, body) = self.parts(item, header);
                slices[2 * i] = IoSlice::new(head);
                slices[2 * i + 1] = IoSlice::new(body);
            }
            let mut pending = &mut slices[..2 * n];
            IoSlice::advance_slices(&mut pending, state.written);
            let wrote = match write(socket, pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(wrote) => wrote,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Flushed::Blocked { progress });
                }
                Err(e) => {
                    state.sealed = true;
                    return Err(e);
                }
            };
            progress = true;
            metrics.sent(wrote);
            // Pop what went out whole; remember how far the next one got.
            let mut left = state.written + wrote;
            state.written = 0;
            while let Some(item) = state.queue.front() {
                let mut header = [0u8; MAX_HEADER];
                let (head, body) = self.parts(item, &mut header);
                let size = head.len() + body.len();
                if left < size {
                    state.written = left;
                    break;
                }
                left -= size;
                if let Some(Outbound::Message { published_us, .. }) = state.queue.pop_front() {
                    metrics.delivered(published_us);
                }
            }
        }
    }

    /// Queues the last frames (an optional `disconnect` push, then a close
    /// frame) and seals the outbox. With `discard`, what was queued is dropped
    /// first, but for a frame already partly written, which must be finished.
    pub(crate) fn close(&self, last: Option<Bytes>, close: Bytes, discard: bool) {
        let mut state = crate::lock(&self.state);
        if state.sealed {
            return;
        }
        if discard {
            let keep = usize::from(state.written > 0);
            state.queue.truncate(keep);
        }
        if let Some(frame) = last {
            state.queue.push_back(Outbound::Reply(frame));
        }
        state.queue.push_back(Outbound::Control(close));
        state.sealed = true;
    }

    /// Whether frames are waiting for the socket.
    pub(crate) fn is_queued(&self) -> bool {
        !crate::lock(&self.state).queue.is_empty()
    }

    /// Seals the outbox without a close frame (the connection is being dropped).
    pub(crate) fn seal(&self) {
        crate::lock(&self.state).sealed = true;
    }

    /// The header (written into `header`) and payload of a queued item.
    fn parts<'a>(
        &self,
        item: &'a Outbound,
        header: &'a mut [u8; MAX_HEADER],
    ) -> (&'a [u8], &'a [u8]) {
        match item {
            Outbound::Message { frame, .. } | Outbound::Reply(frame) => {
                let n = frames::header(self.data, frame.len(), header);
                (&header[..n], frame)
            }
            Outbound::Control(frame) => (&[], frame),
        }
    }
}

/// Accounts a frame written whole by a direct push.
fn account(item: &Outbound, bytes: usize, metrics: &HotMetrics) {
    metrics.sent(bytes);
    if let Outbound::Message { published_us, .. } = item {
        metrics.delivered(*published_us);
    }
}

/// One non-blocking vectored write. Empty leading slices are skipped by the
/// caller's `advance_slices`, so `Ok(0)` means the peer is gone.
fn write(socket: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    socket.try_write_vectored(slices)
}
