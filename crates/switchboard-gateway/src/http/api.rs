//! The server API (PROTOCOL.md section 5): JSON in, JSON out.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json as j};
use switchboard_backplane::envelope;

use super::{Body, json};
use crate::node::NodeInner;
use crate::protocol::{ErrorCode, Payload, channel};

/// Most channels one broadcast may name.
const MAX_BROADCAST_CHANNELS: usize = 1000;

/// An API failure: status, code and message.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
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
}

pub(super) async fn handle(node: Arc<NodeInner>, req: Request<Incoming>) -> Response<Body> {
    let route = route_of(req.method(), req.uri().path());
    let response = match serve(&node, route, req).await {
        Ok(r) => r,
        Err(e) => json(
            e.status,
            &j!({"error": {"code": e.code, "message": e.message}}),
        ),
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
    Cluster,
    WrongMethod(&'static str),
    Unknown,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Publish => "publish",
            Route::Broadcast => "broadcast",
            Route::Cluster => "cluster",
            Route::WrongMethod(name) => name,
            Route::Unknown => "unknown",
        }
    }
}

fn route_of(method: &Method, path: &str) -> Route {
    match (method, path) {
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
    authorize(node, &req)?;
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

/// Checks `Authorization: apikey <key>` when a key is configured.
fn authorize(node: &NodeInner, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(key) = &node.config.api_key else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "));
    match given {
        Some(given) if constant_time_eq(given.trim().as_bytes(), key.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong API key: send Authorization: apikey <key>",
        )),
    }
}

/// Compares without an early exit, so the time taken does not reveal the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_body(node: &NodeInner, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = node.config.max_message_size;
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("request body over {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the body: {e}"
        ))),
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
    channel::validate(&body.channel).map_err(ApiError::bad_request)?;
    let data = Payload::json(Bytes::copy_from_slice(body.data.get().as_bytes()));
    publish_one(node, &body.channel, data).await?;
    Ok(json(StatusCode::OK, &j!({})))
}

async fn broadcast(node: &NodeInner, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let body: BroadcastBody<'_> = parse(body)?;
    if body.channels.is_empty() || body.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(ApiError::bad_request(format!(
            "channels must list 1 to {MAX_BROADCAST_CHANNELS} channels"
        )));
    }
    let data = Payload::json(Bytes::copy_from_slice(body.data.get().as_bytes()));
    let mut results: Vec<Value> = Vec::with_capacity(body.channels.len());
    for name in &body.channels {
        let outcome = match channel::validate(name) {
            Err(why) => Err(ApiError::bad_request(why)),
            Ok(()) => publish_one(node, name, data.clone()).await,
        };
        results.push(match outcome {
            Ok(()) => j!({ "channel": name }),
            Err(e) => j!({ "channel": name, "error": {"code": e.code, "message": e.message} }),
        });
    }
    Ok(json(StatusCode::OK, &j!({ "results": results })))
}

async fn publish_one(node: &NodeInner, channel: &str, data: Payload) -> Result<(), ApiError> {
    let envelope = envelope::for_channel(&node.config.node_id, channel, data.bytes, data.encoding);
    node.backplane.publish(&envelope).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("not published: {e}"),
        )
    })
}
