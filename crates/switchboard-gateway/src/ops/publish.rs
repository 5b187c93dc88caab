//! Putting envelopes on the backplane: channel messages, user messages, join
//! and leave events, and disconnect orders.

use switchboard_backplane::envelope::{self, Kind};
use switchboard_backplane::{BackplaneError, Position};

use crate::node::NodeInner;
use crate::protocol::{Disconnect, Payload};

/// Publishes a message to a channel, into its history when its namespace keeps
/// one; returns the message's position in that history. `publisher` is the
/// publishing client's user ("" for anonymous clients and the server API).
pub(crate) async fn to_channel(
    node: &NodeInner,
    channel: &str,
    data: Payload,
    publisher: &str,
) -> Result<Option<Position>, BackplaneError> {
    let mut envelope =
        envelope::for_channel(&node.config.node_id, channel, data.bytes, data.encoding);
    envelope.publisher = publisher.to_owned();
    let history = super::history::policy(node, channel);
    node.backplane.publish(&envelope, history).await
}

/// Sends a message to every connection of a user, on any node.
pub(crate) async fn to_user(
    node: &NodeInner,
    user: &str,
    data: Payload,
) -> Result<(), BackplaneError> {
    let envelope = envelope::for_user(&node.config.node_id, user, data.bytes, data.encoding);
    node.backplane.publish(&envelope, None).await.map(drop)
}

/// Closes every connection of a user (`Kind::User`) or one connection
/// (`Kind::Conn`), on whichever node holds them.
pub(crate) async fn disconnect(
    node: &NodeInner,
    target: Kind,
    order: &Disconnect,
) -> Result<(), BackplaneError> {
    let envelope = envelope::disconnect(&node.config.node_id, target, order.to_envelope());
    node.backplane.publish(&envelope, None).await.map(drop)
}

/// Tells a channel's subscribers that a connection joined (or left) it. A
/// failure is logged, not returned: the subscription itself stands.
pub(crate) async fn join_leave(
    node: &NodeInner,
    channel: &str,
    conn: &str,
    user: &str,
    join: bool,
) {
    let envelope = envelope::join_leave(&node.config.node_id, channel, conn, user, "", join);
    if let Err(e) = node.backplane.publish(&envelope, None).await {
        tracing::warn!(channel, error = %e, "join/leave event not published");
    }
}
