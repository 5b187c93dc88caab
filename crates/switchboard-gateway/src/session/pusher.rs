//! A Pusher connection's events (docs/PUSHER.md, "The WebSocket protocol"):
//! decode them, let `policy::pusher` refuse them, have `ops` perform them,
//! answer in Pusher's frames. The connection itself (its task, outbox,
//! heartbeats, drain) is the same as any other session's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::Rng;
use switchboard_backplane::{PresenceMember, Since};

use super::commands::{self, SubscribeError};
use super::{Outbound, SessionHandle};
use crate::node::NodeInner;
use crate::ops;
use crate::ops::webhooks::{WebhookEvent, WebhookPayload};
use crate::policy::limits::TokenBucket;
use crate::policy::pusher::{self as rules, ChannelKind, Member};
use crate::protocol::StreamPosition;
use crate::protocol::pusher::{self as codec, Command};

/// A Pusher connection's state beyond any session's.
pub(crate) struct PusherConn {
    /// Its app: an index into the node's apps.
    pub(crate) app: usize,
    /// The signed-in user (`pusher:signin`), once signed in.
    user: Mutex<Option<Arc<str>>>,
    /// Client events allowed per second.
    client_events: Mutex<TokenBucket>,
    /// The presence channels it is a member of, with the member it is.
    members: Mutex<HashMap<Arc<str>, Member>>,
    /// Its place under its app's connection limit.
    _slot: rules::AppSlot,
}

impl PusherConn {
    pub(super) fn new(
        app: usize,
        limits: &crate::config::PusherLimits,
        slot: rules::AppSlot,
    ) -> Self {
        PusherConn {
            app,
            user: Mutex::new(None),
            client_events: Mutex::new(TokenBucket::new(
                limits.client_event_rate,
                limits.client_event_rate,
                tokio::time::Instant::now(),
            )),
            members: Mutex::new(HashMap::new()),
            _slot: slot,
        }
    }
}

/// A new socket id: two random numbers, `\d+\.\d+` as the protocol wants
/// (64 random bits: unique across the cluster for any practical purpose).
pub(super) fn socket_id() -> String {
    let mut rng = rand::rng();
    format!(
        "{}.{}",
        rng.random_range(1..=u32::MAX),
        rng.random_range(1..=u32::MAX)
    )
}

fn send(session: &SessionHandle, frame: Bytes) {
    session.push(Outbound::Reply(frame));
}

/// Decodes and executes one message of a Pusher client.
pub(super) async fn handle(
    node: &NodeInner,
    session: &Arc<SessionHandle>,
    text: bool,
    data: Bytes,
) {
    let Some(state) = session.pusher.as_deref() else {
        return;
    };
    let app = &node.config.pusher[state.app];
    // Every message counts against the node's command rate, as on the
    // node's own protocol.
    if let Err(refusal) = crate::policy::access::admit_command(node, session) {
        send(
            session,
            codec::error(Some(rules::CLIENT_EVENT_RATE_CODE), &refusal.message),
        );
        if let Some(why) = refusal.close {
            session.end_with(super::End::Closed(why));
        }
        return;
    }
    if !text {
        return send(
            session,
            codec::error(
                None,
                "binary frames are not part of the Pusher protocol: send JSON text frames",
            ),
        );
    }
    let command = match codec::decode(&data) {
        Ok(c) => c,
        Err(e) => return send(session, codec::error(None, &e.0)),
    };
    match command {
        Command::Ping => send(session, codec::pong()),
        // Its bytes already count as a sign of life.
        Command::Pong => {}
        Command::Subscribe {
            channel,
            auth,
            channel_data,
        } => {
            subscribe(
                node,
                session,
                state,
                app,
                &channel,
                auth.as_deref(),
                channel_data.as_deref(),
            )
            .await
        }
        // The user's own channel lasts as long as the sign-in.
        Command::Unsubscribe { channel } if channel.starts_with(rules::USER_CHANNEL_PREFIX) => {}
        Command::Unsubscribe { channel } => {
            let key = rules::channel_key(app, &channel);
            let was = crate::lock(&session.channels).remove(&key);
            if was {
                leave(node, session, &key).await;
            }
        }
        Command::Signin { auth, user_data } => {
            sign_in(node, session, state, app, &auth, &user_data).await
        }
        Command::ClientEvent {
            event,
            channel,
            data,
        } => client_event(node, session, state, app, &event, &channel, data).await,
    }
}

async fn subscribe(
    node: &NodeInner,
    session: &Arc<SessionHandle>,
    state: &PusherConn,
    app: &crate::config::PusherApp,
    name: &str,
    auth: Option<&str>,
    channel_data: Option<&str>,
) {
    let refuse = |kind: &str, status: u16, message: &str| {
        send(
            session,
            codec::subscription_error(name, kind, message, status),
        );
    };
    // The libraries subscribe a signed-in connection to its user's channel,
    // which the sign-in joined already; nobody else may.
    if let Some(user) = name.strip_prefix(rules::USER_CHANNEL_PREFIX) {
        let signed_in = crate::lock(&state.user).as_deref() == Some(user);
        return if signed_in {
            send(session, codec::subscription_succeeded(name, None))
        } else {
            refuse(
                "AuthError",
                403,
                "a user's channel is for the connections signed in as that user",
            )
        };
    }
    let member = match rules::may_subscribe(app, &session.conn, name, auth, channel_data) {
        Ok(member) => member,
        Err(r) => return refuse(r.kind, r.status, &r.message),
    };
    let key = rules::channel_key(app, name);
    if let Err(r) = crate::policy::access::subscription_room(node, session, &key) {
        return refuse("LimitReached", 403, &r.message);
    }
    if crate::lock(&session.channels).contains(&key) {
        return send(
            session,
            codec::error(None, &format!("already subscribed to {name}")),
        );
    }
    if let Some(member) = &member
        && ops::history::policy(node, &key).is_none()
    {
        return subscribe_presence(node, session, state, name, key, member.clone()).await;
    }
    let joined = match ops::pusher::join(node, &key, &session.conn, member.as_ref()).await {
        Ok(j) => j,
        Err(e) => return refuse("Unavailable", 503, &format!("could not subscribe: {e}")),
    };
    // The succeeded frame: on presence channels with the members.
    let succeeded = match &member {
        None => codec::subscription_succeeded(name, None),
        Some(_) => match members(node, &key, name, joined.user_was_absent).await {
            Ok(members) => codec::subscription_succeeded(name, Some(codec::Members(&members))),
            Err((kind, status, message)) => {
                undo_join(node, &key, &session.conn).await;
                return refuse(kind, status, &message);
            }
        },
    };
    // A cache channel replays its last event: subscribe as if recovering
    // from just before it (history keeps it; the seam then joins the live
    // stream without a gap), or says `pusher:cache_miss`.
    let cache = rules::is_cache(name);
    let recover = if cache {
        match node.backplane.history_page(&key, Since::Nothing, 1).await {
            Ok(page) if page.offset > 0 => Some(StreamPosition {
                epoch: page.epoch,
                offset: page.offset - 1,
            }),
            Ok(_) => None,
            Err(e) => {
                undo_join(node, &key, &session.conn).await;
                return refuse(
                    "Unavailable",
                    503,
                    &format!("could not read the cache: {e}"),
                );
            }
        }
    } else {
        None
    };
    let announce = |history: Option<(&str, u64, bool)>| {
        send(session, succeeded.clone());
        if cache && !history.is_some_and(|h| h.2) {
            send(session, codec::cache_miss(name));
            ops::pusher::webhook(node, &key, WebhookEvent::CacheMiss, |channel| {
                WebhookPayload::CacheMiss { channel }
            });
        }
    };
    match commands::subscribe(node, session, &key, recover, &announce).await {
        Ok(()) => {}
        Err(SubscribeError::Already) => {
            return send(
                session,
                codec::error(None, &format!("already subscribed to {name}")),
            );
        }
        Err(SubscribeError::Backplane(e)) => {
            undo_join(node, &key, &session.conn).await;
            return refuse("Unavailable", 503, &format!("could not subscribe: {e}"));
        }
    }
    let user = member.as_ref().map_or("", |m| m.user.as_str());
    ops::pusher::joined_webhooks(node, &key, &joined, user);
    if let Some(m) = member {
        if joined.user_was_absent {
            ops::pusher::member_event(node, &key, &session.conn, &m.user, &m.info, true).await;
        }
        crate::lock(&state.members).insert(key.clone(), m);
    }
}

/// Subscribes to a presence channel (without history): the subscription
/// starts buffering before the member list is read, so a member who joins
/// meanwhile is either in the list or announced after it, never neither; a
/// buffered `member_added` of a user the list has already is dropped, so
/// none is announced twice.
async fn subscribe_presence(
    node: &NodeInner,
    session: &Arc<SessionHandle>,
    state: &PusherConn,
    name: &str,
    key: Arc<str>,
    member: Member,
) {
    let refuse = |kind: &str, status: u16, message: &str| {
        send(
            session,
            codec::subscription_error(name, kind, message, status),
        );
    };
    if !crate::lock(&session.channels).insert(key.clone()) {
        return send(
            session,
            codec::error(None, &format!("already subscribed to {name}")),
        );
    }
    let subscription = match node.hub.subscribe(&key, session, true, || {}).await {
        Ok(s) => s,
        Err(e) => {
            crate::lock(&session.channels).remove(&key);
            return refuse("Unavailable", 503, &format!("could not subscribe: {e}"));
        }
    };
    let undo = |joined: bool| {
        let key = key.clone();
        async move {
            if joined {
                undo_join(node, &key, &session.conn).await;
            }
            node.hub.unsubscribe(&key, session.id).await;
            crate::lock(&session.channels).remove(&key);
        }
    };
    let joined = match ops::pusher::join(node, &key, &session.conn, Some(&member)).await {
        Ok(j) => j,
        Err(e) => {
            undo(false).await;
            return refuse("Unavailable", 503, &format!("could not subscribe: {e}"));
        }
    };
    let members = match members(node, &key, name, joined.user_was_absent).await {
        Ok(m) => m,
        Err((kind, status, message)) => {
            undo(true).await;
            return refuse(kind, status, &message);
        }
    };
    let listed: HashSet<&str> = members.iter().map(|m| m.user.as_str()).collect();
    send(
        session,
        codec::subscription_succeeded(name, Some(codec::Members(&members))),
    );
    subscription.go_live_keeping("", 0, |item| match item {
        Outbound::Message { frame, .. } => {
            codec::member_added_user(frame).is_none_or(|user| !listed.contains(user.as_str()))
        }
        _ => true,
    });
    if joined.user_was_absent {
        ops::pusher::member_event(node, &key, &session.conn, &member.user, &member.info, true)
            .await;
    }
    ops::pusher::joined_webhooks(node, &key, &joined, &member.user);
    crate::lock(&state.members).insert(key.clone(), member);
}

/// A presence channel's members for a joining connection, refused (with the
/// subscription error's type, status and message) when the channel has its
/// most users and the joining user is a new one.
async fn members(
    node: &NodeInner,
    key: &str,
    name: &str,
    new_user: bool,
) -> Result<Vec<PresenceMember>, (&'static str, u16, String)> {
    let max = rules::app_of(node, key).map_or(100, |a| a.limits.max_presence_members);
    let members = ops::presence::members(node, key).await.map_err(|e| {
        (
            "Unavailable",
            503,
            format!("could not read the members: {e}"),
        )
    })?;
    let users: HashSet<&str> = members.iter().map(|m| m.user.as_str()).collect();
    if new_user && users.len() > max {
        return Err((
            "LimitReached",
            403,
            format!("presence channel {name} has its {max} members"),
        ));
    }
    Ok(members)
}

async fn undo_join(node: &NodeInner, key: &str, conn: &str) {
    if let Err(e) = ops::pusher::leave(node, key, conn).await {
        tracing::warn!(channel = key, error = %e, "Pusher membership not removed; it expires");
    }
}

/// Takes a Pusher connection out of a channel: hub, membership, and the
/// member event when its user's last connection left a presence channel.
pub(super) async fn leave(node: &NodeInner, session: &SessionHandle, key: &str) {
    node.hub.unsubscribe(key, session.id).await;
    let is_user_channel = key
        .split_once(':')
        .is_some_and(|(_, name)| name.starts_with(rules::USER_CHANNEL_PREFIX));
    if is_user_channel {
        return;
    }
    let member = session
        .pusher
        .as_deref()
        .and_then(|p| crate::lock(&p.members).remove(key));
    match ops::pusher::leave(node, key, &session.conn).await {
        Ok(Some(left)) => {
            if member.is_some() && left.user_now_absent {
                ops::pusher::member_event(node, key, &session.conn, &left.user, "", false).await;
            }
            ops::pusher::left_webhooks(
                node,
                key,
                &left.user,
                left.user_now_absent,
                left.channel_now_empty,
            );
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(channel = key, conn = %session.conn, error = %e, "Pusher membership not removed; it expires");
        }
    }
}

async fn sign_in(
    node: &NodeInner,
    session: &Arc<SessionHandle>,
    state: &PusherConn,
    app: &crate::config::PusherApp,
    auth: &str,
    user_data: &str,
) {
    let user = match rules::may_sign_in(app, &session.conn, auth, user_data) {
        Ok(user) => user,
        Err(message) => {
            return send(
                session,
                codec::error(Some(4009), &format!("sign-in refused: {message}")),
            );
        }
    };
    if crate::lock(&state.user).is_some() {
        return send(
            session,
            codec::error(None, "this connection is signed in already"),
        );
    }
    // The user's channel: `terminate_connections` reaches its connections there.
    let key = rules::channel_key(app, &format!("{}{user}", rules::USER_CHANNEL_PREFIX));
    if !crate::lock(&session.channels).insert(key.clone()) {
        return send(
            session,
            codec::error(None, "this connection is signed in already"),
        );
    }
    let frame = codec::signin_success(user_data);
    match node
        .hub
        .subscribe(&key, session, false, || send(session, frame))
        .await
    {
        Ok(_) => *crate::lock(&state.user) = Some(user.into()),
        Err(e) => {
            crate::lock(&session.channels).remove(&key);
            send(session, codec::error(None, &format!("sign-in failed: {e}")));
        }
    }
}

async fn client_event(
    node: &NodeInner,
    session: &Arc<SessionHandle>,
    state: &PusherConn,
    app: &crate::config::PusherApp,
    event: &str,
    name: &str,
    data: Bytes,
) {
    let key = rules::channel_key(app, name);
    let subscribed = crate::lock(&session.channels).contains(&key);
    if let Err((code, message)) = rules::may_send_client_event(app, name, subscribed) {
        return send(session, codec::error(code, &message));
    }
    if !crate::lock(&state.client_events).try_take(tokio::time::Instant::now()) {
        node.gate.rejections.client_events.increment(1);
        return send(
            session,
            codec::error(
                Some(rules::CLIENT_EVENT_RATE_CODE),
                &format!(
                    "client event rejected: the limit is {} per second per connection",
                    app.limits.client_event_rate
                ),
            ),
        );
    }
    // The data is JSON as parsed; its depth and escapes are checked as any
    // published JSON is.
    if let Err(why) =
        crate::protocol::payload::check_json_text(std::str::from_utf8(&data).unwrap_or_default())
    {
        why.count_refusal();
        return send(
            session,
            codec::error(
                None,
                &format!("client event data refused: {}", why.describe()),
            ),
        );
    }
    let user = if ChannelKind::of(name) == ChannelKind::Presence {
        crate::lock(&state.members)
            .get(&key)
            .map(|m| m.user.clone())
            .unwrap_or_default()
    } else {
        String::new()
    };
    ops::pusher::webhook(node, &key, WebhookEvent::ClientEvent, |channel| {
        WebhookPayload::ClientEvent {
            channel,
            event: event.to_owned(),
            data: String::from_utf8_lossy(&data).into_owned(),
            socket_id: session.conn.to_string(),
            user_id: (!user.is_empty()).then(|| user.clone()),
        }
    });
    if let Err(e) = ops::pusher::client_event(node, &key, event, data, &session.conn, &user).await {
        send(
            session,
            codec::error(None, &format!("client event not sent: {e}")),
        );
    }
}
