//! Webhooks of one Pusher app (docs/PROTOCOL.md, section 8): what happened
//! on the app's channels, POSTed to the app's `webhook_url`.
//!
//! Events go into a bounded queue that never blocks the caller: when it is
//! full the event is dropped and counted. One task per app takes the queued
//! events in batches and POSTs `{"time_ms": <ms>, "events": [...]}` with
//! `X-Pusher-Key` and `X-Pusher-Signature` (the hex HMAC-SHA256 of the body
//! with the app secret). A 2xx answer delivers the batch; a connection error,
//! a timeout, a 5xx or a 429 is retried with exponential backoff a bounded
//! number of times, then the batch is dropped; any other answer drops it at
//! once. Dropped events are counted in
//! `switchboard_pusher_webhooks_dropped_total{app, reason}` with reason
//! `queue_full`, `failed`, `rejected` or `shutdown`; delivered events in
//! `switchboard_pusher_webhooks_sent_total{app}`.
//!
//! `time_ms` is when the batch was built, and a batch is retried with that
//! same body: the default retries end well within 5 minutes of it, since
//! receivers using Pusher's Python SDK refuse a `time_ms` more than 300 s
//! away from their clock.
//!
//! Only `http://` URLs: the build has no TLS stack, so an `https://` URL is a
//! configuration error (terminate TLS in a local proxy instead).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use metrics::Counter;
use rand::Rng;
use serde::{Deserialize, Serialize};
use switchboard_backplane::envelope::now_us;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::policy::pusher::sign::webhook_signature;

/// Events that may wait for delivery, per app; more are dropped (`queue_full`).
pub const QUEUE_CAPACITY: usize = 10_000;
/// The most events in one POST.
pub const BATCH_MAX: usize = 100;
/// How long a batch waits for more events after its first one.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Attempts per batch (the first and the retries) before it is dropped (`failed`).
pub const MAX_ATTEMPTS: u32 = 5;
/// The wait before the first retry; it doubles with each retry.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one attempt (connect, send, answer) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of a receiver's answer read (and discarded) so the connection
/// can carry the next request; a longer answer closes the connection.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// At most one log line per this interval about dropped events, per app.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A kind of webhook event, as an app's `webhook_events` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A channel got its first subscriber (cluster-wide).
    ChannelOccupied,
    /// A channel lost its last subscriber (cluster-wide).
    ChannelVacated,
    /// A user joined a presence channel (their first connection on it).
    MemberAdded,
    /// A user left a presence channel (their last connection on it).
    MemberRemoved,
    /// A client sent a `client-*` event.
    ClientEvent,
    /// A client subscribed to a cache channel that had no cached event.
    CacheMiss,
}

/// One event of a webhook, serialised as Pusher sends it: `name` and the
/// event's fields, e.g. `{"name":"member_added","channel":"presence-x","user_id":"u1"}`.
/// Channel names are the app's (Pusher) names, without the app prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum WebhookPayload {
    /// `channel_occupied`.
    ChannelOccupied {
        /// The channel.
        channel: String,
    },
    /// `channel_vacated`.
    ChannelVacated {
        /// The channel.
        channel: String,
    },
    /// `member_added`.
    MemberAdded {
        /// The presence channel.
        channel: String,
        /// The user that joined.
        user_id: String,
    },
    /// `member_removed`.
    MemberRemoved {
        /// The presence channel.
        channel: String,
        /// The user that left.
        user_id: String,
    },
    /// `client_event`.
    ClientEvent {
        /// The channel it was sent on.
        channel: String,
        /// The event name (`client-*`).
        event: String,
        /// The event's data as a string: a client's JSON data serialised as
        /// it was received, a string as it is.
        data: String,
        /// The sender's socket id.
        socket_id: String,
        /// The sender's user id; only on presence channels.
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    /// `cache_miss`.
    CacheMiss {
        /// The cache channel.
        channel: String,
    },
}

/// Why an app's webhook settings cannot be used (the node refuses to start).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum WebhookConfigError {
    /// An `https://` URL: this build has no TLS.
    #[error(
        "webhook_url {0:?}: https is not supported (this build has no TLS); use an http:// URL, \
         e.g. a local proxy that forwards over TLS"
    )]
    Https(String),
    /// Not an absolute `http://host[:port]/path` URL.
    #[error("webhook_url {url:?}: {reason}")]
    BadUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tuning value that cannot work (zero capacity, batch or attempts).
    #[error("webhook settings: {0}")]
    BadTuning(&'static str),
}

/// Limits and timings of delivery; [`Default`] gives the constants above
/// (tests shorten them).
#[derive(Clone, Debug)]
pub struct WebhookTuning {
    /// See [`QUEUE_CAPACITY`].
    pub queue_capacity: usize,
    /// See [`BATCH_MAX`].
    pub batch_max: usize,
    /// See [`BATCH_WINDOW`].
    pub batch_window: Duration,
    /// See [`MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// See [`BACKOFF_BASE`].
    pub backoff_base: Duration,
    /// See [`BACKOFF_MAX`].
    pub backoff_max: Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
}

/// The sending side of an app's webhooks: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<WebhookPayload>,
    shared: Arc<Shared>,
}

/// The delivery side: run it once, on its own task ([`WebhookTask::run`]).
pub struct WebhookTask {
    rx: mpsc::Receiver<WebhookPayload>,
    target: Target,
    tuning: WebhookTuning,
    shared: Arc<Shared>,
    sent: Counter,
    failed: Counter,
    rejected: Counter,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl WebhookEvent {
    /// Every kind, in the order of Pusher's documentation.
    pub const ALL: [WebhookEvent; 6] = [
        WebhookEvent::ChannelOccupied,
        WebhookEvent::ChannelVacated,
        WebhookEvent::MemberAdded,
        WebhookEvent::MemberRemoved,
        WebhookEvent::ClientEvent,
        WebhookEvent::CacheMiss,
    ];

    /// The wire name (`channel_occupied`, ...).
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::ChannelOccupied => "channel_occupied",
            WebhookEvent::ChannelVacated => "channel_vacated",
            WebhookEvent::MemberAdded => "member_added",
            WebhookEvent::MemberRemoved => "member_removed",
            WebhookEvent::ClientEvent => "client_event",
            WebhookEvent::CacheMiss => "cache_miss",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl FromStr for WebhookEvent {
    type Err = String;

    /// Parses a wire name; the error lists the names there are.
    fn from_str(s: &str) -> Result<Self, String> {
        WebhookEvent::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = WebhookEvent::ALL.iter().map(|e| e.name()).collect();
                format!("unknown webhook event {s:?} (known: {})", names.join(", "))
            })
    }
}

impl std::fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl WebhookPayload {
    /// The kind of this event.
    pub fn kind(&self) -> WebhookEvent {
        match self {
            WebhookPayload::ChannelOccupied { .. } => WebhookEvent::ChannelOccupied,
            WebhookPayload::ChannelVacated { .. } => WebhookEvent::ChannelVacated,
            WebhookPayload::MemberAdded { .. } => WebhookEvent::MemberAdded,
            WebhookPayload::MemberRemoved { .. } => WebhookEvent::MemberRemoved,
            WebhookPayload::ClientEvent { .. } => WebhookEvent::ClientEvent,
            WebhookPayload::CacheMiss { .. } => WebhookEvent::CacheMiss,
        }
    }
}

impl Default for WebhookTuning {
    fn default() -> Self {
        WebhookTuning {
            queue_capacity: QUEUE_CAPACITY,
            batch_max: BATCH_MAX,
            batch_window: BATCH_WINDOW,
            max_attempts: MAX_ATTEMPTS,
            backoff_base: BACKOFF_BASE,
            backoff_max: BACKOFF_MAX,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

impl Webhooks {
    /// Sets up the webhooks of app `app`: POSTs to `url`, signed with `key`
    /// and `secret`, of the events whose kind is in `events` (an empty list
    /// sends none). Fails on an `https://` or malformed URL. The metric
    /// handles are taken here, from the recorder current at the call.
    pub fn start(
        app: &str,
        url: &str,
        key: &str,
        secret: &str,
        events: &[WebhookEvent],
        tuning: WebhookTuning,
    ) -> Result<(Webhooks, WebhookTask), WebhookConfigError> {
        if tuning.queue_capacity == 0 || tuning.batch_max == 0 || tuning.max_attempts == 0 {
            return Err(WebhookConfigError::BadTuning(
                "queue capacity, batch size and attempts must be at least 1",
            ));
        }
        let target = Target::parse(url, key, secret)?;
        let dropped = |reason: &'static str| {
            metrics::counter!(
                "switchboard_pusher_webhooks_dropped_total",
                "app" => app.to_owned(),
                "reason" => reason
            )
        };
        let shared = Arc::new(Shared {
            app: app.to_owned(),
            wanted: events.iter().fold(0, |acc, e| acc | e.bit()),
            queue_full: dropped("queue_full"),
            shutdown: dropped("shutdown"),
            drop_log: Mutex::new(DropLog::default()),
        });
        let (tx, rx) = mpsc::channel(tuning.queue_capacity);
        let task = WebhookTask {
            rx,
            target,
            sent: metrics::counter!("switchboard_pusher_webhooks_sent_total", "app" => app.to_owned()),
            failed: dropped("failed"),
            rejected: dropped("rejected"),
            tuning,
            shared: shared.clone(),
            conn: None,
        };
        Ok((Webhooks { tx, shared }, task))
    }

    /// Whether events of this kind are sent (callers can skip building the
    /// ones that are not).
    pub fn wants(&self, kind: WebhookEvent) -> bool {
        self.shared.wanted & kind.bit() != 0
    }

    /// Queues an event for delivery, unless its kind is filtered out. Never
    /// blocks: with the queue full the event is dropped and counted. Returns
    /// whether it was queued.
    pub fn send(&self, event: WebhookPayload) -> bool {
        if !self.wants(event.kind()) {
            return false;
        }
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.queue_full.increment(1);
                self.shared
                    .dropped(1, "queue_full", "the webhook queue is full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.shutdown.increment(1);
                false
            }
        }
    }
}

impl WebhookTask {
    /// Delivers queued events until every [`Webhooks`] handle is dropped and
    /// the queue is empty, or until `shutdown` is cancelled: then it stops at
    /// once, and the events not delivered are counted as dropped
    /// (`shutdown`). Stop it through `shutdown`, not by dropping it: a
    /// dropped future loses the batch in hand without counting it.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                event = self.rx.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            let mut batch = vec![first];
            let deadline = Instant::now() + self.tuning.batch_window;
            while batch.len() < self.tuning.batch_max {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    event = self.rx.recv() => match event {
                        Some(event) => batch.push(event),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.shared.shutdown.increment(batch.len() as u64);
                    break;
                }
                () = self.deliver(&batch) => {}
            }
        }
        // Cancelled: count what is still queued.
        self.rx.close();
        let mut left = 0u64;
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        self.shared.shutdown.increment(left);
    }

    /// Sends one batch, with retries; counts the outcome.
    async fn deliver(&mut self, batch: &[WebhookPayload]) {
        let count = batch.len() as u64;
        let body = match serde_json::to_vec(&Batch {
            time_ms: now_us() / 1000,
            events: batch,
        }) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                // Not reachable: the payloads are plain strings.
                self.failed.increment(count);
                tracing::error!(app = %self.shared.app, error = %e, "webhook batch not serialisable");
                return;
            }
        };
        let signature = webhook_signature(&self.target.secret, &body);
        let mut last_error = String::new();
        for attempt in 1..=self.tuning.max_attempts {
            let outcome =
                tokio::time::timeout(self.tuning.request_timeout, self.post(&body, &signature))
                    .await;
            match outcome {
                Ok(Ok(status)) if status.is_success() => {
                    self.sent.increment(count);
                    return;
                }
                Ok(Ok(status))
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    last_error = format!("the receiver answered {status}");
                }
                Ok(Ok(status)) => {
                    self.rejected.increment(count);
                    self.shared.dropped(
                        count,
                        "rejected",
                        &format!("the receiver answered {status}"),
                    );
                    return;
                }
                Ok(Err(e)) => {
                    self.conn = None;
                    last_error = e;
                }
                Err(_) => {
                    // The connection may be mid-request: never reuse it.
                    self.conn = None;
                    last_error = format!("no answer within {:?}", self.tuning.request_timeout);
                }
            }
            if attempt < self.tuning.max_attempts {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
        }
        self.failed.increment(count);
        self.shared.dropped(
            count,
            "failed",
            &format!(
                "{} attempts failed, the last: {last_error}",
                self.tuning.max_attempts
            ),
        );
    }

    /// One attempt: the receiver's status, or why there is none. Reuses the
    /// previous connection while it is open.
    async fn post(&mut self, body: &Bytes, signature: &str) -> Result<StatusCode, String> {
        let sender = match self.conn.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.target.connect().await?,
        };
        let sender = self.conn.insert(sender);
        sender
            .ready()
            .await
            .map_err(|e| format!("connection closed: {e}"))?;
        let request = Request::post(self.target.path.as_str())
            .header(header::HOST, self.target.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "switchboard")
            .header("X-Pusher-Key", self.target.key.as_str())
            .header("X-Pusher-Signature", signature)
            .body(Full::new(body.clone()))
            .map_err(|e| format!("request not built: {e}"))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = answer.status();
        // Read the answer so the connection can carry the next request.
        if Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .is_err()
        {
            self.conn = None;
        }
        Ok(status)
    }

    /// The wait after attempt `attempt` (1-based): the base doubled per
    /// retry, capped, with jitter (half to all of it) so that apps retrying
    /// together spread out.
    fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .tuning
            .backoff_base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.tuning.backoff_max);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// State the handles and the task share.
struct Shared {
    app: String,
    /// One bit per [`WebhookEvent`] sent.
    wanted: u8,
    queue_full: Counter,
    shutdown: Counter,
    drop_log: Mutex<DropLog>,
}

/// Rate-limits the log lines about dropped events.
#[derive(Default)]
struct DropLog {
    last: Option<Instant>,
    /// Events dropped since the last line.
    unlogged: u64,
}

impl Shared {
    /// Logs dropped events, at most once per [`DROP_LOG_INTERVAL`] (with the
    /// number dropped since the last line).
    fn dropped(&self, count: u64, reason: &'static str, detail: &str) {
        let now = Instant::now();
        let mut log = crate::lock(&self.drop_log);
        log.unlogged += count;
        if log
            .last
            .is_some_and(|last| now.duration_since(last) < DROP_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            app = %self.app,
            reason,
            dropped = log.unlogged,
            "webhook events dropped: {detail}"
        );
        log.last = Some(now);
        log.unlogged = 0;
    }
}

/// The body of a webhook POST.
#[derive(Serialize)]
struct Batch<'a> {
    time_ms: u64,
    events: &'a [WebhookPayload],
}

/// Where and how to POST.
struct Target {
    host: String,
    port: u16,
    /// `host[:port]`, for the `Host` header.
    authority: String,
    /// Path and query.
    path: String,
    key: String,
    secret: String,
}

impl Target {
    fn parse(url: &str, key: &str, secret: &str) -> Result<Target, WebhookConfigError> {
        let bad = |reason: &str| WebhookConfigError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|e| bad(&format!("not a URL ({e})")))?;
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => {}
            Some(s) if s.eq_ignore_ascii_case("https") => {
                return Err(WebhookConfigError::Https(url.to_owned()));
            }
            Some(_) => return Err(bad("the scheme must be http://")),
            None => return Err(bad("not an absolute URL (http://host[:port]/path)")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info in the URL is not supported"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        // `Uri` keeps IPv6 hosts in brackets; connecting wants them bare.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Target {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str())
                .filter(|p| !p.is_empty())
                .unwrap_or("/")
                .to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// A new HTTP/1.1 connection; its driver runs on its own task until the
    /// returned sender is dropped or the receiver closes it.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {}: {e}", self.authority))?;
        tokio::spawn(async move {
            // Ends with an error when the receiver drops the connection; the
            // next request then reconnects.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// Describes the webhook metrics to the recorder (for the exporter's HELP lines).
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "switchboard_pusher_webhooks_sent_total",
        "Pusher webhook events delivered (the receiver answered 2xx), per app."
    );
    metrics::describe_counter!(
        "switchboard_pusher_webhooks_dropped_total",
        "Pusher webhook events dropped, per app and reason \
         (queue_full, failed, rejected, shutdown)."
    );
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Response, header::HeaderValue};
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use serde_json::{Value, json};
    use tokio::net::TcpListener;

    use super::*;

    const KEY: &str = "hook-key";
    const SECRET: &str = "hook-secret";

    /// One POST as the test receiver saw it.
    #[derive(Debug)]
    struct Received {
        path: String,
        key: Option<HeaderValue>,
        content_type: Option<HeaderValue>,
        /// Whether `X-Pusher-Signature` is the HMAC of the body with [`SECRET`].
        signed: bool,
        body: Value,
        /// The status the receiver answered.
        answered: u16,
    }

    /// A local HTTP receiver: answers the statuses of `script` in turn (then
    /// 200) and reports every request on the returned channel.
    async fn receiver(script: &[u16]) -> (String, mpsc::UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/pusher?v=1", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(
            script.iter().copied().collect::<VecDeque<u16>>(),
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (script, tx) = (script.clone(), tx.clone());
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let (script, tx) = (script.clone(), tx.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let signature = parts.headers.get("x-pusher-signature");
                        let signed = signature.is_some_and(|s| {
                            s.to_str().ok() == Some(webhook_signature(SECRET, &body).as_str())
                        });
                        let answered = crate::lock(&script).pop_front().unwrap_or(200);
                        let _ = tx.send(Received {
                            path: parts.uri.to_string(),
                            key: parts.headers.get("x-pusher-key").cloned(),
                            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                            signed,
                            body: serde_json::from_slice(&body).unwrap(),
                            answered,
                        });
                        let mut answer = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *answer.status_mut() = StatusCode::from_u16(answered).unwrap();
                        Ok::<_, Infallible>(answer)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (url, rx)
    }

    fn fast() -> WebhookTuning {
        WebhookTuning {
            batch_window: Duration::from_millis(20),
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            request_timeout: Duration::from_secs(5),
            ..WebhookTuning::default()
        }
    }

    /// Starts webhooks for app `a1` with their metrics in a recorder of their own.
    fn start(
        url: &str,
        events: &[WebhookEvent],
        tuning: WebhookTuning,
    ) -> (Webhooks, WebhookTask, PrometheusHandle) {
        let recorder = PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let (hooks, task) = metrics::with_local_recorder(&recorder, || {
            Webhooks::start("a1", url, KEY, SECRET, events, tuning)
        })
        .unwrap();
        (hooks, task, metrics)
    }

    /// The value of a series: the line of `name` with every label in `labels`.
    fn series(metrics: &PrometheusHandle, name: &str, labels: &[&str]) -> Option<u64> {
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn occupied(channel: &str) -> WebhookPayload {
        WebhookPayload::ChannelOccupied {
            channel: channel.into(),
        }
    }

    #[test]
    fn payloads_have_pushers_shapes() {
        let cases = [
            (
                occupied("orders"),
                json!({"name": "channel_occupied", "channel": "orders"}),
            ),
            (
                WebhookPayload::ChannelVacated {
                    channel: "orders".into(),
                },
                json!({"name": "channel_vacated", "channel": "orders"}),
            ),
            (
                WebhookPayload::MemberAdded {
                    channel: "presence-r".into(),
                    user_id: "u1".into(),
                },
                json!({"name": "member_added", "channel": "presence-r", "user_id": "u1"}),
            ),
            (
                WebhookPayload::MemberRemoved {
                    channel: "presence-r".into(),
                    user_id: "u1".into(),
                },
                json!({"name": "member_removed", "channel": "presence-r", "user_id": "u1"}),
            ),
            (
                WebhookPayload::ClientEvent {
                    channel: "private-c".into(),
                    event: "client-typing".into(),
                    data: r#"{"a":1}"#.into(),
                    socket_id: "1.2".into(),
                    user_id: None,
                },
                json!({"name": "client_event", "channel": "private-c", "event": "client-typing",
                       "data": "{\"a\":1}", "socket_id": "1.2"}),
            ),
            (
                WebhookPayload::ClientEvent {
                    channel: "presence-r".into(),
                    event: "client-typing".into(),
                    data: "hi".into(),
                    socket_id: "1.2".into(),
                    user_id: Some("u1".into()),
                },
                json!({"name": "client_event", "channel": "presence-r", "event": "client-typing",
                       "data": "hi", "socket_id": "1.2", "user_id": "u1"}),
            ),
            (
                WebhookPayload::CacheMiss {
                    channel: "cache-c".into(),
                },
                json!({"name": "cache_miss", "channel": "cache-c"}),
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(serde_json::to_value(&payload).unwrap(), expected);
            assert_eq!(expected["name"], payload.kind().name());
        }
        // `name` comes first on the wire, as in Pusher's examples.
        assert_eq!(
            serde_json::to_string(&occupied("x")).unwrap(),
            r#"{"name":"channel_occupied","channel":"x"}"#
        );
    }

    #[test]
    fn event_names_parse_both_ways() {
        for kind in WebhookEvent::ALL {
            assert_eq!(kind.name().parse::<WebhookEvent>(), Ok(kind));
            let quoted = format!("\"{}\"", kind.name());
            assert_eq!(serde_json::from_str::<WebhookEvent>(&quoted).unwrap(), kind);
        }
        let err = "channel_existence".parse::<WebhookEvent>().unwrap_err();
        assert!(err.contains("channel_occupied"), "{err}");
    }

    #[tokio::test]
    async fn batches_are_signed_and_delivered() {
        let (url, mut seen) = receiver(&[]).await;
        let events = [WebhookEvent::ChannelOccupied, WebhookEvent::MemberAdded];
        let (hooks, task, metrics) = start(&url, &events, fast());
        assert!(hooks.send(occupied("a")));
        assert!(hooks.send(WebhookPayload::MemberAdded {
            channel: "presence-r".into(),
            user_id: "u1".into(),
        }));
        // Filtered out: not in the app's list.
        assert!(!hooks.wants(WebhookEvent::ChannelVacated));
        assert!(!hooks.send(WebhookPayload::ChannelVacated {
            channel: "a".into()
        }));
        let done = tokio::spawn(task.run(CancellationToken::new()));

        let got = seen.recv().await.unwrap();
        assert_eq!(got.path, "/hooks/pusher?v=1");
        assert_eq!(got.key.as_ref().unwrap(), KEY);
        assert_eq!(got.content_type.as_ref().unwrap(), "application/json");
        assert!(got.signed, "X-Pusher-Signature does not verify");
        assert!(got.body["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(
            got.body["events"],
            json!([
                {"name": "channel_occupied", "channel": "a"},
                {"name": "member_added", "channel": "presence-r", "user_id": "u1"},
            ])
        );

        // A later event goes in a later batch (over the same connection).
        assert!(hooks.send(occupied("b")));
        let got = seen.recv().await.unwrap();
        assert_eq!(
            got.body["events"],
            json!([{"name": "channel_occupied", "channel": "b"}])
        );

        // The task ends once the handles are gone and the queue is empty.
        drop(hooks);
        done.await.unwrap();
        assert_eq!(
            series(
                &metrics,
                "switchboard_pusher_webhooks_sent_total",
                &["app=\"a1\""]
            ),
            Some(3)
        );
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_batch_max_events() {
        let (url, mut seen) = receiver(&[]).await;
        let tuning = WebhookTuning {
            batch_max: 2,
            ..fast()
        };
        let (hooks, task, _metrics) = start(&url, &WebhookEvent::ALL, tuning);
        for channel in ["a", "b", "c"] {
            assert!(hooks.send(occupied(channel)));
        }
        drop(hooks);
        let done = tokio::spawn(task.run(CancellationToken::new()));
        let first = seen.recv().await.unwrap();
        let second = seen.recv().await.unwrap();
        assert_eq!(first.body["events"].as_array().unwrap().len(), 2);
        assert_eq!(
            second.body["events"],
            json!([{"name": "channel_occupied", "channel": "c"}])
        );
        done.await.unwrap();
    }

    #[tokio::test]
    async fn server_errors_are_retried_with_the_same_body() {
        let (url, mut seen) = receiver(&[500, 429, 200]).await;
        let (hooks, task, metrics) = start(&url, &WebhookEvent::ALL, fast());
        assert!(hooks.send(occupied("a")));
        drop(hooks);
        let done = tokio::spawn(task.run(CancellationToken::new()));
        let attempts = [
            seen.recv().await.unwrap(),
            seen.recv().await.unwrap(),
            seen.recv().await.unwrap(),
        ];
        assert_eq!(
            attempts.iter().map(|r| r.answered).collect::<Vec<_>>(),
            [500, 429, 200]
        );
        assert!(
            attempts
                .iter()
                .all(|r| r.signed && r.body == attempts[0].body)
        );
        done.await.unwrap();
        assert!(seen.try_recv().is_err(), "delivered once");
        assert_eq!(
            series(&metrics, "switchboard_pusher_webhooks_sent_total", &["a1"]),
            Some(1)
        );
        assert_eq!(
            series(
                &metrics,
                "switchboard_pusher_webhooks_dropped_total",
                &["failed"]
            ),
            Some(0)
        );
    }

    #[tokio::test]
    async fn a_batch_is_dropped_after_the_last_attempt() {
        let (url, mut seen) = receiver(&[503, 503, 503, 503]).await;
        let tuning = WebhookTuning {
            max_attempts: 3,
            ..fast()
        };
        let (hooks, task, metrics) = start(&url, &WebhookEvent::ALL, tuning);
        assert!(hooks.send(occupied("a")));
        assert!(hooks.send(occupied("b")));
        drop(hooks);
        task.run(CancellationToken::new()).await;
        let answered: Vec<u16> = std::iter::from_fn(|| seen.try_recv().ok())
            .map(|r| r.answered)
            .collect();
        assert_eq!(answered, [503, 503, 503]);
        let failed = ["app=\"a1\"", "reason=\"failed\""];
        assert_eq!(
            series(
                &metrics,
                "switchboard_pusher_webhooks_dropped_total",
                &failed
            ),
            Some(2)
        );
        assert_eq!(
            series(&metrics, "switchboard_pusher_webhooks_sent_total", &["a1"]),
            Some(0)
        );
    }

    #[tokio::test]
    async fn client_errors_drop_the_batch_at_once() {
        let (url, mut seen) = receiver(&[403]).await;
        let (hooks, task, metrics) = start(&url, &WebhookEvent::ALL, fast());
        assert!(hooks.send(occupied("a")));
        drop(hooks);
        task.run(CancellationToken::new()).await;
        assert_eq!(seen.recv().await.unwrap().answered, 403);
        assert!(seen.try_recv().is_err(), "not retried");
        let rejected = ["app=\"a1\"", "reason=\"rejected\""];
        assert_eq!(
            series(
                &metrics,
                "switchboard_pusher_webhooks_dropped_total",
                &rejected
            ),
            Some(1)
        );
    }

    #[tokio::test]
    async fn an_unreachable_receiver_fails_after_the_attempts() {
        // A port that was just free: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let tuning = WebhookTuning {
            max_attempts: 2,
            ..fast()
        };
        let (hooks, task, metrics) = start(&url, &WebhookEvent::ALL, tuning);
        assert!(hooks.send(occupied("a")));
        drop(hooks);
        task.run(CancellationToken::new()).await;
        assert_eq!(
            series(
                &metrics,
                "switchboard_pusher_webhooks_dropped_total",
                &["failed"]
            ),
            Some(1)
        );
    }

    #[tokio::test]
    async fn a_silent_receiver_times_out() {
        // Accepts connections and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let tuning = WebhookTuning {
            max_attempts: 2,
            request_timeout: Duration::from_millis(100),
            ..fast()
        };
        let (hooks, task, metrics) = start(&url, &WebhookEvent::ALL, tuning);
        assert!(hooks.send(occupied("a")));
        drop(hooks);
        task.run(CancellationToken::new()).await;
        assert_eq!(
            series(
                &metrics,
                "switchboard_pusher_webhooks_dropped_total",
                &["failed"]
            ),
            Some(1)
        );
        held.abort();
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let (url, mut seen) = receiver(&[]).await;
        let tuning = WebhookTuning {
            queue_capacity: 2,
            ..fast()
        };
        let (hooks, task, metrics) = start(&url, &WebhookEvent::ALL, tuning);
        // The task is not running yet: the queue fills up.
        let queued: Vec<bool> = ["a", "b", "c", "d", "e"]
            .map(|c| hooks.send(occupied(c)))
            .into();
        assert_eq!(queued, [true, true, false, false, false]);
        let full = ["app=\"a1\"", "reason=\"queue_full\""];
        assert_eq!(
            series(&metrics, "switchboard_pusher_webhooks_dropped_total", &full),
            Some(3)
        );
        drop(hooks);
        task.run(CancellationToken::new()).await;
        let got = seen.recv().await.unwrap();
        assert_eq!(
            got.body["events"],
            json!([{"name": "channel_occupied", "channel": "a"}, {"name": "channel_occupied", "channel": "b"}])
        );
    }

    #[tokio::test]
    async fn shutdown_counts_what_was_not_delivered() {
        let (url, _seen) = receiver(&[]).await;
        let (hooks, task, metrics) = start(&url, &WebhookEvent::ALL, fast());
        assert!(hooks.send(occupied("a")));
        assert!(hooks.send(occupied("b")));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        task.run(shutdown).await;
        let reason = ["reason=\"shutdown\""];
        assert_eq!(
            series(
                &metrics,
                "switchboard_pusher_webhooks_dropped_total",
                &reason
            ),
            Some(2)
        );
        // With the task gone, later events are counted too.
        assert!(!hooks.send(occupied("c")));
        assert_eq!(
            series(
                &metrics,
                "switchboard_pusher_webhooks_dropped_total",
                &reason
            ),
            Some(3)
        );
    }

    #[test]
    fn https_and_malformed_urls_are_refused() {
        let start = |url: &str| {
            Webhooks::start(
                "a1",
                url,
                KEY,
                SECRET,
                &WebhookEvent::ALL,
                WebhookTuning::default(),
            )
            .map(|_| ())
        };
        assert_eq!(
            start("https://example.com/hooks"),
            Err(WebhookConfigError::Https(
                "https://example.com/hooks".into()
            ))
        );
        assert!(
            start("HTTPS://example.com/")
                .unwrap_err()
                .to_string()
                .contains("https is not supported")
        );
        for bad in [
            "example.com/hooks",
            "/hooks",
            "ftp://example.com/",
            "http://",
            "http://u:p@example.com/",
            "not a url",
        ] {
            assert!(
                matches!(start(bad), Err(WebhookConfigError::BadUrl { .. })),
                "{bad}: {:?}",
                start(bad)
            );
        }
        let tuning = WebhookTuning {
            queue_capacity: 0,
            ..WebhookTuning::default()
        };
        assert!(matches!(
            Webhooks::start("a1", "http://h/", KEY, SECRET, &[], tuning).map(|_| ()),
            Err(WebhookConfigError::BadTuning(_))
        ));
    }

    #[test]
    fn urls_are_split_into_host_port_and_path() {
        let t = Target::parse("http://hooks.internal/p?x=1", KEY, SECRET).unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.path.as_str()
            ),
            ("hooks.internal", 80, "hooks.internal", "/p?x=1")
        );
        let t = Target::parse("http://127.0.0.1:8080", KEY, SECRET).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/")
        );
        let t = Target::parse("http://[::1]:9000/h", KEY, SECRET).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 9000, "[::1]:9000")
        );
    }

    #[test]
    fn default_retries_end_within_five_minutes() {
        // Worst case: every attempt times out and every wait is in full.
        let t = WebhookTuning::default();
        let waits: Duration = (1..t.max_attempts)
            .map(|n| {
                t.backoff_base
                    .saturating_mul(1 << (n - 1))
                    .min(t.backoff_max)
            })
            .sum();
        let worst = t.request_timeout * t.max_attempts + waits + t.batch_window;
        assert!(worst < Duration::from_secs(300), "{worst:?}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (_, task, _) = start(
            "http://127.0.0.1:9/",
            &[],
            WebhookTuning {
                backoff_base: Duration::from_millis(100),
                backoff_max: Duration::from_millis(350),
                ..WebhookTuning::default()
            },
        );
        for (attempt, full) in [(1, 100), (2, 200), (3, 350), (30, 350)] {
            let wait = task.backoff(attempt);
            let full = Duration::from_millis(full);
            assert!(
                wait >= full / 2 && wait <= full,
                "attempt {attempt}: {wait:?}"
            );
        }
    }
}
