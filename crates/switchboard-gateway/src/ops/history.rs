//! Reading a channel's history: the `history` command and API route
//! ([`read`]), where a subscription starts ([`start`]), and the forward reader ([`Reader`]) that both a recovering
//! subscription (`session::commands`) and the repair after a backplane
//! reconnect (`fanout`) page through (docs/PROTOCOL.md, "History and recovery").

use switchboard_backplane::{BackplaneError, Envelope, HistoryPage, HistoryPolicy, Since};

use crate::namespace::Namespace;
use crate::node::NodeInner;
use crate::protocol::StreamPosition;

/// The history a channel keeps, if any: its namespace's; a Pusher cache
/// channel keeps at least its last event, for [`CACHE_TTL`].
pub(crate) fn policy(node: &NodeInner, channel: &str) -> Option<HistoryPolicy> {
    let namespace = node.config.namespaces.of(channel);
    let configured = of_namespace(namespace);
    if !crate::policy::pusher::is_cache_channel(node, channel) {
        return configured;
    }
    Some(configured.map_or(
        HistoryPolicy {
            size: 1,
            ttl: CACHE_TTL,
        },
        |p| HistoryPolicy {
            size: p.size,
            ttl: p.ttl.max(CACHE_TTL),
        },
    ))
}

/// How long a Pusher cache channel keeps its last event.
pub(crate) const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The history policy of a namespace, if it keeps history.
fn of_namespace(namespace: &Namespace) -> Option<HistoryPolicy> {
    namespace.has_history().then_some(HistoryPolicy {
        size: namespace.history_size,
        ttl: namespace.history_ttl,
    })
}

/// Reads history for the `history` command and the API: without `since`, the
/// newest `limit`; with `since` in the current epoch, the oldest `limit` after
/// it; with `since` from another epoch, as without it.
pub(crate) async fn read(
    node: &NodeInner,
    channel: &str,
    policy: HistoryPolicy,
    limit: Option<u32>,
    since: Option<&StreamPosition>,
) -> Result<HistoryPage, BackplaneError> {
    let mut page = node
        .backplane
        .history(
            channel,
            policy,
            since.map_or(Since::All, |s| Since::After(s.offset)),
        )
        .await?;
    let same_epoch = since.is_some_and(|s| s.epoch == page.epoch);
    if since.is_some() && !same_epoch {
        page = node.backplane.history(channel, policy, Since::All).await?;
    }
    if let Some(limit) = limit.map(|l| l as usize)
        && page.messages.len() > limit
    {
        if same_epoch {
            page.messages.truncate(limit);
        } else {
            page.messages.drain(..page.messages.len() - limit);
        }
    }
    Ok(page)
}

/// Where a subscription to a history channel starts.
pub(crate) struct Start {
    /// The newest position (the one the `subscribed` reply announces) and,
    /// when recovering, the first messages after the client's position.
    pub(crate) page: HistoryPage,
    /// Whether the client's `recover` position is still in history, so that
    /// what follows it can be given in full.
    pub(crate) recovered: bool,
}

/// Reads where a subscription starts: the channel's newest position and,
/// with `recover`, up to `limit` messages after the client's position.
pub(crate) async fn start(
    node: &NodeInner,
    channel: &str,
    recover: Option<&StreamPosition>,
    limit: usize,
) -> Result<Start, BackplaneError> {
    let since = recover.map_or(Since::Nothing, |r| Since::After(r.offset));
    let page = node.backplane.history_page(channel, since, limit).await?;
    let recovered = recover.is_some_and(|r| page.can_recover(&r.epoch, r.offset));
    Ok(Start { page, recovered })
}

/// One page read forward.
pub(crate) struct Step {
    /// The messages after the reader's position, in order.
    pub(crate) messages: Vec<Envelope>,
    /// Whether messages between the position and these are gone from history
    /// (trimmed, or the history was lost or expired and a new epoch began):
    /// whoever relies on this reader must be told they may have missed some.
    pub(crate) gap: bool,
}

/// Reads a channel's history forward from a position, a page at a time,
/// until it has caught up with the newest message it has seen. The one
/// place that decides what continues a position:
///
/// - the same epoch continues it; a gap shows as `first > after + 1`;
/// - a position in the empty epoch at offset 0 (the channel had no history
///   yet) continues into whatever epoch began since, from its start;
/// - any other epoch means the history read from is gone: a gap, and the
///   reader goes on from the start of the new epoch.
pub(crate) struct Reader<'a> {
    node: &'a NodeInner,
    channel: &'a str,
    epoch: String,
    after: u64,
    newest: u64,
}

impl<'a> Reader<'a> {
    /// A reader that has delivered everything up to `after` in `epoch`, and
    /// knows of messages up to `newest`.
    pub(crate) fn new(
        node: &'a NodeInner,
        channel: &'a str,
        epoch: String,
        after: u64,
        newest: u64,
    ) -> Self {
        Reader {
            node,
            channel,
            epoch,
            after,
            newest,
        }
    }

    /// The epoch and offset everything up to which has been read.
    pub(crate) fn position(&self) -> (&str, u64) {
        (&self.epoch, self.after)
    }

    /// Whether everything the reader knows of has been read.
    pub(crate) fn caught_up(&self) -> bool {
        self.after >= self.newest
    }

    /// Reads the next page of at most `limit` messages.
    pub(crate) async fn next(&mut self, limit: usize) -> Result<Step, BackplaneError> {
        let page = self
            .node
            .backplane
            .history_page(self.channel, Since::After(self.after), limit)
            .await?;
        let continues = page.epoch == self.epoch || (self.epoch.is_empty() && self.after == 0);
        if !continues {
            (self.epoch, self.after, self.newest) = (page.epoch, 0, page.offset);
            return Ok(Step {
                messages: Vec::new(),
                gap: true,
            });
        }
        let gap = page.first > self.after.saturating_add(1);
        self.epoch = page.epoch;
        self.newest = page.offset;
        self.after = page.messages.last().map_or(page.offset, |m| m.offset);
        Ok(Step {
            messages: page.messages,
            gap,
        })
    }
}
