//! The Pusher HTTP API (docs/PUSHER.md, "The HTTP API"), on both listeners:
//! every request signed as Pusher signs it (`policy::pusher::sign`), answers
//! in the shapes the Pusher server libraries parse, errors as plain text with
//! the status they act on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json as j};

use super::api::{ApiError, read_body};
use super::{Body, json, text};
use crate::config::PusherApp;
use crate::node::NodeInner;
use crate::ops;
use crate::policy::pusher::{self as rules, ChannelKind, channel_key, sign};
use crate::protocol::Disconnect;

/// Most channels one trigger may name (Pusher's own limit).
const MAX_TRIGGER_CHANNELS: usize = 100;
/// Most events in one batch (Pusher's own limit).
const MAX_BATCH: usize = 10;
/// The longest event name, in bytes (Pusher's own limit).
const MAX_EVENT_NAME_LEN: usize = 200;

/// A refusal: the status and the message of its plain-text body.
struct Refused(StatusCode, String);

impl Refused {
    fn bad(message: impl Into<String>) -> Self {
        Refused(StatusCode::BAD_REQUEST, message.into())
    }
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused(e.status, e.message)
    }
}

/// The routes, for the metric's label.
#[derive(Clone, Copy)]
enum Route {
    Events,
    Batch,
    Channels,
    Channel,
    Users,
    Terminate,
    Unknown,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Events => "pusher_events",
            Route::Batch => "pusher_batch_events",
            Route::Channels => "pusher_channels",
            Route::Channel => "pusher_channel",
            Route::Users => "pusher_users",
            Route::Terminate => "pusher_terminate",
            Route::Unknown => "pusher_unknown",
        }
    }
}

/// Serves `/apps/{id}/...`.
pub(super) async fn route(node: Arc<NodeInner>, req: Request<Incoming>) -> Response<Body> {
    let (route, response) = match serve(&node, req).await {
        Ok((route, r)) => (route, r),
        Err((route, Refused(status, message))) => (route, text(status, message + "\n")),
    };
    metrics::counter!(
        "switchboard_api_requests_total",
        "route" => route.name(),
        "status" => response.status().as_str().to_owned()
    )
    .increment(1);
    response
}

async fn serve(
    node: &NodeInner,
    req: Request<Incoming>,
) -> Result<(Route, Response<Body>), (Route, Refused)> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let mut parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // PyPI `pusher` 3.x sends terminate_connections without `/apps/{id}`:
    // its app is the one whose key signed it.
    let app_from_key = parts.first() == Some(&"users");
    if app_from_key {
        parts.splice(0..0, ["apps", ""]);
    }
    let route = match (parts.as_slice(), &method) {
        (["apps", _, "events"], &Method::POST) => Route::Events,
        (["apps", _, "batch_events"], &Method::POST) => Route::Batch,
        (["apps", _, "channels"], &Method::GET) => Route::Channels,
        (["apps", _, "channels", _], &Method::GET) => Route::Channel,
        (["apps", _, "channels", _, "users"], &Method::GET) => Route::Users,
        (["apps", _, "users", _, "terminate_connections"], &Method::POST) => Route::Terminate,
        _ => Route::Unknown,
    };
    let fail = |r: Refused| (route, r);
    if let Route::Unknown = route {
        return Err(fail(Refused(
            StatusCode::NOT_FOUND,
            format!("no such route: {method} {path}"),
        )));
    }
    let params = params(&query);
    let auth_key = params.get("auth_key").map_or("", String::as_str);
    let app = node
        .config
        .pusher
        .iter()
        .find(|a| {
            if app_from_key {
                a.key == *auth_key
            } else {
                a.id == parts[1]
            }
        })
        .ok_or_else(|| {
            fail(Refused(
                StatusCode::NOT_FOUND,
                format!("unknown app id {}", parts[1]),
            ))
        })?;
    let body = read_body(node, req).await.map_err(|e| fail(e.into()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    sign::verify_request(
        &app.key,
        &app.secret,
        method.as_str(),
        &path,
        &query,
        &body,
        now,
    )
    .map_err(|e| fail(Refused(StatusCode::UNAUTHORIZED, e.to_string())))?;
    let decoded = |s: &str| -> Result<String, Refused> {
        super::percent_decode(s)
            .map(|c| c.into_owned())
            .ok_or_else(|| Refused::bad("bad percent-encoding in the path"))
    };
    let answer = match route {
        Route::Events => events(node, app, &body).await,
        Route::Batch => batch(node, app, &body).await,
        Route::Channels => channels(node, app, &params).await,
        Route::Channel => match decoded(parts[3]) {
            Ok(name) => channel(node, app, &name, &params).await,
            Err(e) => Err(e),
        },
        Route::Users => match decoded(parts[3]) {
            Ok(name) => users(node, app, &name).await,
            Err(e) => Err(e),
        },
        Route::Terminate => match decoded(parts[3]) {
            Ok(user) => terminate(node, app, &user).await,
            Err(e) => Err(e),
        },
        Route::Unknown => unreachable_route(),
    };
    answer
        .map(|v| (route, json(StatusCode::OK, &v)))
        .map_err(fail)
}

fn unreachable_route() -> Result<Value, Refused> {
    Err(Refused(StatusCode::NOT_FOUND, "no such route".into()))
}

/// The query's parameters, percent-decoded (the signature check has refused
/// a malformed query already).
fn params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                super::percent_decode(&s.replace('+', " "))
                    .map_or_else(|| s.to_owned(), |c| c.into_owned())
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// The `info` attributes asked for (`subscription_count`, `user_count`, ...).
fn info_of(info: Option<&str>) -> Vec<&str> {
    info.map(|i| {
        i.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

#[derive(Deserialize)]
struct Event {
    name: String,
    data: Value,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// An event's checks: the name, the channels, the data (a string), the
/// socket id; returns the channels and the data.
fn check_event(event: &Event) -> Result<(Vec<String>, String), Refused> {
    if event.name.is_empty() || event.name.len() > MAX_EVENT_NAME_LEN {
        return Err(Refused::bad(format!(
            "event name must be 1 to {MAX_EVENT_NAME_LEN} bytes"
        )));
    }
    let channels: Vec<String> = match (&event.channels, &event.channel) {
        (Some(list), None) => list.clone(),
        (None, Some(one)) => vec![one.clone()],
        (Some(_), Some(_)) => {
            return Err(Refused::bad("give channels or channel, not both"));
        }
        (None, None) => return Err(Refused::bad("missing channels (or channel)")),
    };
    if channels.is_empty() || channels.len() > MAX_TRIGGER_CHANNELS {
        return Err(Refused::bad(format!(
            "an event goes to 1 to {MAX_TRIGGER_CHANNELS} channels; this one names {}",
            channels.len()
        )));
    }
    for name in &channels {
        // `#server-to-user-<id>`: the server libraries' sendToUser.
        let checked = match name.strip_prefix(rules::USER_CHANNEL_PREFIX) {
            Some(user) => check_user_id(user),
            None => rules::validate_name(name),
        };
        checked.map_err(|why| Refused::bad(format!("{name:?}: {why}")))?;
    }
    let data = match &event.data {
        Value::String(s) => s.clone(),
        // Some callers send a JSON value rather than a string holding it.
        other => other.to_string(),
    };
    if let Some(socket_id) = &event.socket_id {
        check_socket_id(socket_id)?;
    }
    if !event.name.starts_with("client-")
        && (event.name.starts_with("pusher:") || event.name.starts_with("pusher_internal:"))
    {
        return Err(Refused::bad(
            "event names starting with pusher: are reserved",
        ));
    }
    Ok((channels, data))
}

/// A user id in a path or a user's channel: 1 to 128 bytes, no control characters.
fn check_user_id(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > rules::MAX_USER_ID_LEN {
        return Err(format!(
            "a user id is 1 to {} bytes",
            rules::MAX_USER_ID_LEN
        ));
    }
    if user.chars().any(char::is_control) {
        return Err("a user id has no control characters".into());
    }
    Ok(())
}

fn check_socket_id(socket_id: &str) -> Result<(), Refused> {
    let ok = socket_id.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(Refused::bad(format!("invalid socket_id {socket_id:?}")))
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| Refused::bad(format!("invalid JSON body: {e}")))
}

fn unavailable(e: switchboard_backplane::BackplaneError) -> Refused {
    Refused(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not published: {e}"),
    )
}

/// `POST /apps/{id}/events`.
async fn events(node: &NodeInner, app: &PusherApp, body: &[u8]) -> Result<Value, Refused> {
    let event: Event = parse(body)?;
    let (channels, data) = check_event(&event)?;
    ops::pusher::trigger(
        node,
        app,
        &channels,
        &event.name,
        &data,
        event.socket_id.as_deref(),
    )
    .await
    .map_err(unavailable)?;
    let info = info_of(event.info.as_deref());
    if info.is_empty() {
        return Ok(j!({}));
    }
    let mut out = serde_json::Map::new();
    for name in &channels {
        out.insert(
            name.clone(),
            channel_attributes(node, app, name, &info).await?,
        );
    }
    Ok(j!({ "channels": out }))
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

/// `POST /apps/{id}/batch_events`.
async fn batch(node: &NodeInner, app: &PusherApp, body: &[u8]) -> Result<Value, Refused> {
    let batch: Batch = parse(body)?;
    if batch.batch.len() > MAX_BATCH {
        return Err(Refused::bad(format!(
            "a batch holds at most {MAX_BATCH} events; this one holds {}",
            batch.batch.len()
        )));
    }
    // Every event is checked before any is published.
    let checked = batch
        .batch
        .iter()
        .map(check_event)
        .collect::<Result<Vec<_>, _>>()?;
    for (event, (channels, data)) in batch.batch.iter().zip(&checked) {
        ops::pusher::trigger(
            node,
            app,
            channels,
            &event.name,
            data,
            event.socket_id.as_deref(),
        )
        .await
        .map_err(unavailable)?;
    }
    if batch
        .batch
        .iter()
        .all(|e| info_of(e.info.as_deref()).is_empty())
    {
        return Ok(j!({}));
    }
    let mut out = Vec::with_capacity(batch.batch.len());
    for (event, (channels, _)) in batch.batch.iter().zip(&checked) {
        let info = info_of(event.info.as_deref());
        match channels.first() {
            Some(name) if !info.is_empty() => {
                out.push(channel_attributes(node, app, name, &info).await?)
            }
            _ => out.push(j!({})),
        }
    }
    Ok(j!({ "batch": out }))
}

/// A channel's counts as `info` asks for them.
async fn channel_attributes(
    node: &NodeInner,
    app: &PusherApp,
    name: &str,
    info: &[&str],
) -> Result<Value, Refused> {
    let (conns, users) = ops::pusher::counts(node, &channel_key(app, name))
        .await
        .map_err(|e| Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut out = serde_json::Map::new();
    if info.contains(&"subscription_count") {
        out.insert("subscription_count".into(), j!(conns));
    }
    if info.contains(&"user_count") && ChannelKind::of(name) == ChannelKind::Presence {
        out.insert("user_count".into(), j!(users));
    }
    Ok(Value::Object(out))
}

/// `GET /apps/{id}/channels`: the occupied channels.
async fn channels(
    node: &NodeInner,
    app: &PusherApp,
    params: &BTreeMap<String, String>,
) -> Result<Value, Refused> {
    let prefix = params.get("filter_by_prefix").map_or("", String::as_str);
    let info = info_of(params.get("info").map(String::as_str));
    if info.contains(&"user_count") && !prefix.starts_with("presence-") {
        return Err(Refused::bad(
            "info=user_count needs filter_by_prefix=presence- (user counts exist for presence channels only)",
        ));
    }
    if let Some(bad) = info.iter().find(|i| **i != "user_count") {
        return Err(Refused::bad(format!(
            "info attribute {bad:?} is not available for channel lists (only user_count is)"
        )));
    }
    let list = ops::pusher::channels(node, app, prefix)
        .await
        .map_err(|e| Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut out = serde_json::Map::new();
    for (name, _conns, users) in list {
        let attrs = if info.contains(&"user_count") {
            j!({ "user_count": users })
        } else {
            j!({})
        };
        out.insert(name, attrs);
    }
    Ok(j!({ "channels": out }))
}

/// `GET /apps/{id}/channels/{name}`: one channel's state.
async fn channel(
    node: &NodeInner,
    app: &PusherApp,
    name: &str,
    params: &BTreeMap<String, String>,
) -> Result<Value, Refused> {
    rules::validate_name(name).map_err(Refused::bad)?;
    let info = info_of(params.get("info").map(String::as_str));
    if info.contains(&"user_count") && ChannelKind::of(name) != ChannelKind::Presence {
        return Err(Refused::bad(
            "info=user_count is available for presence channels only",
        ));
    }
    let (conns, _) = ops::pusher::counts(node, &channel_key(app, name))
        .await
        .map_err(|e| Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut out = channel_attributes(node, app, name, &info).await?;
    if let Value::Object(map) = &mut out {
        map.insert("occupied".into(), j!(conns > 0));
    }
    Ok(out)
}

/// `GET /apps/{id}/channels/{name}/users`: a presence channel's users.
async fn users(node: &NodeInner, app: &PusherApp, name: &str) -> Result<Value, Refused> {
    rules::validate_name(name).map_err(Refused::bad)?;
    if ChannelKind::of(name) != ChannelKind::Presence {
        return Err(Refused::bad("users are listed for presence channels only"));
    }
    let members = ops::presence::members(node, &channel_key(app, name))
        .await
        .map_err(|e| Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut ids: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let users: Vec<Value> = ids.into_iter().map(|id| j!({ "id": id })).collect();
    Ok(j!({ "users": users }))
}

/// The close code and reason of connections terminated through the API: the
/// libraries do not reconnect on codes 4000-4099.
const TERMINATED: Disconnect = Disconnect::fixed(
    4009,
    "connection terminated by the server (terminate_connections)",
    false,
);

/// `POST /apps/{id}/users/{user}/terminate_connections`.
async fn terminate(node: &NodeInner, app: &PusherApp, user: &str) -> Result<Value, Refused> {
    check_user_id(user).map_err(Refused::bad)?;
    let key = channel_key(app, &format!("{}{user}", rules::USER_CHANNEL_PREFIX));
    ops::publish::disconnect(
        node,
        switchboard_backplane::envelope::Kind::Channel(key.to_string()),
        &TERMINATED,
    )
    .await
    .map_err(unavailable)?;
    Ok(j!({}))
}
