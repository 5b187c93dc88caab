//! What a Pusher client or caller may do (docs/PUSHER.md): channel names and
//! kinds, channel authorization, user sign-in, client events, and where the
//! node's own protocol meets Pusher channels. The signatures themselves are
//! computed and compared in [`sign`].

pub(crate) mod sign;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::PusherApp;
use crate::node::NodeInner;

/// The longest Pusher channel name, in bytes.
pub(crate) const MAX_CHANNEL_NAME_LEN: usize = 164;

/// The Pusher error code of a client event refused for its rate.
pub(crate) const CLIENT_EVENT_RATE_CODE: u16 = 4301;

/// The longest `user_id` of a presence member, in bytes (Pusher's own limit).
pub(crate) const MAX_USER_ID_LEN: usize = 128;

/// The longest `user_info` of a presence member, in bytes (Pusher's own limit).
pub(crate) const MAX_USER_INFO_LEN: usize = 1024;

/// The prefix of the channel a signed-in user's connections are on
/// (`#server-to-user-<id>`, where `terminate_connections` reaches them).
pub(crate) const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// A Pusher connection's place under its app's connection limit on this
/// node; given back when dropped (when the connection ends).
pub(crate) struct AppSlot(Arc<AtomicUsize>);

impl Drop for AppSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a place under an app's `max_connections` (`open` counts the app's
/// connections on this node); `None` when the app has all it may.
pub(crate) fn app_slot(open: &Arc<AtomicUsize>, max: Option<usize>) -> Option<AppSlot> {
    let mut n = open.load(Ordering::Relaxed);
    loop {
        if max.is_some_and(|max| n >= max) {
            return None;
        }
        match open.compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(AppSlot(open.clone())),
            Err(now) => n = now,
        }
    }
}

/// What a channel's name makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    /// Anyone with the key may subscribe; only the server publishes.
    Public,
    /// `private-`: subscribing needs an authorization signed with the secret.
    Private,
    /// `private-encrypted-`: private, and the payloads are end-to-end
    /// encrypted by the libraries (the node relays them as they are).
    Encrypted,
    /// `presence-`: private, and the members are known to each other.
    Presence,
}

impl ChannelKind {
    /// The kind of a Pusher channel name.
    pub(crate) fn of(name: &str) -> Self {
        if name.starts_with("private-encrypted-") {
            ChannelKind::Encrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Whether subscribing needs a signed authorization.
    pub(crate) fn needs_auth(self) -> bool {
        self != ChannelKind::Public
    }
}

/// Whether a Pusher channel name is a cache channel (its last event is kept
/// and replayed to each new subscriber).
pub(crate) fn is_cache(name: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Checks a Pusher channel name: 1 to 164 bytes of `A-Z a-z 0-9 _ - = @ , . ;`.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("channel name is empty".into());
    }
    if name.len() > MAX_CHANNEL_NAME_LEN {
        return Err(format!(
            "channel name is {} bytes; the limit is {MAX_CHANNEL_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(bad) = name.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';'))
    }) {
        return Err(format!(
            "channel name contains {bad:?}; allowed are A-Z a-z 0-9 and _ - = @ , . ;"
        ));
    }
    Ok(())
}

/// The Switchboard channel of Pusher channel `name` of `app`: `<app id>:<name>`.
pub(crate) fn channel_key(app: &PusherApp, name: &str) -> Arc<str> {
    format!("{}:{name}", app.id).into()
}

/// The Pusher app whose channel a Switchboard channel is, if any.
pub(crate) fn app_of<'n>(node: &'n NodeInner, channel: &str) -> Option<&'n PusherApp> {
    let (namespace, _) = channel.split_once(':')?;
    node.config.pusher.iter().find(|a| a.id == namespace)
}

/// Whether a Switchboard channel is a Pusher app's cache channel.
pub(crate) fn is_cache_channel(node: &NodeInner, channel: &str) -> bool {
    match channel.split_once(':') {
        Some((_, name)) if is_cache(name) => app_of(node, channel).is_some(),
        _ => false,
    }
}

/// Whether the node's own protocol may read (subscribe to, or read the
/// history or presence of) a channel: not a Pusher app's private, encrypted
/// or presence channel, nor a user's channel, which only a Pusher client
/// that presents a signed authorization may join. `None` when it may.
pub(crate) fn native_read_refusal(node: &NodeInner, channel: &str) -> Option<&'static str> {
    let (_, name) = channel.split_once(':')?;
    app_of(node, channel)?;
    (ChannelKind::of(name).needs_auth() || name.starts_with(USER_CHANNEL_PREFIX)).then_some(
        "a Pusher app's private or presence channel: join it through the Pusher endpoint, with a signed authorization",
    )
}

/// Whether the node's own protocol may publish to a channel: not to a Pusher
/// app's channels, which the server APIs publish to (and Pusher clients, as
/// client events). `None` when it may.
pub(crate) fn native_publish_refusal(node: &NodeInner, channel: &str) -> Option<&'static str> {
    app_of(node, channel).map(|_| {
        "a Pusher app's channel: publish with a server API (or a client-* event from a Pusher client)"
    })
}

/// A subscription refused: what `pusher:subscription_error` carries.
#[derive(Debug)]
pub(crate) struct SubscriptionRefusal {
    /// `AuthError`, `LimitReached`, `InvalidChannel`, ...
    pub(crate) kind: &'static str,
    /// What was wrong.
    pub(crate) message: String,
    /// The HTTP-like status the libraries show (401, 403, 400).
    pub(crate) status: u16,
}

impl SubscriptionRefusal {
    fn new(kind: &'static str, status: u16, message: impl Into<String>) -> Self {
        SubscriptionRefusal {
            kind,
            message: message.into(),
            status,
        }
    }
}

/// A presence channel's member, as its signed `channel_data` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// `user_id`, as a string (a number is taken as its decimal text).
    pub(crate) user: String,
    /// `user_info`, as JSON text ("" when absent).
    pub(crate) info: String,
}

/// Checks a subscription: the name, and for private, encrypted and presence
/// channels the signed authorization; on presence channels returns the
/// member the signed `channel_data` describes.
pub(crate) fn may_subscribe(
    app: &PusherApp,
    socket_id: &str,
    name: &str,
    auth: Option<&str>,
    channel_data: Option<&str>,
) -> Result<Option<Member>, SubscriptionRefusal> {
    validate_name(name).map_err(|m| SubscriptionRefusal::new("InvalidChannel", 400, m))?;
    let kind = ChannelKind::of(name);
    if !kind.needs_auth() {
        return Ok(None);
    }
    let auth = auth.ok_or_else(|| {
        SubscriptionRefusal::new(
            "AuthError",
            401,
            format!("{name} needs an auth signature: subscribe with the auth your app's authorization endpoint returned"),
        )
    })?;
    let data = if kind == ChannelKind::Presence {
        Some(channel_data.ok_or_else(|| {
            SubscriptionRefusal::new(
                "AuthError",
                401,
                "a presence channel needs channel_data (the signed member's JSON)",
            )
        })?)
    } else {
        None
    };
    sign::verify_channel_auth(&app.key, &app.secret, socket_id, name, data, auth)
        .map_err(|e| SubscriptionRefusal::new("AuthError", 401, e.to_string()))?;
    data.map(parse_member).transpose()
}

/// Reads a presence member from its signed `channel_data`.
fn parse_member(data: &str) -> Result<Member, SubscriptionRefusal> {
    let bad = |m: &str| SubscriptionRefusal::new("AuthError", 400, m.to_owned());
    let value: serde_json::Value = serde_json::from_str(data).map_err(|_| {
        bad("channel_data is not JSON: expected {\"user_id\": ..., \"user_info\": ...}")
    })?;
    let user = match value.get("user_id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => {
            return Err(bad(
                "channel_data needs a non-empty user_id (a string or a number)",
            ));
        }
    };
    if user.len() > MAX_USER_ID_LEN {
        return Err(bad("user_id is over 128 bytes"));
    }
    let info = match value.get("user_info") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(info) => info.to_string(),
    };
    if info.len() > MAX_USER_INFO_LEN {
        return Err(bad("user_info is over 1024 bytes"));
    }
    Ok(Member { user, info })
}

/// Checks a `pusher:signin`: the signature over the user data, which must
/// name a non-empty `id`; returns that id.
pub(crate) fn may_sign_in(
    app: &PusherApp,
    socket_id: &str,
    auth: &str,
    user_data: &str,
) -> Result<String, String> {
    sign::verify_user_auth(&app.key, &app.secret, socket_id, user_data, auth)
        .map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(user_data)
        .map_err(|_| "user_data is not JSON: expected {\"id\": ..., ...}".to_owned())?;
    match value.get("id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_USER_ID_LEN => {
            Ok(s.clone())
        }
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        _ => Err("user_data needs a non-empty string id (at most 128 bytes)".to_owned()),
    }
}

/// Why a client event was refused: the `pusher:error` code (if Pusher has
/// one) and message.
pub(crate) type ClientEventRefusal = (Option<u16>, String);

/// Checks a client event's channel and name (not its rate, which the
/// session's bucket counts): the app allows client events, the channel is
/// private or presence (not encrypted: the node cannot read what it would
/// relay, and the libraries refuse it too), and the connection is
/// subscribed to it.
pub(crate) fn may_send_client_event(
    app: &PusherApp,
    name: &str,
    subscribed: bool,
) -> Result<(), ClientEventRefusal> {
    if !app.client_events {
        return Err((None, "client events are disabled for this app".to_owned()));
    }
    match ChannelKind::of(name) {
        ChannelKind::Private | ChannelKind::Presence => {}
        ChannelKind::Encrypted => {
            return Err((
                None,
                format!("client events are not supported on encrypted channels ({name})"),
            ));
        }
        ChannelKind::Public => {
            return Err((
                None,
                format!(
                    "client events are allowed on private and presence channels only, not on {name}"
                ),
            ));
        }
    }
    if !subscribed {
        return Err((
            None,
            format!("client event on {name}, which this connection is not subscribed to"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp {
        PusherApp {
            id: "app1".into(),
            key: "key".into(),
            secret: "secret".into(),
            client_events: true,
            webhook_url: None,
            webhook_events: Vec::new(),
            limits: Default::default(),
        }
    }

    #[test]
    fn kinds_and_names() {
        assert_eq!(
            ChannelKind::of("private-encrypted-x"),
            ChannelKind::Encrypted
        );
        assert_eq!(ChannelKind::of("private-x"), ChannelKind::Private);
        assert_eq!(ChannelKind::of("presence-x"), ChannelKind::Presence);
        assert_eq!(ChannelKind::of("x-private-"), ChannelKind::Public);
        assert!(is_cache("private-cache-x") && is_cache("cache-x") && !is_cache("x-cache-"));
        assert!(validate_name("a_b-c=d@e,f.g;h").is_ok());
        assert!(validate_name("a:b").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name(&"x".repeat(165)).is_err());
        assert!(
            validate_name("#server-to-user-1").is_err(),
            "clients cannot name user channels"
        );
    }

    #[test]
    fn private_and_presence_need_a_valid_signature() {
        let app = app();
        assert_eq!(
            may_subscribe(&app, "1.2", "public", None, None).unwrap(),
            None
        );
        let refused = may_subscribe(&app, "1.2", "private-a", None, None).unwrap_err();
        assert_eq!((refused.kind, refused.status), ("AuthError", 401));
        let auth = sign::sign_channel_auth("key", "secret", "1.2", "private-a", None);
        assert!(may_subscribe(&app, "1.2", "private-a", Some(&auth), None).is_ok());
        assert!(
            may_subscribe(&app, "1.3", "private-a", Some(&auth), None).is_err(),
            "signed for another socket"
        );
        let data = r#"{"user_id":7,"user_info":{"name":"A"}}"#;
        let auth = sign::sign_channel_auth("key", "secret", "1.2", "presence-r", Some(data));
        let member = may_subscribe(&app, "1.2", "presence-r", Some(&auth), Some(data))
            .unwrap()
            .unwrap();
        assert_eq!(member.user, "7");
        assert_eq!(member.info, r#"{"name":"A"}"#);
        let tampered = r#"{"user_id":8,"user_info":{"name":"A"}}"#;
        assert!(may_subscribe(&app, "1.2", "presence-r", Some(&auth), Some(tampered)).is_err());
    }

    #[test]
    fn client_events_only_where_pusher_allows_them() {
        let mut app = app();
        assert!(may_send_client_event(&app, "private-a", true).is_ok());
        assert!(may_send_client_event(&app, "presence-a", true).is_ok());
        assert!(may_send_client_event(&app, "public", true).is_err());
        assert!(may_send_client_event(&app, "private-encrypted-a", true).is_err());
        assert!(may_send_client_event(&app, "private-a", false).is_err());
        app.client_events = false;
        assert!(may_send_client_event(&app, "private-a", true).is_err());
    }

    #[test]
    fn sign_in_needs_a_signed_id() {
        let app = app();
        let data = r#"{"id":"u1","name":"A"}"#;
        let auth = sign::sign_user_auth("key", "secret", "1.2", data);
        assert_eq!(may_sign_in(&app, "1.2", &auth, data).unwrap(), "u1");
        assert!(may_sign_in(&app, "1.3", &auth, data).is_err());
        let no_id = r#"{"name":"A"}"#;
        let auth = sign::sign_user_auth("key", "secret", "1.2", no_id);
        assert!(may_sign_in(&app, "1.2", &auth, no_id).is_err());
    }
}
