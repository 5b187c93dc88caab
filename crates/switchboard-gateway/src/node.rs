//! A node: its state, its start, the fan-out workers and its drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use switchboard_backplane::redis::{RedisBackplane, RedisConfig};
use switchboard_backplane::{
    Backplane, BackplaneError, Inbox, InboxLane, NodeStats, memory::MemoryBackplane,
};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BackplaneConfig, NodeConfig};
use crate::hub::Hub;
use crate::metrics::HotMetrics;
use crate::session::{End, SessionHandle};

/// Why a node could not start or run.
#[derive(Debug, Error)]
pub enum NodeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The backplane could not be set up.
    #[error(transparent)]
    Backplane(#[from] BackplaneError),
    /// A setting that only shows its fault when used (an unparsable key, say).
    #[error("{setting}: {message}")]
    Config {
        /// The setting, as a flag.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A node whose listeners are bound, ready to [`Node::run`].
pub struct Node {
    inner: Arc<NodeInner>,
    public: TcpListener,
    internal: TcpListener,
    lanes: Vec<InboxLane>,
    /// The delivery tasks of the Pusher apps' webhooks, started by `run`.
    webhook_tasks: Vec<crate::ops::webhooks::WebhookTask>,
}

/// State shared by every task of a node.
pub(crate) struct NodeInner {
    pub(crate) config: NodeConfig,
    pub(crate) backplane: Backplane,
    pub(crate) hub: Hub,
    pub(crate) metrics: Arc<HotMetrics>,
    pub(crate) prometheus: Option<PrometheusHandle>,
    pub(crate) sessions: TaskTracker,
    draining: AtomicBool,
    started: Instant,
    connections: Arc<AtomicU64>,
    /// Open connections by protocol (`Protocol::slot`).
    by_protocol: [AtomicU64; crate::protocol::Protocol::COUNT],
    next_session: AtomicU64,
    /// Every open session by connection id (for disconnects by the server API).
    pub(crate) conns: Mutex<HashMap<Arc<str>, Arc<SessionHandle>>>,
    /// Verifies client tokens.
    pub(crate) authenticator: crate::policy::token::Authenticator,
    /// The connection cap and the per-IP connection rate.
    pub(crate) gate: crate::policy::limits::ConnectionGate,
    /// Envelopes received from the backplane (the demo's messages per second).
    pub(crate) envelopes_in: AtomicU64,
    /// The last answer of the demo's public `/status`, refreshed at most once a second.
    pub(crate) status: tokio::sync::Mutex<Option<StatusSample>>,
    /// Which fan-out lane each topic's envelopes take (for repairs).
    pub(crate) inbox: Inbox,
    /// Each Pusher app's webhooks (by the app's index), when it has a URL.
    pub(crate) webhooks: Vec<Option<crate::ops::webhooks::Webhooks>>,
    /// Each Pusher app's open connections on this node (by the app's index).
    pub(crate) pusher_open: Vec<Arc<std::sync::atomic::AtomicUsize>>,
}

/// One answer of the demo's `/status` route, with what its message rate was computed from.
pub(crate) struct StatusSample {
    pub(crate) at: Instant,
    pub(crate) envelopes_in: u64,
    pub(crate) body: bytes::Bytes,
}

impl Node {
    /// Binds both listeners and sets up the backplane (without waiting for Redis).
    ///
    /// Install the metrics recorder before calling this, or nothing is recorded.
    pub async fn bind(
        config: NodeConfig,
        prometheus: Option<PrometheusHandle>,
    ) -> Result<Node, NodeError> {
        let backlog = config.listen_backlog;
        let bind = |addr: SocketAddr| async move {
            listen(addr, backlog).map_err(|source| NodeError::Bind { addr, source })
        };
        // A bad key stops the node before it listens.
        let authenticator =
            crate::policy::token::Authenticator::new(&config.auth).map_err(|e| {
                NodeError::Config {
                    setting: "--jwt-public-key",
                    message: e.to_string(),
                }
            })?;
        let (webhooks, webhook_tasks) = start_webhooks(&config)?;
        let public = bind(config.listen).await?;
        let internal = bind(config.internal_listen).await?;

        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (inbox, lanes) = Inbox::new(workers, config.fanout_lane_capacity);
        let lane_map = inbox.clone();
        let connections = Arc::new(AtomicU64::new(0));
        let subscriptions = Arc::new(AtomicU64::new(0));
        let stats = {
            let (connections, subscriptions) = (connections.clone(), subscriptions.clone());
            Arc::new(move || NodeStats {
                connections: connections.load(Ordering::Relaxed),
                subscriptions: subscriptions.load(Ordering::Relaxed),
            })
        };
        let backplane = match &config.backplane {
            BackplaneConfig::Memory => Backplane::Memory(Arc::new(MemoryBackplane::new(
                config.node_id.clone(),
                inbox,
                stats,
            ))),
            BackplaneConfig::Redis {
                url,
                prefix,
                registry_interval,
            } => Backplane::Redis(Arc::new(RedisBackplane::start(
                RedisConfig {
                    url: url.clone(),
                    prefix: prefix.clone(),
                    node_id: config.node_id.clone(),
                    registry_interval: *registry_interval,
                    ping_interval: RedisConfig::DEFAULT_PING_INTERVAL,
                },
                inbox,
                stats,
            )?)),
        };
        // Two live processes with one id would make presence and the cluster
        // list lie: the second one refuses to start.
        backplane.claim_node_id().await?;
        metrics::gauge!("switchboard_connections").set(0.0);
        let inner = Arc::new(NodeInner {
            hub: Hub::new(backplane.clone(), subscriptions, config.outbound_queue),
            backplane,
            metrics: Arc::new(HotMetrics::new()),
            prometheus,
            sessions: TaskTracker::new(),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            connections,
            by_protocol: Default::default(),
            next_session: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            authenticator,
            gate: crate::policy::limits::ConnectionGate::new(&config.limits),
            envelopes_in: AtomicU64::new(0),
            status: tokio::sync::Mutex::new(None),
            inbox: lane_map,
            webhooks,
            pusher_open: config.pusher.iter().map(|_| Arc::default()).collect(),
            config,
        });
        Ok(Node {
            inner,
            public,
            internal,
            lanes,
            webhook_tasks,
        })
    }

    /// The bound public address (the real port when configured with port 0).
    pub fn public_addr(&self) -> SocketAddr {
        self.public.local_addr().unwrap_or(self.inner.config.listen)
    }

    /// The bound internal address.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
            .local_addr()
            .unwrap_or(self.inner.config.internal_listen)
    }

    /// Serves until `shutdown` resolves, then drains: readiness goes false, new
    /// upgrades are refused, every client is sent `disconnect` 1001 at a random
    /// moment within the drain window, and this returns once they are gone or
    /// the drain timeout has passed. It drains the same way, and then fails with
    /// [`BackplaneError::NodeIdInUse`], when another live node takes this
    /// node's id while it runs.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let Node {
            inner,
            public,
            internal,
            lanes,
            webhook_tasks,
        } = self;
        let stop_listening = CancellationToken::new();
        let background = TaskTracker::new();
        // Webhooks go on through the drain (the vacated channels of the
        // closing connections are reported) and stop with the listeners.
        for task in webhook_tasks {
            background.spawn(task.run(stop_listening.clone()));
        }
        for (index, lane) in lanes.into_iter().enumerate() {
            background.spawn(crate::fanout::run(inner.clone(), index, lane));
        }
        background.spawn(crate::http::serve(
            public,
            inner.clone(),
            crate::http::Listener::Public,
            stop_listening.clone(),
        ));
        background.spawn(crate::http::serve(
            internal,
            inner.clone(),
            crate::http::Listener::Internal,
            stop_listening.clone(),
        ));
        if let Some(handle) = inner.prometheus.clone() {
            let stop = stop_listening.clone();
            background.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => handle.run_upkeep(),
                    }
                }
            });
        }
        // Members of dead nodes that this node's purges found: their
        // presence channels are told (the native protocol reports none).
        if let Some(departures) = inner.backplane.take_departures() {
            let (node, stop) = (inner.clone(), stop_listening.clone());
            background.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    () = crate::ops::pusher::departures(&node, departures) => {}
                }
            });
        }
        tracing::info!(node = %inner.config.node_id, backplane = inner.backplane.kind(), "node running");

        // Another live node took this node's id: drain and fail loudly.
        let lost = tokio::select! {
            _ = shutdown => None,
            e = inner.backplane.node_id_lost() => Some(e),
        };
        let started = Instant::now();
        let open = inner.connections.load(Ordering::Relaxed);
        tracing::info!(connections = open, timeout = ?inner.config.drain_timeout, "draining");
        inner.draining.store(true, Ordering::Release);
        // Each session picks its own moment to leave within the drain window.
        for session in crate::lock(&inner.conns).values() {
            session.wake();
        }
        inner.sessions.close();
        if tokio::time::timeout(inner.config.drain_timeout, inner.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = inner.connections.load(Ordering::Relaxed),
                "drain timeout reached with connections still open; exiting anyway"
            );
        }
        let left = inner.config.drain_timeout.saturating_sub(started.elapsed());
        if tokio::time::timeout(
            left.max(Duration::from_millis(500)),
            inner.backplane.shutdown(),
        )
        .await
        .is_err()
        {
            tracing::warn!("backplane did not shut down in time");
        }
        stop_listening.cancel();
        tracing::info!(took = ?started.elapsed(), "drained");
        lost.map_or(Ok(()), |e| Err(e.into()))
    }
}

/// Each Pusher app's webhooks (by the app's index), and their delivery tasks.
type AppWebhooks = (
    Vec<Option<crate::ops::webhooks::Webhooks>>,
    Vec<crate::ops::webhooks::WebhookTask>,
);

/// The webhooks of every Pusher app that has a URL (by the app's index), and
/// their delivery tasks; a URL or event name that cannot work stops the node.
fn start_webhooks(config: &NodeConfig) -> Result<AppWebhooks, NodeError> {
    use crate::ops::webhooks::{WebhookEvent, WebhookTuning, Webhooks};
    let (mut hooks, mut tasks) = (Vec::new(), Vec::new());
    for app in &config.pusher {
        let Some(url) = &app.webhook_url else {
            hooks.push(None);
            continue;
        };
        let events = app
            .webhook_events
            .iter()
            .map(|e| e.parse::<WebhookEvent>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| NodeError::Config {
                setting: "pusher.apps.webhook_events",
                message: format!("app {}: {message}", app.id),
            })?;
        let (hook, task) = Webhooks::start(
            &app.id,
            url,
            &app.key,
            &app.secret,
            &events,
            WebhookTuning::default(),
        )
        .map_err(|e| NodeError::Config {
            setting: "pusher.apps.webhook_url",
            message: format!("app {}: {e}", app.id),
        })?;
        hooks.push(Some(hook));
        tasks.push(task);
    }
    Ok((hooks, tasks))
}

/// Binds a listener with an explicit backlog. A reconnect storm (a node killed,
/// its clients arriving at once) overflows a small accept queue, and every
/// dropped SYN costs its client a one-second retransmission.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

impl NodeInner {
    pub(crate) fn register(&self, session: &Arc<SessionHandle>) {
        crate::lock(&self.conns).insert(session.conn.clone(), session.clone());
    }

    pub(crate) fn unregister(&self, session: &SessionHandle) {
        crate::lock(&self.conns).remove(&session.conn);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Why the node is not ready, or `None` when it is.
    pub(crate) fn not_ready(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining")
        } else if self.gate.at_limit() {
            Some("at connection limit")
        } else if !self.backplane.is_up() {
            Some(if self.backplane.connection_generation() == 0 {
                "starting: backplane not connected yet"
            } else {
                "backplane down"
            })
        } else {
            None
        }
    }

    pub(crate) fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn session_opened(&self, protocol: crate::protocol::Protocol) {
        let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("switchboard_connections").set(n as f64);
        metrics::counter!("switchboard_connections_accepted_total").increment(1);
        let p = self.by_protocol[protocol.slot()].fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("switchboard_connections_by_protocol", "protocol" => protocol.label())
            .set(p as f64);
    }

    pub(crate) fn session_closed(&self, protocol: crate::protocol::Protocol, end: &End) {
        let n = self.connections.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("switchboard_connections").set(n as f64);
        metrics::counter!("switchboard_disconnects_total", "reason" => end.label()).increment(1);
        let p = self.by_protocol[protocol.slot()].fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("switchboard_connections_by_protocol", "protocol" => protocol.label())
            .set(p as f64);
    }
}
