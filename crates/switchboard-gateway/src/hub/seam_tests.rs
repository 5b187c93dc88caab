//! The recovery seam, in process: a real hub on the in-process backplane, a
//! session on a real loopback socket, and the frames the client end reads.
//! Whatever the order of history reads and live deliveries, the client sees
//! every message once, in offset order.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use switchboard_backplane::envelope::{PayloadEncoding, for_channel};
use switchboard_backplane::memory::MemoryBackplane;
use switchboard_backplane::{Backplane, Envelope, Inbox, NodeStats};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::{Hub, Subscription};
use crate::protocol::{Protocol, encode_push};
use crate::session::{Outbound, SessionHandle};

const CHANNEL: &str = "room";

/// A hub, a session on it with an outbound queue of `queue` frames, and the
/// client's end of the session's socket.
async fn setup(queue: usize) -> (Hub, Arc<SessionHandle>, TcpStream) {
    let (inbox, _lanes) = Inbox::new(1, 16);
    let backplane = Backplane::Memory(Arc::new(MemoryBackplane::new(
        "n1".into(),
        inbox,
        Arc::new(NodeStats::default),
    )));
    let hub = Hub::new(backplane, Arc::new(AtomicU64::new(0)), queue);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    (hub, SessionHandle::for_test(1, server, queue), client)
}

/// Subscribes the session to the test channel as a recovering subscription
/// does: buffering live messages until it goes live.
async fn recovering(hub: &Hub, session: &Arc<SessionHandle>) -> Arc<Subscription> {
    let key: Arc<str> = CHANNEL.into();
    hub.subscribe(&key, session, true, || {})
        .await
        .expect("subscribe")
}

fn message(epoch: &str, offset: u64) -> Envelope {
    let mut e = for_channel(
        "n1",
        CHANNEL,
        Bytes::from(offset.to_string()),
        PayloadEncoding::Json,
    );
    (e.epoch, e.offset) = (epoch.to_owned(), offset);
    e
}

fn messages(epoch: &str, offsets: std::ops::RangeInclusive<u64>) -> Vec<Envelope> {
    offsets.map(|o| message(epoch, o)).collect()
}

/// What a recovering session's history read pushes for `envelope`.
fn from_history(session: &SessionHandle, envelope: &Envelope) {
    session.push(Outbound::Message {
        frame: encode_push(Protocol::Json, envelope).expect("a message push"),
        published_us: envelope.published_us,
        offset: envelope.offset,
    });
}

/// Reads `n` text frames from the client end and returns each message's
/// (epoch, offset).
async fn received(client: &mut TcpStream, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.expect("frame header");
        assert_eq!(head[0], 0x81, "a final text frame");
        let len = usize::from(head[1]);
        assert!(len < 126, "test frames are short");
        let mut body = vec![0; len];
        client.read_exact(&mut body).await.expect("frame body");
        let push: serde_json::Value = serde_json::from_slice(&body).expect("JSON push");
        assert_eq!(push["type"], "message", "{push}");
        out.push((
            push["epoch"].as_str().expect("epoch").to_owned(),
            push["offset"].as_u64().expect("offset"),
        ));
    }
    out
}

fn positions(epoch: &str, offsets: std::ops::RangeInclusive<u64>) -> Vec<(String, u64)> {
    offsets.map(|o| (epoch.to_owned(), o)).collect()
}

#[tokio::test]
async fn live_messages_overlapping_the_history_read_are_given_once_in_order() {
    let (hub, session, mut client) = setup(64).await;
    let subscription = recovering(&hub, &session).await;
    // While the session reads history up to 3, messages 2..=5 arrive live.
    hub.fanout_run(&messages("e", 2..=5));
    for m in messages("e", 1..=3) {
        from_history(&session, &m);
    }
    assert!(subscription.go_live("e", 3), "nothing was let go");
    // The live stream goes on; 5 arrives again (a repair overlapping it).
    hub.fanout_run(&messages("e", 5..=7));
    assert_eq!(received(&mut client, 7).await, positions("e", 1..=7));
    assert_eq!(session.ended(), None);
}

#[tokio::test]
async fn a_new_epoch_is_not_held_back_by_the_old_floor() {
    let (hub, session, mut client) = setup(64).await;
    let subscription = recovering(&hub, &session).await;
    for m in messages("e", 1..=9) {
        from_history(&session, &m);
    }
    assert!(subscription.go_live("e", 9));
    // History was lost: a new epoch starts again at 1, below the old floor.
    hub.fanout_run(&messages("f", 1..=2));
    let mut expected = positions("e", 1..=9);
    expected.extend(positions("f", 1..=2));
    assert_eq!(received(&mut client, 11).await, expected);
}

#[tokio::test]
async fn an_overflowing_buffer_lets_channel_messages_go_and_asks_for_more_history() {
    let (hub, session, mut client) = setup(4).await;
    let subscription = recovering(&hub, &session).await;
    // More live messages than the buffer holds arrive during the recovery.
    for m in messages("e", 1..=6) {
        hub.fanout_run(std::slice::from_ref(&m));
    }
    assert!(
        !subscription.go_live("e", 0),
        "the spilled messages must be read from history first"
    );
    for m in messages("e", 1..=4) {
        from_history(&session, &m);
    }
    assert!(subscription.go_live("e", 4), "no spill since the last try");
    // What the buffer kept above the floor follows, then the live stream.
    hub.fanout_run(&messages("e", 7..=7));
    assert_eq!(received(&mut client, 7).await, positions("e", 1..=7));
    assert_eq!(session.ended(), None, "the session was not dropped");
}
