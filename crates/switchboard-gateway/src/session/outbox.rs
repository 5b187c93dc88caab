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
use super::signal::Signal;
use crate::metrics::HotMetrics;
use crate::ws::frames::{self, MAX_BATCH, MAX_HEADER, OpCode};

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

/// Most frames of one run (consecutive messages of a channel written to a
/// subscriber together); small, because its arrays are on the stack of every
/// delivery.
pub(crate) const MAX_RUN: usize = 16;

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
        item: &Outbound,
        metrics: &HotMetrics,
        queued: &Signal,
    ) -> Pushed {
        self.push_all::<1>(socket, std::slice::from_ref(item), metrics, queued)
    }

    /// Sends several frames, in order, in one vectored write when nothing is
    /// queued (the fan-out of a run of messages for one channel), else queues
    /// them. A run never goes in part: if it does not fit the queue, nothing
    /// of it is queued and the session must end. At most [`MAX_RUN`] items.
    pub(crate) fn push_run(
        &self,
        socket: &TcpStream,
        items: &[Outbound],
        metrics: &HotMetrics,
        queued: &Signal,
    ) -> Pushed {
        self.push_all::<MAX_RUN>(socket, items, metrics, queued)
    }

    /// [`Outbox::push`] and [`Outbox::push_run`]: `N` bounds the run and sizes
    /// the stack arrays of the write, so a single frame pays for one slot.
    /// Only what the socket does not take is cloned into the queue.
    fn push_all<const N: usize>(
        &self,
        socket: &TcpStream,
        items: &[Outbound],
        metrics: &HotMetrics,
        queued: &Signal,
    ) -> Pushed {
        debug_assert!(items.len() <= N);
        let mut state = crate::lock(&self.state);
        if state.sealed {
            return Pushed::Sealed;
        }
        if !state.queue.is_empty() {
            if state.queue.len() + items.len() > self.capacity {
                return Pushed::Full;
            }
            // The task was told when the queue became non-empty.
            state.queue.extend(items.iter().cloned());
            metrics.queued(items.len());
            return Pushed::Queued;
        }
        let mut headers = [[0u8; MAX_HEADER]; N];
        let (slices, n) = self.gather(items.iter(), &mut headers);
        let wrote = match write(socket, slices[..n].as_flattened()) {
            Ok(wrote) => wrote,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                state.sealed = true;
                return Pushed::Failed;
            }
        };
        metrics.sent(wrote);
        let (whole, into_next) = self.completed(items.iter(), wrote);
        delivered(&items[..whole], metrics);
        if whole == items.len() {
            return Pushed::Written;
        }
        state.written = into_next;
        state.queue.extend(items[whole..].iter().cloned());
        metrics.queued(items.len() - whole);
        queued.raise();
        Pushed::Queued
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
            let mut headers = [[0u8; MAX_HEADER]; MAX_BATCH];
            let (mut slices, n) = self.gather(state.queue.iter(), &mut headers);
            let mut pending = slices[..n].as_flattened_mut();
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
            let (whole, into_next) = self.completed(state.queue.iter(), state.written + wrote);
            delivered(state.queue.range(..whole), metrics);
            state.queue.drain(..whole);
            state.written = into_next;
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

    /// How many frames wait for the socket.
    pub(crate) fn queued(&self) -> usize {
        crate::lock(&self.state).queue.len()
    }

    /// The most frames that may wait.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether frames are waiting for the socket.
    #[cfg(test)]
    fn is_queued(&self) -> bool {
        !crate::lock(&self.state).queue.is_empty()
    }

    /// Seals the outbox without a close frame (the connection is being dropped).
    pub(crate) fn seal(&self) {
        crate::lock(&self.state).sealed = true;
    }

    /// Lays out up to `N` items as header and payload slices (headers built
    /// into `headers`); returns them and how many items they hold.
    fn gather<'a, const N: usize>(
        &self,
        items: impl Iterator<Item = &'a Outbound>,
        headers: &'a mut [[u8; MAX_HEADER]; N],
    ) -> ([[IoSlice<'a>; 2]; N], usize) {
        let mut slices = [[IoSlice::new(&[]); 2]; N];
        let mut n = 0;
        for ((item, header), slot) in items.zip(headers.iter_mut()).zip(slices.iter_mut()) {
            *slot = match item {
                Outbound::Message { frame, .. } | Outbound::Reply(frame) => {
                    let len = frames::header(self.data, frame.len(), header);
                    [IoSlice::new(&header[..len]), IoSlice::new(frame)]
                }
                Outbound::Control(frame) => [IoSlice::new(&[]), IoSlice::new(frame)],
            };
            n += 1;
        }
        (slices, n)
    }

    /// How many of `items` the first `bytes` bytes on the wire complete, and
    /// how far into the next one they reach.
    fn completed<'a>(
        &self,
        items: impl Iterator<Item = &'a Outbound>,
        mut bytes: usize,
    ) -> (usize, usize) {
        let mut whole = 0;
        for item in items {
            let size = match item {
                Outbound::Message { frame, .. } | Outbound::Reply(frame) => {
                    frames::header_len(frame.len()) + frame.len()
                }
                Outbound::Control(frame) => frame.len(),
            };
            if bytes < size {
                break;
            }
            bytes -= size;
            whole += 1;
        }
        (whole, bytes)
    }
}

/// Accounts the messages among frames written whole: deliveries and latency.
fn delivered<'a>(items: impl IntoIterator<Item = &'a Outbound>, metrics: &HotMetrics) {
    for item in items {
        if let Outbound::Message { published_us, .. } = item {
            metrics.delivered(*published_us);
        }
    }
}

/// One non-blocking vectored write. Empty leading slices are skipped by the
/// caller's `advance_slices`, so `Ok(0)` means the peer is gone.
fn write(socket: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    socket.try_write_vectored(slices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, (server, _)) =
            tokio::join!(client, async { listener.accept().await.unwrap() });
        (server, client.unwrap())
    }

    fn message(body: Vec<u8>) -> Outbound {
        Outbound::Message {
            frame: Bytes::from(body),
            published_us: 0,
            offset: 0,
        }
    }

    /// Reads `n` unmasked server frames; returns their payloads.
    async fn read_frames(client: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        for _ in 0..n {
            let mut head = [0u8; 2];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], 0x80 | OpCode::Binary as u8);
            let len = match head[1] {
                126 => {
                    let mut b = [0u8; 2];
                    client.read_exact(&mut b).await.unwrap();
                    usize::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    client.read_exact(&mut b).await.unwrap();
                    u64::from_be_bytes(b) as usize
                }
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            client.read_exact(&mut payload).await.unwrap();
            frames.push(payload);
        }
        frames
    }

    #[tokio::test]
    async fn runs_and_single_frames_keep_their_order_through_a_full_socket() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::new(100_000, OpCode::Binary);
        let metrics = HotMetrics::new();
        let signal = Signal::default();
        // Fill the socket (the client reads nothing yet) until frames queue.
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let mut n = 0u32;
        while !outbox.is_queued() {
            let body = [n.to_be_bytes().to_vec(), vec![7u8; 60_000]].concat();
            sent.push(body.clone());
            outbox.push(&server, &message(body), &metrics, &signal);
            n += 1;
        }
        // A run behind the queue is queued whole, after it.
        let run: Vec<Outbound> = (0..3).map(|i| message(vec![i; 10])).collect();
        assert_eq!(
            outbox.push_run(&server, &run, &metrics, &signal),
            Pushed::Queued
        );
        sent.extend((0..3).map(|i| vec![i; 10]));

        let reader = tokio::spawn(async move {
            let frames = read_frames(&mut client, sent.len()).await;
            assert_eq!(frames, sent, "frames lost, cut or reordered");
            client
        });
        loop {
            match outbox.flush(&server, &metrics).unwrap() {
                Flushed::Drained => break,
                Flushed::Blocked { .. } => server.writable().await.unwrap(),
            }
        }
        let mut client = reader.await.unwrap();

        // With nothing queued, a run goes out in one write, whole.
        assert_eq!(
            outbox.push_run(&server, &run, &metrics, &signal),
            Pushed::Written
        );
        assert_eq!(
            read_frames(&mut client, 3).await,
            vec![vec![0u8; 10], vec![1u8; 10], vec![2u8; 10]]
        );
    }

    #[tokio::test]
    async fn a_run_the_socket_takes_in_part_is_finished_from_the_queue() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::new(100, OpCode::Binary);
        let metrics = HotMetrics::new();
        let signal = Signal::default();
        // Fill the socket with raw bytes, then make a little room.
        let junk = vec![0xEEu8; 64 * 1024];
        let mut filled = 0;
        while let Ok(n) = server.try_write(&junk) {
            filled += n;
        }
        let mut drained = vec![0u8; 100_000.min(filled)];
        client.read_exact(&mut drained).await.unwrap();
        filled -= drained.len();
        // A run larger than the room: part of it goes out, the rest is queued.
        let run: Vec<Outbound> = (0..MAX_RUN as u8)
            .map(|i| message(vec![i; 50_000]))
            .collect();
        assert_eq!(
            outbox.push_run(&server, &run, &metrics, &signal),
            Pushed::Queued
        );
        let reader = tokio::spawn(async move {
            let mut rest = vec![0u8; filled];
            client.read_exact(&mut rest).await.unwrap();
            read_frames(&mut client, MAX_RUN).await
        });
        loop {
            match outbox.flush(&server, &metrics).unwrap() {
                Flushed::Drained => break,
                Flushed::Blocked { .. } => server.writable().await.unwrap(),
            }
        }
        let frames = reader.await.unwrap();
        let want: Vec<Vec<u8>> = (0..MAX_RUN as u8).map(|i| vec![i; 50_000]).collect();
        assert_eq!(
            frames, want,
            "a run cut by the socket was not finished in order"
        );
    }

    #[tokio::test]
    async fn a_run_that_does_not_fit_the_queue_is_refused_whole() {
        let (server, _client) = pair().await;
        let outbox = Outbox::new(2, OpCode::Binary);
        let metrics = HotMetrics::new();
        let signal = Signal::default();
        while !outbox.is_queued() {
            outbox.push(&server, &message(vec![1u8; 60_000]), &metrics, &signal);
        }
        let run: Vec<Outbound> = (0..3).map(|i| message(vec![i; 10])).collect();
        assert_eq!(
            outbox.push_run(&server, &run, &metrics, &signal),
            Pushed::Full
        );
        // Sealed: nothing more is taken.
        outbox.close(None, frames::control(OpCode::Close, &[]), true);
        assert_eq!(
            outbox.push_run(&server, &run, &metrics, &signal),
            Pushed::Sealed
        );
    }
}
