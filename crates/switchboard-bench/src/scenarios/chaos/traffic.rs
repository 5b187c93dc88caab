//! The traffic of a chaos run: what each publish was and how it went, the server-API
//! publishers (the shared [`Publisher`] with a ledger of every attempt) and the client
//! publishers (WebSocket `publish` commands), and the names of messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Clock;
use crate::clients::backoff::Rng;
use crate::clients::http::{ApiClient, ApiEndpoint};
use crate::clients::payload::{self, BodyBuilder};
use crate::clients::publisher::{Answer, Attempt, Ledger, Pace, Publisher, Until};
use crate::clients::ws::{self, Ws};

/// One publish attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Channel index.
    pub channel: u16,
    /// Node the publish went to.
    pub node: u8,
    /// Through a WebSocket `publish` command (else the server API).
    pub client: bool,
    /// When the publish was sent, µs since the start of the run.
    pub start_us: u64,
    /// When it was acknowledged; `None` if it was not (error, refusal, no answer).
    pub ack_us: Option<u64>,
    /// The offset the acknowledgement named, on a channel with history.
    pub offset: Option<u64>,
}

/// Everything one publisher sent: `sent[k]` is seq `k + 1`.
#[derive(Debug, Clone, Default)]
pub struct PubLog {
    /// Publisher id (`"p"` in the payload).
    pub id: u32,
    /// Every attempt, by seq.
    pub sent: Vec<Sent>,
    /// Refusals and failures by kind (`HTTP 503`, `transport`, `error unavailable`...).
    pub errors: BTreeMap<String, u64>,
}

/// A message's name: publisher id and seq in one number.
pub fn key(publisher: u32, seq: u64) -> u64 {
    (u64::from(publisher) << 40) | (seq & ((1 << 40) - 1))
}

/// The publisher and seq of a [`key`].
pub fn unkey(k: u64) -> (u32, u64) {
    ((k >> 40) as u32, k & ((1 << 40) - 1))
}

/// The publisher id of the final markers.
pub const MARKER_PUBLISHER: u32 = 9_999;
/// Burst publishers get ids from here on.
pub const BURST_PUBLISHERS: u32 = 1_000;
/// Client (WebSocket) publishers get ids from here on.
pub const WS_PUBLISHERS: u32 = 500;

/// What every publisher shares.
pub struct PubShared {
    /// The run's clock.
    pub clock: Clock,
    /// The channels.
    pub channels: Arc<Vec<Chan>>,
    /// A body builder per channel.
    pub bodies: Arc<Vec<BodyBuilder>>,
    /// Every node's server API.
    pub endpoints: Vec<ApiEndpoint>,
    /// Time allowed for one publish to be answered.
    pub timeout: Duration,
}

impl PubShared {
    /// One (not yet connected) client per node.
    pub fn clients(&self) -> Vec<ApiClient> {
        self.endpoints
            .iter()
            .map(|e| ApiClient::new(e.clone(), self.timeout))
            .collect()
    }
}

/// A channel of the run.
#[derive(Debug, Clone)]
pub struct Chan {
    /// Its name.
    pub name: String,
    /// Whether its namespace keeps history.
    pub history: bool,
}

/// The bookkeeping of a server-API publisher: channels in turn, each publish to a random
/// node, every attempt logged.
struct ApiLedger {
    log: PubLog,
    clock: Clock,
    channels: usize,
    rng: Rng,
}

impl Ledger for ApiLedger {
    fn route(&mut self, seq: u64, _slot: u64, nodes: usize) -> (usize, usize) {
        let channel = ((seq + u64::from(self.log.id)) % self.channels as u64) as usize;
        let node = ((self.rng.unit() * nodes as f64) as usize).min(nodes - 1);
        (channel, node)
    }

    fn answered(&mut self, p: &Attempt, answer: Answer) {
        let (sent, error) = record(self.clock, p, answer);
        self.log.sent.push(sent);
        if let Some(e) = error {
            *self.log.errors.entry(e).or_default() += 1;
        }
    }
}

/// A server-API publish as logged and, if not acknowledged, why.
pub fn record(clock: Clock, p: &Attempt, answer: Answer) -> (Sent, Option<String>) {
    let mut sent = Sent {
        channel: p.channel as u16,
        node: p.node as u8,
        client: false,
        start_us: clock.at(p.at),
        ack_us: None,
        offset: None,
    };
    let error = match answer {
        Ok((status, reply)) if status.is_success() => {
            sent.ack_us = Some(clock.us());
            let v: Value = serde_json::from_slice(&reply).unwrap_or_default();
            sent.offset = v["offset"].as_u64();
            None
        }
        Ok((status, _)) => Some(format!("HTTP {}", status.as_u16())),
        Err(_) => Some("no answer".to_owned()),
    };
    (sent, error)
}

/// Publishes through the server API: at `rate` per second (or back to back when `None`)
/// until `end` or `count` publishes, each to a random node, channels in turn.
pub async fn api_publisher(
    id: u32,
    rate: Option<f64>,
    count: Option<u64>,
    end: Instant,
    shared: Arc<PubShared>,
    seed: u64,
) -> PubLog {
    let clients = shared.clients();
    let ledger = ApiLedger {
        log: PubLog {
            id,
            ..PubLog::default()
        },
        clock: shared.clock,
        channels: shared.channels.len(),
        rng: Rng::new(seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    };
    let pace = rate.map_or(Pace::BackToBack, Pace::Every);
    let until = Until {
        end: Some(end),
        count,
        ..Until::default()
    };
    Publisher::new(id, clients, shared.bodies.clone())
        .run(pace, until, ledger)
        .await
        .log
}

/// Publishes with client `publish` commands over a WebSocket at `rate` until `end`,
/// reconnecting to the next node when the connection fails or a reply does not come.
pub async fn ws_publisher(
    id: u32,
    rate: f64,
    end: Instant,
    shared: Arc<PubShared>,
    urls: Vec<Arc<str>>,
) -> PubLog {
    let mut log = PubLog {
        id,
        ..PubLog::default()
    };
    let mut node = id as usize % urls.len();
    let mut ws: Option<Ws> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let n = shared.channels.len();
    let config = ws::small_config();
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {},
            _ = tokio::time::sleep_until(end) => break,
        }
        let Some(conn) = ws.as_mut() else {
            match tokio::time::timeout(shared.timeout, ws::open(&urls[node], config)).await {
                Ok(Ok(c)) => ws = Some(c),
                _ => {
                    *log.errors.entry("connect failed".to_owned()).or_default() += 1;
                    node = (node + 1) % urls.len();
                }
            }
            continue;
        };
        let seq = log.sent.len() as u64 + 1;
        let channel = ((seq + u64::from(id)) % n as u64) as usize;
        let mut sent = Sent {
            channel: channel as u16,
            node: node as u8,
            client: true,
            start_us: shared.clock.us(),
            ack_us: None,
            offset: None,
        };
        let cmd = json!({
            "type": "publish", "id": seq, "channel": shared.channels[channel].name,
            "data": {"seq": seq, "p": id, "t": payload::now_us(), "pad": "x"},
        });
        let outcome = tokio::time::timeout(shared.timeout, async {
            conn.send(Message::text(cmd.to_string())).await?;
            loop {
                match conn.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or_default();
                        if v["id"].as_u64() != Some(seq) {
                            continue;
                        }
                        return anyhow::Ok(v);
                    }
                    Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                }
            }
        })
        .await;
        let error = match outcome {
            Ok(Ok(v)) if v["type"] == "published" => {
                sent.ack_us = Some(shared.clock.us());
                sent.offset = v["offset"].as_u64();
                None
            }
            Ok(Ok(v)) => Some(format!("error {}", v["code"].as_str().unwrap_or("?"))),
            Ok(Err(_)) | Err(_) => {
                ws = None;
                node = (node + 1) % urls.len();
                Some("no reply".to_owned())
            }
        };
        log.sent.push(sent);
        if let Some(e) = error {
            *log.errors.entry(e).or_default() += 1;
        }
    }
    if let Some(mut c) = ws {
        ws::close(&mut c).await;
    }
    log
}

/// Publishes the final markers, one acknowledged publish per channel, each retried (through
/// the next node) every 100 ms until `deadline`; returns their log and their keys by channel.
pub async fn publish_markers(
    shared: &PubShared,
    deadline: Instant,
) -> anyhow::Result<(PubLog, Vec<u64>)> {
    let mut log = PubLog {
        id: MARKER_PUBLISHER,
        ..PubLog::default()
    };
    let mut markers = Vec::with_capacity(shared.channels.len());
    let nodes = shared.endpoints.len();
    let mut publisher = Publisher::new(MARKER_PUBLISHER, shared.clients(), shared.bodies.clone());
    for c in 0..shared.channels.len() {
        let mut attempt = 0usize;
        loop {
            let (p, answer) = publisher.send(c, attempt % nodes).await;
            let (sent, error) = record(shared.clock, &p, answer);
            log.sent.push(sent);
            if sent.ack_us.is_some() {
                markers.push(key(MARKER_PUBLISHER, p.stamp.seq));
                break;
            }
            *log.errors.entry(error.unwrap_or_default()).or_default() += 1;
            attempt += 1;
            anyhow::ensure!(
                Instant::now() < deadline,
                "the final marker on {} was not acknowledged in time",
                shared.channels[c].name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((log, markers))
}
