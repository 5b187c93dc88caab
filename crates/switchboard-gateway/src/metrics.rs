//! Prometheus metrics: the recorder, and handles for the per-delivery path.

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard_backplane::envelope::now_us;

/// Installs the process-wide Prometheus recorder; call once, before the node starts
/// (handles taken earlier record nothing).
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    const LATENCY: &[f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY)?
        .install_recorder()?;
    describe();
    register_at_zero();
    Ok(handle)
}

/// Makes every unlabelled series exist from the start, so rates and alerts
/// see a zero rather than nothing before the first event.
fn register_at_zero() {
    for name in [
        "switchboard_connections_accepted_total",
        "switchboard_messages_received_total",
        "switchboard_messages_delivered_total",
        "switchboard_bytes_sent_total",
        "switchboard_bytes_received_total",
        "switchboard_backplane_published_total",
        "switchboard_backplane_received_total",
        "switchboard_backplane_reconnects_total",
        "switchboard_backplane_resubscribed_total",
        "switchboard_slow_consumer_disconnects_total",
        "switchboard_frames_queued_total",
        "switchboard_fanout_runs_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for name in [
        "switchboard_connections",
        "switchboard_subscriptions",
        "switchboard_channels",
    ] {
        metrics::gauge!(name).set(0.0);
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    crate::ops::webhooks::describe_metrics();
    describe_gauge!(
        "switchboard_connections_by_protocol",
        "Open client WebSocket connections, by protocol (json, proto, pusher)."
    );
    describe_gauge!(
        "switchboard_connections",
        "Open client WebSocket connections."
    );
    describe_counter!(
        "switchboard_connections_accepted_total",
        "WebSocket connections accepted."
    );
    describe_counter!(
        "switchboard_disconnects_total",
        "Connections ended, by reason."
    );
    describe_gauge!(
        "switchboard_subscriptions",
        "Channel subscriptions held by local connections."
    );
    describe_gauge!(
        "switchboard_channels",
        "Channels with at least one local subscriber."
    );
    describe_counter!(
        "switchboard_messages_received_total",
        "Messages (commands) received from clients."
    );
    describe_counter!(
        "switchboard_messages_delivered_total",
        "Channel messages written to client sockets."
    );
    describe_counter!(
        "switchboard_bytes_sent_total",
        "Bytes of WebSocket frames written to clients."
    );
    describe_counter!(
        "switchboard_bytes_received_total",
        "Bytes of client messages received."
    );
    describe_histogram!(
        "switchboard_delivery_latency_seconds",
        "Time from an envelope's publish to its write to a client socket."
    );
    describe_histogram!(
        "switchboard_backplane_lag_seconds",
        "Time from an envelope's publish to its receipt from Redis."
    );
    describe_counter!(
        "switchboard_backplane_published_total",
        "Envelopes accepted by the backplane."
    );
    describe_counter!(
        "switchboard_backplane_received_total",
        "Envelopes received from the backplane."
    );
    describe_counter!(
        "switchboard_backplane_errors_total",
        "Backplane failures, by operation."
    );
    describe_counter!(
        "switchboard_backplane_reconnects_total",
        "Times the Redis pub/sub connection came back."
    );
    describe_counter!(
        "switchboard_backplane_resubscribed_total",
        "Channels resubscribed after a Redis reconnect."
    );
    describe_gauge!(
        "switchboard_backplane_up",
        "1 while the backplane is connected and receiving."
    );
    describe_counter!(
        "switchboard_fanout_runs_total",
        "Fan-out passes: runs of consecutive envelopes of one channel delivered together. Envelopes received per run above 1 means the node is behind and batching."
    );
    describe_counter!(
        "switchboard_frames_queued_total",
        "Frames that waited in a session's outbound queue because the client's socket was full (most are written at once)."
    );
    describe_counter!(
        "switchboard_slow_consumer_disconnects_total",
        "Connections closed because their outbound queue overflowed or a write stalled."
    );
    describe_counter!(
        "switchboard_api_requests_total",
        "Server API requests, by route and status."
    );
    describe_counter!(
        "switchboard_upgrades_rejected_total",
        "WebSocket upgrades refused, by reason."
    );
    describe_counter!(
        "switchboard_limit_rejections_total",
        "Client limits that bit, by limit (message_size, message_rate, subscriptions, connections, ip_connect_rate, channel_length, control_rate, pending_per_ip)."
    );
    describe_counter!(
        "switchboard_close_handshake_timeouts_total",
        "Connections closed without the client's part of the closing handshake (its close frame or end of stream) within the wait."
    );
}

/// Handles used per message and per delivery, taken once.
pub(crate) struct HotMetrics {
    delivered: Counter,
    queued: Counter,
    runs: Counter,
    bytes_sent: Counter,
    latency: Histogram,
    received: Counter,
    bytes_received: Counter,
}

impl HotMetrics {
    pub(crate) fn new() -> Self {
        HotMetrics {
            delivered: metrics::counter!("switchboard_messages_delivered_total"),
            queued: metrics::counter!("switchboard_frames_queued_total"),
            runs: metrics::counter!("switchboard_fanout_runs_total"),
            bytes_sent: metrics::counter!("switchboard_bytes_sent_total"),
            latency: metrics::histogram!("switchboard_delivery_latency_seconds"),
            received: metrics::counter!("switchboard_messages_received_total"),
            bytes_received: metrics::counter!("switchboard_bytes_received_total"),
        }
    }

    /// Bytes of frames written to a client socket.
    pub(crate) fn sent(&self, bytes: usize) {
        self.bytes_sent.increment(bytes as u64);
    }

    /// One fan-out pass over a run of envelopes of one topic.
    pub(crate) fn fanout_run(&self) {
        self.runs.increment(1);
    }

    /// Frames that had to wait for the client's socket.
    pub(crate) fn queued(&self, frames: usize) {
        self.queued.increment(frames as u64);
    }

    /// A message written whole to a client: one delivery, and its latency.
    pub(crate) fn delivered(&self, published_us: u64) {
        self.delivered.increment(1);
        self.latency
            .record(now_us().saturating_sub(published_us) as f64 / 1e6);
    }

    pub(crate) fn message_received(&self, bytes: usize) {
        self.received.increment(1);
        self.bytes_received.increment(bytes as u64);
    }
}
