//! One subscriber connection: connect, subscribe, then count, time and check every message.
//!
//! Each subscriber is a task that owns its socket, its per-publisher `last seen` sequence and
//! its counters; the only thing it shares on the hot path is one latency histogram shard
//! (see [`crate::stats`]). The coordinator talks to it through a small control channel
//! (drain, then stop) rather than a shared `watch`, because polling a per-task channel takes
//! no shared lock per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::offsets::OffsetCheck;
use crate::payload::{self, Stamp};
use crate::setup::Start;
use crate::stats::ShardedLatency;

/// The JSON subprotocol of PROTOCOL.md §2.
pub const JSON_SUBPROTOCOL: &str = "switchboard.v1.json";

/// What every subscriber task shares with the coordinator.
pub struct Shared {
    /// The channels; each subscriber subscribes to one of them.
    pub channels: Vec<String>,
    /// Number of publisher tasks (publisher ids are `0..publishers`).
    pub publishers: usize,
    /// Messages sent at or after this time (µs since the epoch) are measured; `u64::MAX`
    /// until publishing starts.
    pub warmup_end_us: AtomicU64,
    /// Subscribers that have, since the drain began, seen every publisher's last message,
    /// or that have ended. The drain is over when it reaches the subscriber count.
    pub finished: AtomicUsize,
    /// Limit on connect + handshake + subscribe of one subscriber.
    pub setup_timeout: Duration,
    /// Socket settings (a small read buffer: tungstenite's default is 128 KiB per socket).
    pub ws_config: WebSocketConfig,
    /// Latency of measured messages, all subscribers together.
    pub latency: ShardedLatency,
}

/// Orders from the coordinator.
#[derive(Debug, Clone)]
pub enum Control {
    /// Publishing is over: these are the last accepted seqs, by publisher id.
    Drain(Arc<Vec<u64>>),
    /// Stop reading, close the socket and report.
    Stop,
}

/// What one subscriber saw.
pub struct Outcome {
    /// Index of this subscriber, `0..subscribers`.
    pub index: usize,
    /// Index of its `--ws` node.
    pub node: usize,
    /// Index of its channel in [`Shared::channels`].
    pub channel: usize,
    /// Whether it connected and subscribed.
    pub ready: bool,
    /// How long connect, upgrade, welcome, subscribe and `subscribed` took.
    pub setup: Duration,
    /// Measured messages received (duplicates excluded).
    pub received: u64,
    /// Messages whose seq equalled the last one seen from the same publisher.
    pub duplicated: u64,
    /// Messages whose seq was below the last one seen from the same publisher.
    pub out_of_order: u64,
    /// `error` replies, binary frames, stamps from unknown publishers.
    pub unexpected: u64,
    /// Why the connection ended before `Stop`, if it did.
    pub ended: Option<String>,
    /// The offset check, on a channel with history (its `subscribed` reply had an offset).
    pub offsets: Option<OffsetCheck>,
}

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Runs one subscriber, of channel `channel` on node `node`, until `Stop` (or until its
/// connection ends).
///
/// Sends one item on `ready` once subscribed (or failed to), while holding a `setup` permit,
/// which bounds how many connections are being set up at once.
pub async fn run(
    (index, setup, ready, mut control): Start<Control>,
    node: usize,
    channel: usize,
    url: Arc<str>,
    shared: Arc<Shared>,
) -> Outcome {
    let mut out = Outcome {
        index,
        node,
        channel,
        ready: false,
        setup: Duration::ZERO,
        received: 0,
        duplicated: 0,
        out_of_order: 0,
        unexpected: 0,
        ended: None,
        offsets: None,
    };
    let ws = {
        let _permit = setup.acquire().await;
        let started = std::time::Instant::now();
        let connected = tokio::time::timeout(
            shared.setup_timeout,
            connect(&url, &shared.channels[channel], shared.ws_config),
        )
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "setup timed out after {:?}",
                shared.setup_timeout
            ))
        });
        match connected {
            Ok((ws, offset)) => {
                out.setup = started.elapsed();
                out.ready = true;
                out.offsets = offset.map(OffsetCheck::after);
                ws
            }
            Err(e) => {
                let msg = format!("{url}: {e:#}");
                let _ = ready.send(Err(msg.clone())).await;
                out.ended = Some(msg);
                return out;
            }
        }
    };
    let _ = ready.send(Ok(())).await;
    read_loop(ws, &shared, &mut control, &mut out).await;
    out
}

/// Reads messages until told to stop, recording each one.
async fn read_loop(
    mut ws: Ws,
    shared: &Shared,
    control: &mut mpsc::Receiver<Control>,
    out: &mut Outcome,
) {
    let mut last_seen = vec![0u64; shared.publishers];
    let mut target: Option<Arc<Vec<u64>>> = None;
    let mut finished = false;
    let finish = |finished: &mut bool| {
        if !*finished {
            *finished = true;
            shared.finished.fetch_add(1, Ordering::AcqRel);
        }
    };
    loop {
        tokio::select! {
            biased;
            cmd = control.recv() => match cmd {
                Some(Control::Drain(t)) => {
                    if caught_up(&last_seen, &t) {
                        finish(&mut finished);
                    }
                    target = Some(t);
                }
                Some(Control::Stop) | None => {
                    // Close politely so the node counts a client close, but do not wait long.
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return;
                }
            },
            item = ws.next() => {
                let text = match item {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        out.unexpected += 1;
                        continue;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        // A `disconnect` notice, if one came first, says more: keep it.
                        out.ended.get_or_insert(match frame {
                            Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                            None => "closed by server".to_owned(),
                        });
                        break;
                    }
                    // Pings are answered by tungstenite itself, on the next read.
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        out.ended.get_or_insert(format!("read error: {e}"));
                        break;
                    }
                    None => {
                        out.ended.get_or_insert("connection ended".to_owned());
                        break;
                    }
                };
                match payload::parse_stamp(text.as_bytes()) {
                    Some(stamp) => {
                        check_offset(text.as_bytes(), out);
                        record(stamp, shared, &mut last_seen, out);
                        if !finished && target.as_ref().is_some_and(|t| caught_up(&last_seen, t)) {
                            finish(&mut finished);
                        }
                    }
                    None => control_frame(text.as_bytes(), out),
                }
            }
        }
    }
    // The connection ended on its own: nothing more will arrive, so do not hold up the drain.
    finish(&mut finished);
    // Wait for Stop so that every subscriber reports at the same point.
    while let Some(cmd) = control.recv().await {
        if matches!(cmd, Control::Stop) {
            break;
        }
    }
}

/// Checks order and counts one stamped message.
fn record(stamp: Stamp, shared: &Shared, last_seen: &mut [u64], out: &mut Outcome) {
    let Some(last) = last_seen.get_mut(stamp.publisher as usize) else {
        out.unexpected += 1;
        return;
    };
    if stamp.seq == *last {
        out.duplicated += 1;
        return;
    }
    if stamp.seq < *last {
        // Late rather than repeated, most likely: it still counts as received.
        out.out_of_order += 1;
    } else {
        *last = stamp.seq;
    }
    if stamp.sent_us >= shared.warmup_end_us.load(Ordering::Relaxed) {
        out.received += 1;
        let latency = payload::now_us().saturating_sub(stamp.sent_us);
        shared.latency.record(out.index, latency);
    }
}

/// On a channel with history, checks that this message's offset is the next one.
fn check_offset(frame: &[u8], out: &mut Outcome) {
    if let Some(check) = out.offsets.as_mut() {
        match payload::parse_offset(frame) {
            Some(offset) => {
                check.see(offset);
            }
            None => check.missing += 1,
        }
    }
}

/// Handles a frame without a stamp: a `disconnect` notice is remembered, an `error` counted.
fn control_frame(frame: &[u8], out: &mut Outcome) {
    let Ok(v) = serde_json::from_slice::<Value>(frame) else {
        out.unexpected += 1;
        return;
    };
    match v["type"].as_str() {
        Some("disconnect") => {
            out.ended = Some(format!("disconnect {} {}", v["code"], v["reason"]));
        }
        // Presence on a namespace could add these; they are not errors.
        Some("join" | "leave") => {}
        _ => out.unexpected += 1,
    }
}

fn caught_up(last_seen: &[u64], target: &[u64]) -> bool {
    last_seen
        .iter()
        .zip(target)
        .all(|(seen, last)| seen >= last)
}

/// Connects, reads the welcome, subscribes and waits for `subscribed`; returns the socket
/// and, on a channel with history, the newest offset the reply named.
async fn connect(
    url: &str,
    channel: &str,
    ws_config: WebSocketConfig,
) -> anyhow::Result<(Ws, Option<u64>)> {
    let ws = open(url, ws_config).await?;
    let cmd = serde_json::json!({"type": "subscribe", "id": 1, "channel": channel});
    let (ws, reply) = subscribe(ws, cmd).await?;
    Ok((ws, reply["offset"].as_u64()))
}

/// Opens a WebSocket with the JSON subprotocol and reads the welcome.
pub async fn open(url: &str, ws_config: WebSocketConfig) -> anyhow::Result<Ws> {
    Ok(open_timed(url, ws_config).await?.0)
}

/// As [`open`], with the time the TCP connect took.
pub async fn open_timed(url: &str, ws_config: WebSocketConfig) -> anyhow::Result<(Ws, Duration)> {
    let mut req = url.into_client_request().context("bad --ws URL")?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(JSON_SUBPROTOCOL),
    );
    let uri = req.uri();
    if uri.scheme_str() != Some("ws") {
        bail!("only ws:// URLs are supported");
    }
    let host = uri.host().context("no host in --ws URL")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let started = std::time::Instant::now();
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .context("connect")?;
    let connect_time = started.elapsed();
    tcp.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config))
        .await
        .context("websocket handshake")?;

    let welcome = next_json(&mut ws).await.context("waiting for welcome")?;
    if welcome["type"] != "welcome" {
        bail!("first frame is not a welcome: {welcome}");
    }
    Ok((ws, connect_time))
}

/// Sends the `subscribe` command `cmd` (whose `id` is 1) and waits for its `subscribed`
/// reply, which it returns with the socket. Nothing of the channel arrives before the reply.
pub async fn subscribe(mut ws: Ws, cmd: Value) -> anyhow::Result<(Ws, Value)> {
    ws.send(Message::text(cmd.to_string()))
        .await
        .context("sending subscribe")?;
    loop {
        let v = next_json(&mut ws).await.context("waiting for subscribed")?;
        match v["type"].as_str() {
            Some("subscribed") if v["id"] == 1 => return Ok((ws, v)),
            Some("error") => bail!("subscribe refused: {v}"),
            Some("disconnect") => bail!("disconnected while subscribing: {v}"),
            _ => {}
        }
    }
}

/// The next text frame, parsed; pings and pongs are skipped.
async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await.context("connection ended")?? {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Binary(_) => bail!("binary frame on the JSON subprotocol"),
            Message::Close(f) => bail!("closed: {f:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(warmup_end_us: u64) -> Shared {
        Shared {
            channels: vec!["c".into()],
            publishers: 2,
            warmup_end_us: AtomicU64::new(warmup_end_us),
            finished: AtomicUsize::new(0),
            setup_timeout: Duration::from_secs(1),
            ws_config: WebSocketConfig::default(),
            latency: ShardedLatency::new(1),
        }
    }

    fn outcome() -> Outcome {
        Outcome {
            index: 0,
            node: 0,
            channel: 0,
            ready: true,
            setup: Duration::ZERO,
            received: 0,
            duplicated: 0,
            out_of_order: 0,
            unexpected: 0,
            ended: None,
            offsets: None,
        }
    }

    #[test]
    fn order_checks_are_per_publisher() {
        let s = shared(100);
        let mut last = vec![0; 2];
        let mut out = outcome();
        let now = payload::now_us();
        for (publisher, seq, sent_us) in [
            (0, 1, 50), // warm-up: checked, not counted
            (0, 2, now),
            (1, 1, now), // another publisher's sequence is independent
            (0, 2, now), // duplicate
            (0, 5, now), // a gap is not an order error (loss is counted at the end)
            (0, 4, now), // late
            (7, 1, now), // unknown publisher
        ] {
            record(
                Stamp {
                    publisher,
                    seq,
                    sent_us,
                },
                &s,
                &mut last,
                &mut out,
            );
        }
        assert_eq!(
            (
                out.received,
                out.duplicated,
                out.out_of_order,
                out.unexpected
            ),
            (4, 1, 1, 1)
        );
        assert_eq!(last, vec![5, 1]);
        assert_eq!(s.latency.merged().summary().count, 4);
        assert!(caught_up(&last, &[5, 1]) && !caught_up(&last, &[5, 2]));
    }

    #[test]
    fn offsets_are_checked_only_with_history() {
        let frame = |offset: u64| {
            format!(
                r#"{{"type":"message","channel":"h:a","data":{{"seq":{offset},"p":0,"t":1}},"offset":{offset},"epoch":"e"}}"#
            )
        };
        let mut plain = outcome();
        check_offset(frame(9).as_bytes(), &mut plain);
        assert_eq!(plain.offsets, None);

        let mut hist = outcome();
        hist.offsets = Some(OffsetCheck::after(3));
        for offset in [4, 5, 5, 7] {
            check_offset(frame(offset).as_bytes(), &mut hist);
        }
        check_offset(
            br#"{"type":"message","channel":"h:a","data":{"seq":1,"p":0,"t":1}}"#,
            &mut hist,
        );
        let c = hist.offsets.unwrap();
        assert_eq!(
            (c.last, c.checked, c.gaps, c.skipped, c.repeats, c.missing),
            (7, 4, 1, 1, 1, 1)
        );
    }

    #[test]
    fn disconnect_notices_are_kept() {
        let mut out = outcome();
        control_frame(
            br#"{"type":"disconnect","code":4008,"reason":"slow consumer","reconnect":true}"#,
            &mut out,
        );
        assert_eq!(
            out.ended.as_deref(),
            Some(r#"disconnect 4008 "slow consumer""#)
        );
        control_frame(br#"{"type":"error","code":"internal"}"#, &mut out);
        control_frame(b"not json", &mut out);
        assert_eq!(out.unexpected, 2);
    }
}
