//! The server API (docs/PROTOCOL.md, "Server API"): JSON in, JSON out. Each
//! route parses its request, lets `policy` refuse it, and has `ops` perform it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json as j};
use switchboard_backplane::Position;
use switchboard_backplane::envelope::Kind;

use super::{Body, json};
use crate::node::NodeInner;
use crate::ops;
use crate::policy::{self, Refusal};
use crate::protocol::payload::Unfit;
use crate::protocol::{Disconnect, ErrorCode, Payload, StreamPosition};

/// Most channels one broadcast may name.
const MAX_BROADCAST_CHANNELS: usize = 1000;

/// How long a caller may take to send a request body, from the end of its head
/// (which the listener's header read timeout bounds): a body still incomplete
/// then is answered 408 and the connection closed.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The buffer a body of unknown length (chunked) starts in; it grows as needed,
/// up to the message size limit.
const BODY_INITIAL_CAPACITY: usize = 8 * 1024;

/// An API failure: status, code and message.
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.as_str(),
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// The answer to a policy's refusal: its code, with the matching status.
    fn refused(refusal: Refusal) -> Self {
        let status = match refusal.code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited | ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, refusal.code, refusal.message)
    }

    /// JSON `data` unfit for JSON subscribers (too deep, a lone surrogate), counted.
    fn unfit(why: Unfit) -> Self {
        why.count_refusal();
        Self::bad_request(why.describe())
    }
}

pub(super) async fn handle(node: Arc<NodeInner>, req: Request<Incoming>) -> Response<Body> {
    let route = route_of(req.method(), req.uri().path());
    let response = match serve(&node, route, req).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = json(
                e.status,
                &j!({"error": {"code": e.code, "message": e.message}}),
            );
            if e.status == StatusCode::REQUEST_TIMEOUT {
                // The rest of the body may never come: hyper closes the
                // connection after this answer rather than wait for it.
                r.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            r
        }
    };
    metrics::counter!(
        "switchboard_api_requests_total",
        "route" => route.name(),
        "status" => response.status().as_str().to_owned()
    )
    .increment(1);
    response
}

#[derive(Clone, Copy)]
enum Route {
    Publish,
    Broadcast,
    Send,
    Disconnect,
    Cluster,
    History,
    Presence,
    WrongMethod(&'static str),
    Unknown,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Publish => "publish",
            Route::Broadcast => "broadcast",
            Route::Cluster => "cluster",
            Route::Send => "send",
            Route::Disconnect => "disconnect",
            Route::History => "history",
            Route::Presence => "presence",
            Route::WrongMethod(name) => name,
            Route::Unknown => "unknown",
        }
    }
}

fn route_of(method: &Method, path: &str) -> Route {
    if let Some(rest) = path.strip_prefix("/api/v1/channels/") {
        return match (method, rest.rsplit_once('/')) {
            (&Method::GET, Some((_, "history"))) => Route::History,
            (&Method::GET, Some((_, "presence"))) => Route::Presence,
            (_, Some((_, "history"))) => Route::WrongMethod("history"),
            (_, Some((_, "presence"))) => Route::WrongMethod("presence"),
            _ => Route::Unknown,
        };
    }
    match (method, path) {
        (&Method::POST, "/api/v1/send") => Route::Send,
        (&Method::POST, "/api/v1/disconnect") => Route::Disconnect,
        (_, "/api/v1/send") => Route::WrongMethod("send"),
        (_, "/api/v1/disconnect") => Route::WrongMethod("disconnect"),
        (&Method::POST, "/api/v1/publish") => Route::Publish,
        (&Method::POST, "/api/v1/broadcast") => Route::Broadcast,
        (&Method::GET, "/api/v1/cluster") => Route::Cluster,
        (_, "/api/v1/publish") => Route::WrongMethod("publish"),
        (_, "/api/v1/broadcast") => Route::WrongMethod("broadcast"),
        (_, "/api/v1/cluster") => Route::WrongMethod("cluster"),
        _ => Route::Unknown,
    }
}

async fn serve(
    node: &NodeInner,
    route: Route,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    policy::access::api_key(node, req.headers()).map_err(ApiError::refused)?;
    match route {
        Route::Unknown => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no API route {} {}", req.method(), req.uri().path()),
        }),
        Route::WrongMethod(_) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadRequest,
            format!("{} is not allowed on {}", req.method(), req.uri().path()),
        )),
        Route::Publish => {
            let body = read_body(node, req).await?;
            publish(node, &body).await
        }
        Route::Broadcast => {
            let body = read_body(node, req).await?;
            broadcast(node, &body).await
        }
        Route::Send => {
            let body = read_body(node, req).await?;
            send(node, &body).await
        }
        Route::Disconnect => {
            let body = read_body(node, req).await?;
            disconnect(node, &body).await
        }
        Route::History => history(node, &req).await,
        Route::Presence => presence(node, &req).await,
        Route::Cluster => match node.backplane.nodes().await {
            Ok(nodes) => Ok(json(StatusCode::OK, &j!({ "nodes": nodes }))),
            Err(e) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                e.to_string(),
            )),
        },
    }
}

/// Reads a request body into one buffer, within [`BODY_READ_TIMEOUT`] and the
/// message size limit.
///
/// Each chunk hyper hands over is copied and dropped at once. Keeping the chunks
/// (as a collecting body does) would keep each one's read buffer alive: a body
/// dribbled one byte per TCP segment would pin kilobytes per byte. So memory
/// held is the body's size (the declared `Content-Length`, or what has come).
/// Reads a request body within the size limit and the body read timeout.
pub(super) async fn read_body(node: &NodeInner, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = node.config.max_message_size;
    let fits = |len: u64| policy::access::body_size(node, len).map_err(ApiError::refused);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared {
        fits(n)?;
    }
    let capacity = declared.map_or(BODY_INITIAL_CAPACITY.min(limit), |n| n as usize);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut body = req.into_body();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                fits((buf.len() + data.len()) as u64)?;
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(buf.freeze()),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            metrics::counter!("switchboard_limit_rejections_total", "limit" => "body_read_timeout")
                .increment(1);
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                format!(
                    "request body not received within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            ))
        }
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    channels: Vec<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

async fn publish(node: &NodeInner, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let body: PublishBody<'_> = parse(body)?;
    check_channel(node, &body.channel)?;
    let data = Payload::json_checked(body.data).map_err(ApiError::unfit)?;
    let answer = match publish_one(node, &body.channel, data).await? {
        Some(p) => j!({"offset": p.offset, "epoch": p.epoch}),
        None => j!({}),
    };
    Ok(json(StatusCode::OK, &answer))
}

async fn broadcast(node: &NodeInner, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let body: BroadcastBody<'_> = parse(body)?;
    if body.channels.is_empty() || body.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(ApiError::bad_request(format!(
            "channels must list 1 to {MAX_BROADCAST_CHANNELS} channels"
        )));
    }
    let data = Payload::json_checked(body.data).map_err(ApiError::unfit)?;
    let mut results: Vec<Value> = Vec::with_capacity(body.channels.len());
    for name in &body.channels {
        let outcome = match check_channel(node, name) {
            Err(e) => Err(e),
            Ok(()) => publish_one(node, name, data.clone()).await,
        };
        results.push(match outcome {
            Ok(Some(p)) => j!({ "channel": name, "offset": p.offset, "epoch": p.epoch }),
            Ok(None) => j!({ "channel": name }),
            Err(e) => j!({ "channel": name, "error": {"code": e.code, "message": e.message} }),
        });
    }
    Ok(json(StatusCode::OK, &j!({ "results": results })))
}

#[derive(Deserialize)]
struct SendBody<'a> {
    user: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn send(node: &NodeInner, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let body: SendBody<'_> = parse(body)?;
    if body.user.is_empty() || body.user.len() > 255 {
        return Err(ApiError::bad_request("user must be 1 to 255 bytes"));
    }
    let data = Payload::json_checked(body.data).map_err(ApiError::unfit)?;
    ops::publish::to_user(node, &body.user, data)
        .await
        .map_err(unavailable)?;
    Ok(json(StatusCode::OK, &j!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: Option<String>,
    conn: Option<String>,
}

async fn disconnect(node: &NodeInner, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let body: DisconnectBody = parse(body)?;
    let target = match (body.user, body.conn) {
        (Some(user), None) if !user.is_empty() => Kind::User(user),
        (None, Some(conn)) if !conn.is_empty() => Kind::Conn(conn),
        _ => return Err(ApiError::bad_request("give exactly one of user or conn")),
    };
    ops::publish::disconnect(node, target, &Disconnect::SERVER_API)
        .await
        .map_err(unavailable)?;
    Ok(json(StatusCode::OK, &j!({})))
}

/// The channel of `/api/v1/channels/{channel}/...`, percent-decoded and validated.
fn channel_in_path(node: &NodeInner, req: &Request<Incoming>) -> Result<String, ApiError> {
    let rest = req
        .uri()
        .path()
        .strip_prefix("/api/v1/channels/")
        .unwrap_or("");
    let raw = rest.rsplit_once('/').map_or("", |(c, _)| c);
    let channel = super::percent_decode(raw)
        .ok_or_else(|| ApiError::bad_request("bad percent-encoding in the channel name"))?
        .into_owned();
    check_channel(node, &channel)?;
    Ok(channel)
}

/// Query parameters, without percent-decoding (the values are numbers and epochs).
fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

async fn history(node: &NodeInner, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let channel = &channel_in_path(node, req)?;
    let history = policy::access::history_kept(node, channel).map_err(ApiError::refused)?;
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        query_param(req, name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number")))
            })
            .transpose()
    };
    let limit = number("limit")?.map(|l| l.min(u64::from(u32::MAX)) as u32);
    let since = match (query_param(req, "since_epoch"), number("since_offset")?) {
        (Some(epoch), Some(offset)) => Some(StreamPosition {
            epoch: epoch.to_owned(),
            offset,
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give both since_epoch and since_offset, or neither",
            ));
        }
    };
    let page = ops::history::read(node, channel, history, limit, since.as_ref())
        .await
        .map_err(unavailable)?;
    let body = crate::protocol::json::encode_history_answer(
        channel,
        &page.epoch,
        page.offset,
        &page.messages,
    );
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

async fn presence(node: &NodeInner, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let channel = &channel_in_path(node, req)?;
    policy::access::presence_enabled(node, channel).map_err(ApiError::refused)?;
    let members = ops::presence::members(node, channel)
        .await
        .map_err(unavailable)?;
    Ok(json(
        StatusCode::OK,
        &j!({"channel": channel, "members": members}),
    ))
}

/// Checks a channel name against the protocol and the configured length limit.
fn check_channel(node: &NodeInner, name: &str) -> Result<(), ApiError> {
    policy::channel::check(node, name).map_err(ApiError::refused)
}

async fn publish_one(
    node: &NodeInner,
    channel: &str,
    data: Payload,
) -> Result<Option<Position>, ApiError> {
    ops::publish::to_channel(node, channel, data, "")
        .await
        .map_err(unavailable)
}

fn unavailable(e: switchboard_backplane::BackplaneError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        e.to_string(),
    )
}
