//! The operations of the Pusher surface: triggering events (HTTP API),
//! relaying client events, and the memberships behind presence, occupancy
//! and member events (docs/PUSHER.md). Pusher channels are ordinary
//! channels: everything goes through the same backplane, history and hub.

use bytes::Bytes;
use switchboard_backplane::envelope::{self, PayloadEncoding};
use switchboard_backplane::{BackplaneError, Joined, Left, PresenceMember};

use crate::config::PusherApp;
use crate::node::NodeInner;
use crate::ops::webhooks::{WebhookEvent, WebhookPayload};
use crate::policy::pusher::{ChannelKind, Member, channel_key};

/// Queues a webhook event of the app whose channel `channel` is, if the app
/// sends that kind; `make` builds it from the channel's Pusher name.
pub(crate) fn webhook(
    node: &NodeInner,
    channel: &str,
    kind: WebhookEvent,
    make: impl FnOnce(String) -> WebhookPayload,
) {
    let Some((app_id, name)) = channel.split_once(':') else {
        return;
    };
    let Some(index) = node.config.pusher.iter().position(|a| a.id == app_id) else {
        return;
    };
    if let Some(Some(hooks)) = node.webhooks.get(index)
        && hooks.wants(kind)
    {
        hooks.send(make(name.to_owned()));
    }
}

/// The webhooks of a membership that began: the channel occupied, a user
/// added to a presence channel.
pub(crate) fn joined_webhooks(node: &NodeInner, channel: &str, joined: &Joined, user: &str) {
    if joined.channel_was_empty {
        webhook(node, channel, WebhookEvent::ChannelOccupied, |channel| {
            WebhookPayload::ChannelOccupied { channel }
        });
    }
    if joined.user_was_absent && is_presence(channel) {
        webhook(node, channel, WebhookEvent::MemberAdded, |channel| {
            WebhookPayload::MemberAdded {
                channel,
                user_id: user.to_owned(),
            }
        });
    }
}

/// The webhooks of a membership that ended (left, or departed with its
/// node): a user removed from a presence channel, the channel vacated.
pub(crate) fn left_webhooks(
    node: &NodeInner,
    channel: &str,
    user: &str,
    user_now_absent: bool,
    channel_now_empty: bool,
) {
    if user_now_absent && !user.is_empty() && is_presence(channel) {
        webhook(node, channel, WebhookEvent::MemberRemoved, |channel| {
            WebhookPayload::MemberRemoved {
                channel,
                user_id: user.to_owned(),
            }
        });
    }
    if channel_now_empty {
        webhook(node, channel, WebhookEvent::ChannelVacated, |channel| {
            WebhookPayload::ChannelVacated { channel }
        });
    }
}

/// Whether a Switchboard channel is a Pusher presence channel (by its name).
fn is_presence(channel: &str) -> bool {
    channel
        .split_once(':')
        .is_some_and(|(_, name)| ChannelKind::of(name) == ChannelKind::Presence)
}

/// A Pusher `data` string as the payload of an envelope: a JSON string
/// literal, which native JSON clients read as a string and the Pusher codec
/// splices in without escaping it again.
pub(crate) fn data_payload(data: &str) -> Bytes {
    // Serialising a &str cannot fail.
    Bytes::from(serde_json::to_vec(data).unwrap_or_default())
}

/// Publishes event `event` with `data` to each of `channels` (Pusher names)
/// of `app`, each in its channel's order and history; a connection whose
/// socket id is `exclude` does not receive it. Stops at the first channel the
/// backplane refuses: the channels before it have the event.
pub(crate) async fn trigger(
    node: &NodeInner,
    app: &PusherApp,
    channels: &[String],
    event: &str,
    data: &str,
    exclude: Option<&str>,
) -> Result<(), BackplaneError> {
    let payload = data_payload(data);
    for name in channels {
        let key = channel_key(app, name);
        let mut e = envelope::for_channel(
            &node.config.node_id,
            &key,
            payload.clone(),
            PayloadEncoding::Json,
        );
        e.event = event.to_owned();
        e.exclude = exclude.unwrap_or_default().to_owned();
        let history = super::history::policy(node, &key);
        node.backplane.publish(&e, history).await?;
    }
    Ok(())
}

/// Relays a client event (`data`: its JSON value as sent) to a channel's
/// other subscribers; `user` is the sender's user id on presence channels
/// ("" otherwise).
pub(crate) async fn client_event(
    node: &NodeInner,
    channel: &str,
    event: &str,
    data: Bytes,
    sender: &str,
    user: &str,
) -> Result<(), BackplaneError> {
    let mut e = envelope::for_channel(&node.config.node_id, channel, data, PayloadEncoding::Json);
    e.event = event.to_owned();
    e.exclude = sender.to_owned();
    e.publisher = user.to_owned();
    let history = super::history::policy(node, channel);
    node.backplane.publish(&e, history).await.map(drop)
}

/// Records a Pusher connection as a member of a channel (every Pusher
/// subscription is one: presence lists, counts and occupancy read them). On
/// channels other than presence channels the member is anonymous, which
/// keeps the join cheap however many subscribers the channel has.
pub(crate) async fn join(
    node: &NodeInner,
    channel: &str,
    conn: &str,
    member: Option<&Member>,
) -> Result<Joined, BackplaneError> {
    let entry = PresenceMember {
        conn: conn.to_owned(),
        user: member.map_or(String::new(), |m| m.user.clone()),
        node: node.config.node_id.clone(),
        info: member.map_or(String::new(), |m| m.info.clone()),
    };
    node.backplane.presence_join(channel, &entry).await
}

/// Removes a Pusher connection from a channel's members; `None` when it was
/// not one (or its entry expired already, and was reported as a departure).
pub(crate) async fn leave(
    node: &NodeInner,
    channel: &str,
    conn: &str,
) -> Result<Option<Left>, BackplaneError> {
    node.backplane.presence_leave(channel, conn).await
}

/// Tells a presence channel's members that a user arrived (its first
/// connection joined: `info` is its user info) or left (its last one did).
/// The arriving connection is not told (its subscription lists the member).
/// A failure is logged: the membership itself stands.
pub(crate) async fn member_event(
    node: &NodeInner,
    channel: &str,
    conn: &str,
    user: &str,
    info: &str,
    join: bool,
) {
    let mut e = envelope::join_leave(&node.config.node_id, channel, conn, user, info, join);
    if join {
        e.exclude = conn.to_owned();
    }
    if let Err(err) = node.backplane.publish(&e, None).await {
        tracing::warn!(channel, error = %err, "Pusher member event not published");
    }
}

/// A channel's members, cluster-wide: connections and distinct users.
pub(crate) async fn counts(node: &NodeInner, channel: &str) -> Result<(u64, u64), BackplaneError> {
    node.backplane.presence_counts(channel).await
}

/// An app's occupied channels whose Pusher name starts with `prefix`, with
/// their connection and user counts, cluster-wide (users' own channels, which
/// hold no members, are never listed).
pub(crate) async fn channels(
    node: &NodeInner,
    app: &PusherApp,
    prefix: &str,
) -> Result<Vec<(String, u64, u64)>, BackplaneError> {
    let namespace = format!("{}:", app.id);
    let listed = node
        .backplane
        .presence_channels(&format!("{namespace}{prefix}"))
        .await?;
    Ok(listed
        .into_iter()
        .filter_map(|(key, conns, users)| {
            let name = key.strip_prefix(&namespace)?;
            (conns > 0).then(|| (name.to_owned(), conns, users))
        })
        .collect())
}

/// Acts on the members this node's purges found gone (their node died, or
/// was replaced): a user whose last connection in a Pusher presence channel
/// was among them is reported to the channel's members, once in the cluster.
/// Runs until the backplane stops reporting.
pub(crate) async fn departures(
    node: &NodeInner,
    mut departures: tokio::sync::mpsc::Receiver<switchboard_backplane::Departure>,
) {
    while let Some(d) = departures.recv().await {
        if crate::policy::pusher::app_of(node, &d.channel).is_none() {
            continue;
        }
        if d.user_now_absent && !d.user.is_empty() && is_presence(&d.channel) {
            member_event(node, &d.channel, "", &d.user, "", false).await;
        }
        left_webhooks(
            node,
            &d.channel,
            &d.user,
            d.user_now_absent,
            d.channel_now_empty,
        );
    }
}
