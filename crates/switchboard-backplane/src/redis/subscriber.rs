//! The receiving side of the Redis backplane: one pub/sub connection,
//! subscribed by interest, that comes back by itself after Redis goes away.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message;
use rand::Rng;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::Mutex;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::{COMMAND_TIMEOUT, Keys};
use crate::envelope::now_us;
use crate::{BackplaneError, Envelope, Inbox};

/// Channels per SUBSCRIBE when resubscribing after a reconnect.
const RESUBSCRIBE_BATCH: usize = 500;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) struct Subscriber {
    client: redis::Client,
    keys: Keys,
    node_id: String,
    inbox: Inbox,
    up: AtomicBool,
    generation: AtomicU64,
    /// How often the connection is checked with a PING.
    ping_interval: Duration,
    /// PINGs answered, over all connections.
    pings: AtomicU64,
    /// The live sink (None while disconnected) and every client channel this
    /// node wants, as Redis names. One lock orders subscribes, unsubscribes and
    /// resubscription, so no interest is lost to a race with a reconnect.
    state: Mutex<State>,
}

struct State {
    sink: Option<PubSubSink>,
    channels: HashSet<String>,
}

impl Subscriber {
    pub(super) fn new(
        client: redis::Client,
        keys: Keys,
        node_id: String,
        inbox: Inbox,
        ping_interval: Duration,
    ) -> Self {
        metrics::gauge!("switchboard_backplane_up").set(0.0);
        Subscriber {
            client,
            keys,
            node_id,
            inbox,
            up: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            ping_interval,
            pings: AtomicU64::new(0),
            state: Mutex::new(State {
                sink: None,
                channels: HashSet::new(),
            }),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn pings(&self) -> u64 {
        self.pings.load(Ordering::Relaxed)
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// SUBSCRIBEs to a Redis channel and records the interest; returns once
    /// Redis confirmed. Fails as unavailable (recording nothing) while disconnected.
    pub(super) async fn subscribe(&self, name: String) -> Result<(), BackplaneError> {
        let mut state = self.state.lock().await;
        let Some(sink) = state.sink.as_mut() else {
            return Err(BackplaneError::Unavailable(
                "redis pub/sub connection is down".into(),
            ));
        };
        match timeout(COMMAND_TIMEOUT, sink.subscribe(&name)).await {
            Ok(Ok(())) => {
                state.channels.insert(name);
                Ok(())
            }
            Ok(Err(e)) => {
                metrics::counter!("switchboard_backplane_errors_total", "op" => "subscribe")
                    .increment(1);
                Err(e.into())
            }
            Err(_) => {
                metrics::counter!("switchboard_backplane_errors_total", "op" => "subscribe")
                    .increment(1);
                Err(BackplaneError::Unavailable(
                    "redis subscribe timed out".into(),
                ))
            }
        }
    }

    /// Forgets the interest and UNSUBSCRIBEs. The interest is gone even if the
    /// command fails: the channel is then not resubscribed after a reconnect.
    pub(super) async fn unsubscribe(&self, name: String) -> Result<(), BackplaneError> {
        let mut state = self.state.lock().await;
        state.channels.remove(&name);
        let Some(sink) = state.sink.as_mut() else {
            return Ok(());
        };
        let result = match timeout(COMMAND_TIMEOUT, sink.unsubscribe(&name)).await {
            Ok(r) => r.map_err(BackplaneError::from),
            Err(_) => Err(BackplaneError::Unavailable(
                "redis unsubscribe timed out".into(),
            )),
        };
        if result.is_err() {
            metrics::counter!("switchboard_backplane_errors_total", "op" => "unsubscribe")
                .increment(1);
        }
        result
    }

    /// Runs until cancelled: connect, resubscribe, read; on any break, back off and again.
    pub(super) async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut attempt: u32 = 0;
        loop {
            match self.connect().await {
                Ok((sink, stream)) => {
                    attempt = 0;
                    let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                    if generation > 1 {
                        metrics::counter!("switchboard_backplane_reconnects_total").increment(1);
                        tracing::warn!(
                            generation,
                            "redis pub/sub reconnected and resubscribed; messages published meanwhile were not received"
                        );
                    } else {
                        tracing::info!("redis pub/sub connected");
                    }
                    self.set_up(true);
                    let reason = self.read(sink, stream, &token).await;
                    self.set_up(false);
                    self.state.lock().await.sink = None;
                    if token.is_cancelled() {
                        return;
                    }
                    metrics::counter!("switchboard_backplane_errors_total", "op" => "connection")
                        .increment(1);
                    tracing::error!(reason, "redis pub/sub connection lost");
                }
                Err(e) => {
                    metrics::counter!("switchboard_backplane_errors_total", "op" => "connect")
                        .increment(1);
                    tracing::warn!(error = %e, attempt, "redis pub/sub connect failed");
                }
            }
            let delay = backoff(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        metrics::gauge!("switchboard_backplane_up").set(if up { 1.0 } else { 0.0 });
    }

    /// Opens a pub/sub connection and subscribes the node's own channels and
    /// every client channel of interest, then publishes the sink.
    async fn connect(&self) -> Result<(PubSubSink, PubSubStream), BackplaneError> {
        let pubsub = timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| BackplaneError::Unavailable("redis connect timed out".into()))??;
        let (mut sink, stream) = pubsub.split();
        let mut state = self.state.lock().await;
        let own = [self.keys.node(&self.node_id), self.keys.all().to_owned()];
        timeout(COMMAND_TIMEOUT, sink.subscribe(&own[..]))
            .await
            .map_err(|_| BackplaneError::Unavailable("redis subscribe timed out".into()))??;
        let channels: Vec<&String> = state.channels.iter().collect();
        for batch in channels.chunks(RESUBSCRIBE_BATCH) {
            timeout(COMMAND_TIMEOUT, sink.subscribe(batch))
                .await
                .map_err(|_| BackplaneError::Unavailable("redis resubscribe timed out".into()))??;
        }
        if !state.channels.is_empty() {
            metrics::counter!("switchboard_backplane_resubscribed_total")
                .increment(state.channels.len() as u64);
        }
        state.sink = Some(sink.clone());
        Ok((sink, stream))
    }

    /// Reads messages until the connection breaks or the node stops; says why it ended.
    async fn read(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        token: &CancellationToken,
    ) -> &'static str {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => return "shutdown",
                message = stream.next() => match message {
                    Some(message) => match self.receive(message) {
                        Ok(()) => {}
                        Err(BackplaneError::Overloaded) => {
                            metrics::counter!("switchboard_backplane_errors_total", "op" => "overload").increment(1);
                            return "fan-out overloaded: inbox lane full, dropping the subscription to resync";
                        }
                        Err(_) => return "inbox closed",
                    },
                    None => return "connection closed",
                },
                _ = ping.tick() => {
                    // In subscribe mode Redis answers PING with ["pong", ""], not a string.
                    match timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {
                            self.pings.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(_)) => return "ping failed",
                        Err(_) => return "ping timed out",
                    }
                }
            }
        }
    }

    /// Decodes one message and hands it to the fan-out without waiting.
    fn receive(&self, message: redis::Msg) -> Result<(), BackplaneError> {
        metrics::counter!("switchboard_backplane_received_total").increment(1);
        // One copy out of the Redis reply; the payload then stays shared (`Bytes`).
        let raw = Bytes::copy_from_slice(message.get_payload_bytes());
        let envelope = match Envelope::decode(raw) {
            Ok(e) => e,
            Err(e) => {
                metrics::counter!("switchboard_backplane_errors_total", "op" => "decode")
                    .increment(1);
                tracing::error!(channel = message.get_channel_name(), error = %e, "undecodable envelope dropped");
                return Ok(());
            }
        };
        let lag = now_us().saturating_sub(envelope.published_us);
        metrics::histogram!("switchboard_backplane_lag_seconds").record(lag as f64 / 1e6);
        self.inbox.try_deliver(envelope)
    }
}

/// Exponential backoff with jitter: half the step fixed, half random.
fn backoff(attempt: u32) -> Duration {
    let step = BACKOFF_MIN
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let half = step / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_MAX, "{d:?}");
            assert!(d >= BACKOFF_MIN / 2, "{d:?}");
        }
        assert!(backoff(0) <= BACKOFF_MIN);
        assert!(backoff(20) >= BACKOFF_MAX / 2);
    }
}
